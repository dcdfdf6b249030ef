/**
 * The initramfs: `/init` (skiff's generated init), `/skiff/record` (the
 * command record), `/dev/console`, the kernel modules the init loads (with
 * their dependencies, in `modules.dep` order, under `lib/modules/<release>/`),
 * and optional extra files; cpio newc, gzip'd.
 *
 * @module
 */

import type { KernelInfo } from "../hv/kernel/mod.ts";
import { moduleLoadOrder } from "./module_order.ts";
import { type CpioEntry, gzip, withParents, writeCpio } from "./cpio.ts";
import { type InitConfig, modulesFor, recordFor } from "./config.ts";
import { bootProgram, RECORD_PATH } from "./boot_program.ts";
import { compileElf } from "./codegen/mod.ts";

/** An extra file for the initramfs. */
export interface ExtraFile {
  /** Absolute guest path. */
  path: string;
  data: Uint8Array;
  /** Permission bits (default 0644). */
  mode?: number;
}

/** Options of {@link buildInitramfs}. */
export interface InitramfsOptions {
  kernel: KernelInfo;
  config: InitConfig;
  extraFiles?: ExtraFile[];
}

/**
 * The static init ELF. Without a config it reads its record from
 * `/skiff/record` at run time (the initramfs form; compiled once per
 * process); with one, the record is built into the executable.
 */
export function buildInitElf(config?: InitConfig, modules: string[] = []): Uint8Array {
  if (!config) {
    genericElf ??= compileElf(bootProgram({ record: { path: RECORD_PATH } })).bytes;
    return genericElf.slice();
  }
  return compileElf(bootProgram({ record: { bytes: recordFor(config, modules) } })).bytes;
}
let genericElf: Uint8Array | undefined;

/** Directories every initramfs has (mount points and the record's directory). */
const BASE_DIRS = ["dev", "proc", "sys", "tmp", "run", "mnt", "etc", "skiff"];

/** The module files to load for `o`, in order, as paths relative to the modules directory. */
function moduleOrder(o: InitramfsOptions): Promise<string[]> {
  return moduleLoadOrder(o.kernel, modulesFor(o.config));
}

/** The fixed part: /dev/console, mount points, /init and the modules. */
async function baseEntries(
  kernel: KernelInfo,
  order: string[],
  init: Uint8Array,
): Promise<{ entries: CpioEntry[]; modules: string[] }> {
  const guestDir = `/lib/modules/${kernel.version}`;
  const entries: CpioEntry[] = [
    { kind: "dir", path: "dev" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    ...BASE_DIRS.filter((d) => d !== "dev").map((path) => ({ kind: "dir" as const, path })),
    { kind: "file", path: "init", data: init, mode: 0o755 },
  ];
  const modules: string[] = [];
  for (const rel of order) {
    const data = await Deno.readFile(`${kernel.modulesDir}/${rel}`);
    entries.push({ kind: "file", path: `${guestDir}/${rel}`, data, mode: 0o644 });
    modules.push(`${guestDir}/${rel}`);
  }
  return { entries: withParents(entries), modules };
}

/** The per-run part: the record and the extra files. */
function tailEntries(o: InitramfsOptions, modules: string[]): CpioEntry[] {
  return extraEntries([
    { path: RECORD_PATH, data: recordFor(o.config, modules) },
    ...(o.extraFiles ?? []),
  ]);
}

/**
 * cpio entries for files with absolute guest paths, with the parent
 * directories the fixed part does not already make.
 */
export function extraEntries(files: readonly ExtraFile[]): CpioEntry[] {
  const entries: CpioEntry[] = [];
  for (const f of files) {
    if (!f.path.startsWith("/")) throw new Error(`extra file path must be absolute: ${f.path}`);
    entries.push({ kind: "file", path: f.path, data: f.data, mode: f.mode ?? 0o644 });
  }
  // Parent directories the fixed part already made need no entry.
  const have = new Set(BASE_DIRS);
  return withParents(entries).filter((e) => !(e.kind === "dir" && have.has(e.path)));
}

/** The cpio entries (uncompressed) of the initramfs for `o`: the fixed part, then the per-run part. */
export async function initramfsEntries(o: InitramfsOptions): Promise<CpioEntry[]> {
  const base = await baseEntries(o.kernel, await moduleOrder(o), buildInitElf());
  return [...base.entries, ...tailEntries(o, base.modules)];
}

// gzip'd fixed parts by init, kernel and module files (path, size, mtime).
const baseCache = new Map<string, Promise<{ gz: Uint8Array; modules: string[] }>>();
const BASE_CACHE_MAX = 8;

/**
 * The gzip'd fixed part (/init, /dev/console, mount points, the modules in
 * `order`) for `kernel`, built once per init (`initName` names the
 * generator of `init()`'s bytes) and module set in this process; with the
 * module paths as the guest sees them.
 */
export async function initramfsBase(
  kernel: KernelInfo,
  order: string[],
  initName: string,
  init: () => Uint8Array,
): Promise<{ gz: Uint8Array; modules: string[] }> {
  const stamps = await Promise.all(order.map(async (rel) => {
    const st = await Deno.stat(`${kernel.modulesDir}/${rel}`);
    return `${rel}:${st.size}:${st.mtime?.getTime() ?? 0}`;
  }));
  const key = [initName, kernel.version, kernel.modulesDir ?? "", ...stamps].join("\0");
  let base = baseCache.get(key);
  if (!base) {
    base = baseEntries(kernel, order, init()).then(async ({ entries, modules }) => ({
      gz: await gzip(writeCpio(entries)),
      modules,
    }));
    base.catch(() => baseCache.delete(key));
    if (baseCache.size >= BASE_CACHE_MAX) baseCache.delete(baseCache.keys().next().value!);
    baseCache.set(key, base);
  }
  return await base;
}

/**
 * The initramfs as two gzip'd cpio archives, as the kernel accepts them
 * concatenated (`Documentation/driver-api/early-userspace/buffer-format.rst`):
 * `base` — /init, /dev/console, mount points, the modules — is built once per
 * kernel and module set in this process and reused; `tail` holds the record
 * and extra files. `cpio -t` on the whole file lists the first archive.
 */
export async function initramfsParts(
  o: InitramfsOptions,
): Promise<{ base: Uint8Array; tail: Uint8Array }> {
  const order = await moduleOrder(o);
  const { gz, modules } = await initramfsBase(o.kernel, order, "one-shot", () => buildInitElf());
  return { base: gz, tail: await gzip(writeCpio(tailEntries(o, modules))) };
}

/** Builds the gzip'd cpio initramfs for `o` (two concatenated archives, see {@link initramfsParts}). */
export async function buildInitramfs(o: InitramfsOptions): Promise<Uint8Array> {
  const { base, tail } = await initramfsParts(o);
  const out = new Uint8Array(base.length + tail.length);
  out.set(base);
  out.set(tail, base.length);
  return out;
}
