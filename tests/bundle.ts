/**
 * `deno task bundle`: skiff as plain JavaScript files in `dist/` (or the
 * directory given as the first argument) — `skiff.js` (main.ts) and, beside
 * it, one bundle per module skiff loads by URL at run time (Worker entry
 * points and Worker-side devices, hv/module_url.ts), which a bundler cannot
 * follow. Run it with `deno run -A --no-config dist/skiff.js …`, or through
 * the `skiff` launcher placed beside `dist/` without the sources. Also the
 * `deno compile` arguments with the same modules ({@link compileArgs}).
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundledName, RUNTIME_MODULES } from "../hv/module_url.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/**
 * `deno compile` arguments for an executable at `output` (relative to the
 * repository root, or absolute): every runtime module is named with
 * `--include`, since `deno compile` cannot follow a URL computed at run time.
 */
export function compileArgs(output: string): string[] {
  return [
    "compile",
    "-A",
    ...RUNTIME_MODULES.flatMap((f) => ["--include", f]),
    "--output",
    output,
    "main.ts",
  ];
}

/** The main bundle's file name. */
export const MAIN_BUNDLE = "skiff.js";

/**
 * Bundles main.ts and every runtime module into `outDir` (created; files
 * of an earlier bundle there are replaced). Throws with deno's message on
 * failure.
 */
export async function buildBundle(outDir: string): Promise<string[]> {
  await Deno.mkdir(outDir, { recursive: true });
  const stage = await Deno.makeTempDir({ dir: outDir, prefix: ".bundle-" });
  try {
    const entries = ["main.ts", ...RUNTIME_MODULES];
    // One deno bundle call for all entries; each output inlines all it imports.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--platform", "deno", "--outdir", stage, ...entries],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    if (!out.success) {
      throw new Error(`deno bundle failed:\n${new TextDecoder().decode(out.stderr)}`);
    }
    // --outdir mirrors the sources; every file is renamed flat, beside skiff.js.
    const written: string[] = [];
    for (const entry of entries) {
      const from = join(stage, entry.replace(/\.ts$/, ".js"));
      const name = entry === "main.ts" ? MAIN_BUNDLE : bundledName(entry);
      await Deno.rename(from, join(outDir, name));
      written.push(name);
    }
    return written;
  } finally {
    await Deno.remove(stage, { recursive: true });
  }
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? join(ROOT, "dist");
  const files = await buildBundle(dir);
  console.log(`bundle: ${join(dir, MAIN_BUNDLE)} and ${files.length - 1} runtime modules`);
}
