/**
 * The `skiff` launcher (a POSIX sh script) in a current directory that was
 * deleted: one line of its own and exit 125 instead of Deno's backtrace, for
 * a subcommand and for `skiff deno`. The shell itself may warn first (dash:
 * "sh: 0: getcwd() failed"), before the script runs; that line is not skiff's.
 */

import { deepStrictEqual, strictEqual } from "node:assert/strict";

const SKIFF = new URL("./skiff", import.meta.url).pathname;

Deno.test("launcher: a deleted current directory is one line, exit 125", async () => {
  const base = await Deno.makeTempDir({ prefix: "skiff-launcher-test-" });
  try {
    for (const args of [["--help"], ["run", "--", "true"], ["deno", "--version"]]) {
      const r = await new Deno.Command("/bin/sh", {
        args: [
          "-c",
          'mkdir "$1/gone" && cd "$1/gone" && rmdir "$1/gone" && shift && exec "$@"',
          "sh",
          base,
          SKIFF,
          ...args,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(r.stderr).trim().split("\n");
      const skiffLines = err.filter((l) => !/getcwd|shell-init/.test(l));
      deepStrictEqual(
        [r.code, new TextDecoder().decode(r.stdout), skiffLines],
        [125, "", ["skiff: the current directory no longer exists"]],
        args.join(" "),
      );
    }
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("launcher: an existing current directory runs skiff", async () => {
  const r = await new Deno.Command(SKIFF, { args: ["--help"], cwd: "/", stdout: "piped" }).output();
  strictEqual(r.code, 0);
  strictEqual(new TextDecoder().decode(r.stdout).startsWith("skiff — "), true);
});
