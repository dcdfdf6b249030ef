/**
 * `skiff` run from a test as a user runs it: a real process of main.ts with
 * a private TMPDIR (which must be empty when it ends: nothing left behind)
 * and the given XDG_CACHE_HOME (a private cache, the kernel cache linked in
 * by the caller).
 *
 * @module
 */

import { deepStrictEqual } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { GUEST_HANG_MS } from "./waits.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/** What a `skiff` process said and how it ended. */
export interface SkiffRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `skiff ARGS` with XDG_CACHE_HOME `cache`; throws if it has not ended
 * within `deadlineMs` (a bound that only catches a hang) or left files in
 * its TMPDIR.
 */
export async function runSkiff(
  args: string[],
  cache: string,
  deadlineMs = GUEST_HANG_MS,
): Promise<SkiffRun> {
  const tmp = await Deno.makeTempDir({ prefix: "skiff-proc-tmp-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...args],
      env: { TMPDIR: tmp, XDG_CACHE_HOME: cache },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs);
    const out = await child.output();
    clearTimeout(timer);
    const td = new TextDecoder();
    const r = { code: out.code, stdout: td.decode(out.stdout), stderr: td.decode(out.stderr) };
    if (out.signal === "SIGKILL") {
      throw new Error(`skiff ${args.join(" ")} did not end: ${r.stderr}`);
    }
    deepStrictEqual([...Deno.readDirSync(tmp)].map((e) => e.name), [], `leftovers after ${args}`);
    return r;
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}
