/**
 * `struct boot_params` (the "zero page", arch/x86/include/uapi/asm/bootparam.h;
 * Linux boot protocol, Documentation/arch/x86/zero-page.rst) and the 64-bit
 * boot protocol fields skiff fills in.
 *
 * @module
 */

import type { GuestMemory } from "../memory.ts";
import type { E820Entry } from "./layout.ts";
import { HDRS_MAGIC, SETUP_HEADER_OFFSET } from "./setup_header.ts";

/** Size of struct boot_params. */
export const BOOT_PARAMS_SIZE = 4096;
/** Maximum e820 entries in boot_params (E820_MAX_ENTRIES_ZEROPAGE). */
export const E820_MAX_ENTRIES = 128;

/** Field offsets inside boot_params (zero-page.rst). */
export const BP = {
  ACPI_RSDP_ADDR: 0x070,
  EXT_RAMDISK_IMAGE: 0x0c0,
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8,
  HDR: SETUP_HEADER_OFFSET,
  BOOT_FLAG: 0x1fe,
  HEADER: 0x202,
  VERSION: 0x206,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224,
  CMD_LINE_PTR: 0x228,
  KERNEL_ALIGNMENT: 0x230,
  CMDLINE_SIZE: 0x238,
  E820_TABLE: 0x2d0,
} as const;

/** type_of_loader 0xff: "undefined" boot loader (boot.rst), as Firecracker. */
export const LOADER_TYPE_UNDEFINED = 0xff;

/** Inputs of {@link buildBootParams}. */
export interface BootParamsOptions {
  /**
   * The bzImage's setup header bytes (from 0x1f1, `headerLength` long), copied
   * verbatim as boot.rst asks; omitted for an ELF vmlinux, where skiff writes
   * the few header fields the kernel reads itself.
   */
  setupHeader?: Uint8Array;
  /** Guest-physical address and length (without NUL) of the command line. */
  cmdline: { addr: number; size: number };
  /** Initrd location, if any. */
  initrd?: { addr: number; size: number };
  /** The memory map. */
  e820: readonly E820Entry[];
  /** RSDP address, handed over directly (protocol 2.14 `acpi_rsdp_addr`). */
  rsdpAddr?: number;
}

/** Builds the 4 KiB boot_params block. Throws on more than 128 e820 entries. */
export function buildBootParams(o: BootParamsOptions): Uint8Array {
  const bp = new Uint8Array(BOOT_PARAMS_SIZE);
  const dv = new DataView(bp.buffer);
  if (o.setupHeader) {
    if (SETUP_HEADER_OFFSET + o.setupHeader.length > BP.E820_TABLE) {
      throw new RangeError(`setup header of ${o.setupHeader.length} bytes is too long`);
    }
    bp.set(o.setupHeader, SETUP_HEADER_OFFSET);
  } else {
    dv.setUint16(BP.BOOT_FLAG, 0xaa55, true);
    dv.setUint32(BP.HEADER, HDRS_MAGIC, true);
    dv.setUint16(BP.VERSION, 0x020f, true);
    dv.setUint32(BP.KERNEL_ALIGNMENT, 0x1000000, true);
  }
  bp[BP.TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
  // LOADED_HIGH; CAN_USE_HEAP with heap_end_ptr as boot.rst recommends (0xe000 - 0x200).
  bp[BP.LOADFLAGS] |= 0x01 | 0x80;
  dv.setUint16(BP.HEAP_END_PTR, 0xfe00, true);
  dv.setUint32(BP.CMD_LINE_PTR, o.cmdline.addr >>> 0, true);
  dv.setUint32(BP.EXT_CMD_LINE_PTR, Math.floor(o.cmdline.addr / 2 ** 32), true);
  dv.setUint32(BP.CMDLINE_SIZE, o.cmdline.size, true);
  if (o.initrd) {
    dv.setUint32(BP.RAMDISK_IMAGE, o.initrd.addr >>> 0, true);
    dv.setUint32(BP.EXT_RAMDISK_IMAGE, Math.floor(o.initrd.addr / 2 ** 32), true);
    dv.setUint32(BP.RAMDISK_SIZE, o.initrd.size >>> 0, true);
    dv.setUint32(BP.EXT_RAMDISK_SIZE, Math.floor(o.initrd.size / 2 ** 32), true);
  }
  if (o.rsdpAddr !== undefined) dv.setBigUint64(BP.ACPI_RSDP_ADDR, BigInt(o.rsdpAddr), true);
  if (o.e820.length > E820_MAX_ENTRIES) {
    throw new RangeError(
      `${o.e820.length} e820 entries exceed the zero page's ${E820_MAX_ENTRIES}`,
    );
  }
  bp[BP.E820_ENTRIES] = o.e820.length;
  o.e820.forEach((e, i) => {
    const off = BP.E820_TABLE + i * 20;
    dv.setBigUint64(off, BigInt(e.addr), true);
    dv.setBigUint64(off + 8, BigInt(e.size), true);
    dv.setUint32(off + 16, e.type, true);
  });
  return bp;
}

/** Reads the e820 table back out of a boot_params block (tests, diagnostics). */
export function readE820(bp: Uint8Array): E820Entry[] {
  const dv = new DataView(bp.buffer, bp.byteOffset, bp.byteLength);
  const out: E820Entry[] = [];
  for (let i = 0; i < bp[BP.E820_ENTRIES]; i++) {
    const off = BP.E820_TABLE + i * 20;
    out.push({
      addr: Number(dv.getBigUint64(off, true)),
      size: Number(dv.getBigUint64(off + 8, true)),
      type: dv.getUint32(off + 16, true) as E820Entry["type"],
    });
  }
  return out;
}

/** Writes the command line, NUL-terminated, at `addr`; returns its length without the NUL. */
export function writeCmdline(mem: GuestMemory, addr: number, cmdline: string, max: number): number {
  const bytes = new TextEncoder().encode(cmdline);
  if (bytes.includes(0)) throw new RangeError("kernel command line contains a NUL byte");
  if (bytes.length + 1 > max) {
    throw new RangeError(`kernel command line is ${bytes.length} bytes; the limit is ${max - 1}`);
  }
  mem.write(addr, bytes);
  mem.writeU8(addr + bytes.length, 0);
  return bytes.length;
}
