/**
 * `skiff boot` from the command line: flag errors and a missing kernel give
 * one line each and exit 125 (no VM is started, so no /dev/kvm is needed).
 */

import { doesNotMatch, match, strictEqual } from "node:assert/strict";
import { HANG_MS } from "./waits.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function skiff(args: string[], env: Record<string, string> = {}) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(HANG_MS), // only catches a hang
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

Deno.test("skiff boot: flag errors are one line and exit 125", async () => {
  for (
    const [args, re] of [
      [["--timeout", "5"], /--timeout needs --console-log/],
      [["--console-log", "/dev/null"], /--timeout SECONDS is required/],
      [
        ["--console-log", "/dev/null", "--timeout", "soon"],
        /--timeout soon: expected a positive number/,
      ],
      [["--console-log", "/dev/null", "--timeout", "5", "--cpus", "1.5"], /--cpus 1\.5/],
      [["--console-log", "/dev/null", "--timeout", "5", "--bogus"], /bogus/],
    ] as const
  ) {
    const r = await skiff(["boot", ...args]);
    strictEqual(r.code, 125, r.stderr);
    match(r.stderr, re);
    strictEqual(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});

Deno.test("skiff boot: without a cached kernel it says to run skiff setup or skiff kernel fetch", async () => {
  const cache = await Deno.makeTempDir({ prefix: "skiff-empty-cache-" });
  try {
    const r = await skiff(["boot", "--console-log", `${cache}/log`, "--timeout", "5"], {
      XDG_CACHE_HOME: cache,
    });
    strictEqual(r.code, 125, r.stderr);
    match(r.stderr, /run `skiff setup` or `skiff kernel fetch`/);
    doesNotMatch(r.stderr, /\n\s+at /); // no stack trace
    strictEqual(r.stderr.trim().split("\n").length, 1, r.stderr);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
