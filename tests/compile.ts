/**
 * `deno task compile`: builds one self-contained executable `dist/skiff` with
 * `deno compile`, and the single-file bundle `dist/skiff.js` with `deno bundle`.
 *
 * `deno compile` needs its `denort` base binary, which it downloads from the
 * Deno download site unless `DENORT_BIN` points at one. Where neither works
 * (e.g. a machine that reaches only package registries) the compile step is
 * reported as skipped with that reason and the bundle is still built.
 *
 * @module
 */

const root = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();
await Deno.mkdir(`${root}dist`, { recursive: true });

async function run(args: string[]): Promise<{ ok: boolean; stderr: string }> {
  const out = await new Deno.Command(deno, { args, cwd: root, stdout: "inherit", stderr: "piped" })
    .output();
  // deno colours its errors even when piped; strip ANSI escapes.
  // deno-lint-ignore no-control-regex
  const stderr = new TextDecoder().decode(out.stderr).replace(/\x1b\[[0-9;]*m/g, "");
  return { ok: out.success, stderr };
}

/** Worker entry points must be named explicitly for `deno compile`. */
async function workerFiles(): Promise<string[]> {
  const found: string[] = [];
  async function walk(dir: string) {
    for await (const e of Deno.readDir(`${root}${dir}`)) {
      if (e.name.startsWith(".") || e.name === "dist") continue;
      const rel = dir ? `${dir}/${e.name}` : e.name;
      if (e.isDirectory) await walk(rel);
      else if (e.name.endsWith("_worker.ts")) found.push(rel);
    }
  }
  await walk("");
  return found;
}

const includes = (await workerFiles()).flatMap((f) => ["--include", f]);
const compile = await run(["compile", "-A", ...includes, "--output", "dist/skiff", "main.ts"]);
let code = 0;
if (compile.ok) {
  console.log("compile: dist/skiff");
} else if (
  /denort|download|dl\.deno\.land|Failed to fetch|error sending request/i.test(compile.stderr)
) {
  console.log(
    "compile: skipped: deno compile could not obtain its denort base binary " +
      "(set DENORT_BIN to a denort executable): " +
      (compile.stderr.split("\n").find((l) => /error sending request/.test(l)) ?? "")
        .trim(),
  );
} else {
  console.error(compile.stderr);
  code = 1;
}
const bundle = await run(["bundle", "--platform", "deno", "--output", "dist/skiff.js", "main.ts"]);
if (bundle.ok) console.log("bundle: dist/skiff.js");
else {
  console.error(bundle.stderr);
  code = 1;
}
Deno.exit(code);
