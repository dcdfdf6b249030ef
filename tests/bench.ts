/**
 * `deno task bench`: runs every `*_bench.ts` module in the tree (each exports
 * `bench(): Promise<string[]>`), printing its lines as they come. Each bench
 * measures skiff against a reference in the same run and prints the ratio.
 *
 * Usage: deno task bench [NAME-SUBSTRING…]   (e.g. `deno task bench fuse`; a
 * line's name works too: `run-cached` matches run_cached_bench.ts)
 *
 * @module
 */

import { relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;

async function* findBenches(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.startsWith(".") || entry.name === "node_modules" || entry.name === "dist") {
      continue;
    }
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* findBenches(path);
    else if (entry.isFile && entry.name.endsWith("_bench.ts")) yield path;
  }
}

const filters = Deno.args;
const files: string[] = [];
for await (const f of findBenches(root.replace(/\/$/, ""))) {
  const rel = relative(root, f);
  const hit = (s: string) => rel.includes(s) || rel.includes(s.replaceAll("-", "_"));
  if (filters.length === 0 || filters.some(hit)) files.push(f);
}
files.sort();
if (files.length === 0) {
  console.error(`bench: no *_bench.ts matched ${filters.join(" ")}`);
  Deno.exit(1);
}

let failed = 0;
for (const f of files) {
  const rel = relative(root, f);
  console.error(`bench: ${rel}`);
  try {
    const mod = await import(`file://${f}`);
    if (typeof mod.bench !== "function") throw new Error("does not export bench()");
    for (const line of await mod.bench()) console.log(line);
  } catch (e) {
    failed++;
    console.error(`bench: ${rel} failed: ${e instanceof Error ? e.message : e}`);
  }
}
Deno.exit(failed ? 1 : 0);
