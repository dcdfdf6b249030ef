/**
 * URLs of modules skiff loads at run time rather than through `import`:
 * Worker entry points (`new Worker(url)`) and the device modules a vCPU
 * Worker imports from a {@link DeviceSpec}'s `module`.
 *
 * A bundler cannot follow such URLs, so each one is built as its own file:
 * `deno task bundle` writes `skiff.js` (main.ts) and, beside it, one bundle
 * per entry of {@link RUNTIME_MODULES} named by {@link bundledName}; `deno
 * compile` is given the same list with `--include`. This module tells the
 * two layouts apart by its own URL: from the source tree (or a compiled
 * binary, which embeds the tree) it is `…/hv/module_url.ts` and the source
 * file is used; in a bundle it is the bundle file, and the sibling bundle is.
 *
 * @module
 */

/** Repository paths of every module loaded by URL at run time (Workers and Worker-side devices). */
export const RUNTIME_MODULES = [
  "hv/worker.ts",
  "devices/legacy/acpi_sleep.ts",
  "devices/fuse/dev_fuse_worker.ts",
  "devices/net/loop_worker.ts",
  "devices/legacy/uart.ts",
  "devices/legacy/i8042.ts",
  "devices/legacy/debug_exit.ts",
  "devices/virtio/mmio_worker.ts",
  "snapshot/qemu_entry_worker.ts",
] as const;

/** A module of {@link RUNTIME_MODULES}. */
export type RuntimeModule = typeof RUNTIME_MODULES[number];

/** The file a bundle of `path` is written to, beside `skiff.js`: `hv/worker.ts` → `hv-worker.js`. */
export function bundledName(path: string): string {
  return path.replace(/\.ts$/, ".js").replaceAll("/", "-");
}

const SELF = "hv/module_url.ts";

/**
 * The URL of `path` (a repository path from {@link RUNTIME_MODULES}) for
 * this copy of skiff: the source file, or its bundle beside this bundle.
 */
export function runtimeModuleUrl(path: RuntimeModule, base = import.meta.url): string {
  if (base.endsWith(`/${SELF}`)) {
    return new URL(`${"../".repeat(SELF.split("/").length - 1)}${path}`, base).href;
  }
  return new URL(`./${bundledName(path)}`, base).href;
}
