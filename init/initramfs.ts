/**
 * The initramfs: `/init` (skiff's generated init), `/skiff/record` (the
 * command record), `/dev/console`, the kernel modules the init loads (with
 * their dependencies, in `modules.dep` order, under `lib/modules/<release>/`),
 * and optional extra files; cpio newc, gzip'd.
 *
 * @module
 */

import { type KernelInfo, kernelModules } from "../hv/kernel/mod.ts";
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
 * `/skiff/record` at run time (the initramfs form); with one, the record is
 * built into the executable.
 */
export function buildInitElf(config?: InitConfig, modules: string[] = []): Uint8Array {
  const record = config ? { bytes: recordFor(config, modules) } : { path: RECORD_PATH };
  return compileElf(bootProgram({ record })).bytes;
}

/** The cpio entries (uncompressed) of the initramfs for `o`. */
export async function initramfsEntries(o: InitramfsOptions): Promise<CpioEntry[]> {
  const { kernel, config } = o;
  // A kernel without a modules directory (`--kernel` with no `--modules`) is
  // taken to have its drivers built in: the init then loads no modules.
  const order = kernel.modulesDir
    ? (await kernelModules(kernel)).loadOrder(modulesFor(config))
    : [];
  const guestDir = `/lib/modules/${kernel.version}`;
  const entries: CpioEntry[] = [
    { kind: "dir", path: "dev" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    ...["proc", "sys", "tmp", "run", "mnt", "etc", "skiff"].map((p) => ({
      kind: "dir" as const,
      path: p,
    })),
    { kind: "file", path: "init", data: buildInitElf(), mode: 0o755 },
  ];
  const modules: string[] = [];
  for (const rel of order) {
    if (!rel.endsWith(".ko")) {
      // finit_module can take compressed modules only with MODULE_INIT_COMPRESSED_FILE.
      throw new Error(`module ${rel} is compressed; skiff needs plain .ko files`);
    }
    const data = await Deno.readFile(`${kernel.modulesDir}/${rel}`);
    entries.push({ kind: "file", path: `${guestDir}/${rel}`, data, mode: 0o644 });
    modules.push(`${guestDir}/${rel}`);
  }
  entries.push({ kind: "file", path: RECORD_PATH, data: recordFor(config, modules), mode: 0o644 });
  for (const f of o.extraFiles ?? []) {
    if (!f.path.startsWith("/")) throw new Error(`extra file path must be absolute: ${f.path}`);
    entries.push({ kind: "file", path: f.path, data: f.data, mode: f.mode ?? 0o644 });
  }
  return withParents(entries);
}

/** Builds the gzip'd cpio initramfs for `o`. */
export async function buildInitramfs(o: InitramfsOptions): Promise<Uint8Array> {
  return await gzip(writeCpio(await initramfsEntries(o)));
}
