/**
 * `deno task compile`: builds one self-contained executable `dist/skiff` with
 * `deno compile` (every module skiff loads by URL at run time — Worker entry
 * points and Worker-side devices, hv/module_url.ts — named with `--include`),
 * and the bundle `dist/skiff.js` with its runtime modules (tests/bundle.ts).
 *
 * `deno compile` needs its `denort` base binary, which it downloads from the
 * Deno download site unless `DENORT_BIN` points at one. Where neither works
 * (e.g. a machine that reaches only package registries) the compile step is
 * reported as skipped with that reason and the bundle is still built.
 *
 * @module
 */

import { buildBundle, compileArgs } from "./bundle.ts";

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

const compile = await run(compileArgs("dist/skiff"));
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
try {
  await buildBundle(`${root}dist`);
  console.log("bundle: dist/skiff.js");
} catch (e) {
  console.error((e as Error).message);
  code = 1;
}
Deno.exit(code);
