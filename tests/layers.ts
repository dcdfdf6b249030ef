/**
 * skiff's layers, bottom to top (ARCHITECTURE.md draws them). A module may
 * import modules of its own layer or of a lower one, never of a higher one,
 * and no two directories may import each other, directly or through others.
 * `tests/layers_test.ts` enforces both on every module that is not a test.
 *
 * @module
 */

import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The declared order. A directory belongs to the layer of its longest listed
 * prefix (`hv/kvm` is an engine although `hv` is the VM core).
 */
export const LAYERS: readonly (readonly string[])[] = [
  /** libc and KVM ioctl bindings. */
  ["kvm_ffi"],
  /** The VM core: memory, VM, vCPUs, buses, exits, boot, ACPI tables, kernels, errors, config. */
  ["hv", "hv/x86", "hv/boot", "hv/acpi", "hv/kernel", "hv/testing"],
  /** Device models and their back-ends (virtio, FUSE, network stack, vhost-user, legacy). */
  ["devices"],
  /** The guest init: assembler, IR, code generator, programs, initramfs. */
  ["init"],
  /** Snapshot format, store and cache. */
  ["snapshot"],
  /** OCI images: references, sources, layer store. */
  ["image"],
  /** What both engines share: the engine interface, share back-ends, initramfs glue. */
  ["hv/engine"],
  /** The engines. */
  ["hv/kvm", "hv/qemu"],
  /** The library API (`VirtualMachine`). */
  ["hv/library"],
  /** Command-line glue behind main.ts. */
  ["hv/cli"],
  /** main.ts, mod.ts and cross-module tests. */
  [".", "tests"],
];

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** Layer index of a directory (relative to the root), or -1 when no entry covers it. */
export function layerOf(dir: string): number {
  let best = -1;
  let bestLen = -1;
  LAYERS.forEach((layer, i) => {
    for (const p of layer) {
      const hit = p === "." ? dir === "." : dir === p || dir.startsWith(`${p}/`);
      if (hit && p.length > bestLen) [best, bestLen] = [i, p.length];
    }
  });
  return best;
}

/** One import of one module: both as paths relative to the root. */
export interface ImportEdge {
  from: string;
  to: string;
}

/**
 * Whether a module is a test, a benchmark, test-only data or a test helper
 * (`testdata/`, `testing/`): measuring and checking harnesses may reach any
 * layer (they are not part of skiff).
 */
export function isTestModule(path: string): boolean {
  const dirs = path.split("/");
  return /_(test|bench)\.ts$/.test(path) || dirs.includes("testdata") || dirs.includes("testing");
}

/** Comments removed, so that JSDoc examples (doc tests) do not count as imports. */
function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
}

/** `runtimeModuleUrl("dir/file.ts")` (hv/module_url.ts): a run-time load by repository path. */
const RUNTIME_URL = /\bruntimeModuleUrl\(\s*["']([^"']+\.ts)["']/g;

const SPECIFIER =
  /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|new\s+URL\(\s*)["'](\.\.?\/[^"']+\.ts)["']/g;

/**
 * Every relative `.ts` import of the modules under the root: static, dynamic,
 * `new URL(…)` Worker URLs and `runtimeModuleUrl(…)` run-time loads.
 */
export function importEdges(root = ROOT): ImportEdge[] {
  const edges: ImportEdge[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(join(root, dir))) {
      if (e.name.startsWith(".") || e.name === "dist" || e.name === "node_modules") continue;
      const path = dir === "." ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory) walk(path);
      else if (e.name.endsWith(".ts")) {
        const src = stripComments(Deno.readTextFileSync(join(root, path)));
        for (const m of src.matchAll(SPECIFIER)) {
          edges.push({ from: path, to: relative(root, resolve(root, dirname(path), m[1])) });
        }
        for (const m of src.matchAll(RUNTIME_URL)) edges.push({ from: path, to: m[1] });
      }
    }
  };
  walk(".");
  return edges;
}

/** Imports that go up the declared order, as readable lines. */
export function upwardImports(edges: readonly ImportEdge[]): string[] {
  const out: string[] = [];
  for (const { from, to } of edges) {
    if (isTestModule(from)) continue;
    const a = layerOf(dirname(from));
    const b = layerOf(dirname(to));
    if (a < 0) out.push(`${from}: its directory is in no layer (tests/layers.ts)`);
    else if (b > a) out.push(`${from} (layer ${a}) imports ${to} (layer ${b})`);
  }
  return out;
}

/** Directory-level cycles among non-test modules, each as `a -> b -> … -> a`. */
export function directoryCycles(edges: readonly ImportEdge[]): string[] {
  const graph = new Map<string, Set<string>>();
  for (const { from, to } of edges) {
    if (isTestModule(from)) continue;
    const a = dirname(from);
    const b = dirname(to);
    if (a === b) continue;
    if (!graph.has(a)) graph.set(a, new Set());
    graph.get(a)!.add(b);
  }
  const cycles: string[] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (n: string) => {
    state.set(n, "open");
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      if (state.get(m) === "open") cycles.push([...stack.slice(stack.indexOf(m)), m].join(" -> "));
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, "done");
  };
  for (const n of [...graph.keys()].sort()) if (!state.has(n)) visit(n);
  return cycles;
}
