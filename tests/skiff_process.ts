/**
 * `skiff` run from a test as a user runs it: a real process of main.ts with
 * a private TMPDIR (which must be empty when it ends: nothing left behind),
 * optionally a private XDG_CACHE_HOME (the caller links the kernel cache
 * in) and stdin.
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

/** How {@link runSkiff} runs it. */
export interface RunSkiffOptions {
  /** XDG_CACHE_HOME (default: the user's, inherited). */
  cache?: string;
  /** Written to its stdin, which is then closed (default: stdin is /dev/null). */
  stdin?: string;
  /** A bound that only catches a hang: the process is killed and this throws. */
  deadlineMs?: number;
  /** TMPDIR (default: a new one, removed afterwards); it must be empty when skiff ends. */
  tmpdir?: string;
}

/**
 * Runs `skiff ARGS`; throws if it has not ended within the deadline or left
 * files in its TMPDIR.
 */
export async function runSkiff(args: string[], o: RunSkiffOptions = {}): Promise<SkiffRun> {
  const deadlineMs = o.deadlineMs ?? GUEST_HANG_MS;
  const tmp = o.tmpdir ?? await Deno.makeTempDir({ prefix: "skiff-proc-tmp-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...args],
      env: { TMPDIR: tmp, ...(o.cache === undefined ? {} : { XDG_CACHE_HOME: o.cache }) },
      stdin: o.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (o.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(o.stdin));
      await writer.close();
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs);
    const out = await child.output();
    clearTimeout(timer);
    const td = new TextDecoder();
    const r = { code: out.code, stdout: td.decode(out.stdout), stderr: td.decode(out.stderr) };
    if (out.signal === "SIGKILL") {
      throw new Error(`skiff ${args.join(" ")} did not end in ${deadlineMs} ms: ${r.stderr}`);
    }
    // Nothing left behind: no sockets, initramfs or directories in TMPDIR.
    deepStrictEqual([...Deno.readDirSync(tmp)].map((e) => e.name), [], `leftovers after ${args}`);
    return r;
  } finally {
    if (o.tmpdir === undefined) await Deno.remove(tmp, { recursive: true });
  }
}
