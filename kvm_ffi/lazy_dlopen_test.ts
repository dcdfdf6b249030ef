import { ok, strictEqual } from "node:assert/strict";
import { lazyDlopen } from "./lazy_dlopen.ts";

const SYMBOLS = {
  getpid: { parameters: [], result: "i32" },
  getppid: { parameters: [], result: "i32" },
  labs: { parameters: ["i64"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

Deno.test("lazyDlopen: eager symbols are data properties, the others bind on first use", () => {
  const lib = lazyDlopen("libc.so.6", SYMBOLS, ["getpid"]);
  const desc = (name: string) => Object.getOwnPropertyDescriptor(lib, name)!;
  ok("value" in desc("getpid"), "getpid bound at once");
  ok(typeof desc("getppid").get === "function", "getppid not bound yet");
  ok(typeof desc("labs").get === "function", "labs not bound yet");
  strictEqual(lib.getpid(), Deno.pid);
  strictEqual(lib.getppid(), Deno.ppid);
  ok("value" in desc("getppid"), "getppid is a data property once used");
  strictEqual(desc("getppid").writable, false);
  strictEqual(lib.getppid, lib.getppid, "the same function every time");
  ok(typeof desc("labs").get === "function", "an unused symbol stays unbound");
  strictEqual(lib.labs(-5n), 5n);
  strictEqual(Object.keys(lib).sort().join(), "getpid,getppid,labs");
});

Deno.test("lazyDlopen: with no eager symbols nothing is opened until used", () => {
  const lib = lazyDlopen("libc.so.6", SYMBOLS, []);
  ok(typeof Object.getOwnPropertyDescriptor(lib, "getpid")!.get === "function");
  strictEqual(lib.getpid(), Deno.pid);
});
