/**
 * `deno task compile`, checked end to end into a temporary directory (nothing
 * is written into the checkout):
 *
 * - `deno compile` of main.ts (with the Worker entry points, as
 *   tests/compile.ts does) must produce an executable whose `--help` lists
 *   the subcommands. `deno compile` needs its `denort` base binary, which it
 *   downloads from dl.deno.land unless `DENORT_BIN` names one; where neither
 *   works (this workplace reaches only package registries, DESIGN.md) the
 *   test prints `skiff-test-skip: compile: <reason>` and returns.
 * - `deno bundle` of main.ts must produce one JavaScript file whose `--help`
 *   lists the same subcommands.
 */

import { ok, strictEqual } from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();
/** Hard limit of each build or run (a download that hangs must not hang the suite). */
const STEP_MS = 180_000;
/** Subcommands `--help` must list. */
const COMMANDS = ["run", "boot", "fuse", "snapshot", "kernel"];

async function run(
  cmd: string,
  args: string[],
): Promise<{ ok: boolean; out: string; err: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: root,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }, STEP_MS);
  try {
    const o = await child.output();
    const dec = new TextDecoder();
    // deno colours its messages even when piped
    // deno-lint-ignore no-control-regex
    const plain = (b: Uint8Array) => dec.decode(b).replace(/\x1b\[[0-9;]*m/g, "");
    if (o.signal === "SIGKILL") {
      throw new Error(`${cmd} ${args.join(" ")} did not finish within ${STEP_MS} ms`);
    }
    return { ok: o.success, out: plain(o.stdout), err: plain(o.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

function assertHelp(what: string, r: { ok: boolean; out: string; err: string }): void {
  strictEqual(r.ok, true, `${what} --help failed:\n${r.err}`);
  for (const c of COMMANDS) {
    ok(new RegExp(`^\\s+${c}\\s`, "m").test(r.out), `${what} --help lacks ${c}:\n${r.out}`);
  }
}

/** Worker entry points, which `deno compile` must be told about (`--include`). */
function workerFiles(dir = ""): string[] {
  const found: string[] = [];
  for (const e of Deno.readDirSync(`${root}${dir}`)) {
    if (e.name.startsWith(".") || e.name === "dist" || e.name === "node_modules") continue;
    const rel = dir ? `${dir}/${e.name}` : e.name;
    if (e.isDirectory) found.push(...workerFiles(rel));
    else if (e.name.endsWith("_worker.ts")) found.push(rel);
  }
  return found;
}

Deno.test("compile: deno compile gives an executable whose --help lists the commands", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-compile-" });
  try {
    const includes = workerFiles().flatMap((f) => ["--include", f]);
    const exe = `${dir}/skiff`;
    const c = await run(deno, ["compile", "-A", ...includes, "--output", exe, "main.ts"]);
    if (!c.ok) {
      const download = /denort|dl\.deno\.land|error sending request|Failed to fetch/i;
      if (!Deno.env.get("DENORT_BIN") && download.test(c.err)) {
        const line = c.err.split("\n").find((l) => /error sending request/.test(l));
        const why = line?.trim().replace(/^\d+:\s*/, "") ?? "the download failed";
        console.error(
          `skiff-test-skip: compile: deno compile cannot obtain its denort base binary ` +
            `(no DENORT_BIN, and ${why})`,
        );
        return;
      }
      throw new Error(`deno compile failed:\n${c.err}`);
    }
    assertHelp("compiled skiff", await run(exe, ["--help"]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compile: deno bundle gives one JS file whose --help lists the commands", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-bundle-" });
  try {
    const js = `${dir}/skiff.js`;
    const b = await run(deno, ["bundle", "--platform", "deno", "--output", js, "main.ts"]);
    strictEqual(b.ok, true, `deno bundle failed:\n${b.err}`);
    // Run from the temp dir's copy alone: nothing may be imported from the checkout.
    assertHelp("bundled skiff.js", await run(deno, ["run", "-A", "--no-config", js, "--help"]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
