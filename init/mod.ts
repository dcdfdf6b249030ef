/**
 * skiff's guest init: the x86-64 assembler (`asm/`), the IR (`ir/`), code
 * generation (`codegen/`), the boot program, its command record and the
 * initramfs. The long-lived init — the vsock agent, its initramfs and host
 * client — is `agent/mod.ts` (protocol: `agent/AGENT.md`).
 *
 * @example
 * ```ts
 * import { buildInitramfs, defaultInitConfig } from "./mod.ts";
 * import { findKernel } from "../hv/kernel/mod.ts";
 * const initrd = await buildInitramfs({
 *   kernel: await findKernel(),
 *   config: { ...defaultInitConfig(["uname", "-a"]), rootTag: "root" },
 * });
 * ```
 *
 * @module
 */

export {
  BASE_MODULES,
  DEFAULT_PATH,
  DEFAULT_PORTS,
  defaultInitConfig,
  modulesFor,
  NET_MODULES,
  parseStatusLine,
  recordFor,
} from "./config.ts";
export type {
  InitCommand,
  InitConfig,
  InitNet,
  InitPorts,
  InitShare,
  InitStatus,
} from "./config.ts";
export { buildInitElf, buildInitramfs, initramfsEntries, initramfsParts } from "./initramfs.ts";
export type { ExtraFile, InitramfsOptions } from "./initramfs.ts";
export { bootProgram, MAX_RECORD_SIZE, PORT_WAIT_MS, RECORD_PATH } from "./boot_program.ts";
export type { BootOptions } from "./boot_program.ts";
export {
  decodeRecord,
  encodeRecord,
  REC,
  REC_FLAGS,
  RECORD_VERSION,
  RecordError,
  SHARE,
} from "./record.ts";
export type { RecordSpec } from "./record.ts";
export { cpioPath, gzip, S_IF, withParents, writeCpio } from "./cpio.ts";
export type { CpioEntry } from "./cpio.ts";
