/**
 * A tiny stand-in "vmlinux" for L1 tests: `code` (assembled for
 * {@link STANDIN_LOAD}, entered in 64-bit mode per the boot protocol with
 * RSI = boot_params) as an ELF64 x86-64 EXEC with one R+X PT_LOAD at 16 MiB
 * and a physical entry, which skiff's vmlinux loader takes like a kernel.
 *
 * @module
 */

import { segmentsElf } from "./standin/elf.ts";

/** Where the code is loaded and entered (16 MiB, as Debian's vmlinux). */
export const STANDIN_LOAD = 16 << 20;

/** `code` (assembled with origin {@link STANDIN_LOAD}) as a bootable ELF. */
export function standInElf(code: Uint8Array): Uint8Array {
  return segmentsElf([{ addr: STANDIN_LOAD, bytes: code, flags: 5 }], STANDIN_LOAD);
}
