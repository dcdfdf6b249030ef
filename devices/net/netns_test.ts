import { doesNotThrow, throws } from "node:assert/strict";
import { join } from "node:path";
import { checkNetns } from "./netns.ts";

Deno.test("checkNetns: a named namespace must exist (before any TAP is made); a pid passes", async () => {
  const run = await Deno.makeTempDir({ prefix: "skiff-netns-test-" });
  try {
    await Deno.writeTextFile(join(run, "demo"), "");
    doesNotThrow(() => checkNetns("demo", run));
    doesNotThrow(() => checkNetns("4242", run));
    throws(
      () => checkNetns("nosuch", run),
      /^ConfigError: --netns nosuch: no such network namespace \(ip netns add nosuch makes one\)$/,
    );
    throws(() => checkNetns("../demo", run), /no such network namespace/);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});
