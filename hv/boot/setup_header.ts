/**
 * The bzImage real-mode setup header (Linux boot protocol,
 * Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header"). Offsets are
 * relative to the start of the bzImage file, which are also the offsets of the
 * same fields inside `struct boot_params` (the header is copied to 0x1f1).
 *
 * @module
 */

/** Offset of the setup header in the bzImage and in boot_params (boot.rst). */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** "HdrS" read as a little-endian u32 at 0x202. */
export const HDRS_MAGIC = 0x53726448;
/** The boot sector signature at 0x1fe. */
export const BOOT_FLAG = 0xaa55;
/** Oldest protocol skiff accepts: 2.12 adds xloadflags (and so XLF_KERNEL_64). */
export const MIN_PROTOCOL = 0x020c;

/** `loadflags` bits (boot.rst). */
export const LOADFLAGS = {
  /** Protected-mode code is loaded at 0x100000. */
  LOADED_HIGH: 0x01,
  /** Ask the kernel not to reload segment registers before setting up its own. */
  KEEP_SEGMENTS: 0x40,
  /** heap_end_ptr is valid. */
  CAN_USE_HEAP: 0x80,
} as const;

/** `xloadflags` bits (boot.rst, protocol 2.12). */
export const XLF = {
  /** The kernel has the legacy 64-bit entry point at code32_start + 0x200. */
  KERNEL_64: 0x01,
  /** Kernel, boot_params, command line and ramdisk may live above 4 GiB. */
  CAN_BE_LOADED_ABOVE_4G: 0x02,
  EFI_HANDOVER_32: 0x04,
  EFI_HANDOVER_64: 0x08,
  EFI_KEXEC: 0x10,
} as const;

/** A bzImage that skiff cannot boot; says which field was wrong and its value. */
export class BootImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BootImageError";
  }
}

/** The fields of the setup header skiff reads (boot.rst names). */
export interface SetupHeader {
  /** Number of 512-byte setup sectors (0 means 4). */
  setupSects: number;
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  version: number;
  loadflags: number;
  /** Where the protected-mode kernel expects to be loaded (0x100000 for bzImage). */
  code32Start: number;
  /** Highest address the initrd may occupy (inclusive). */
  initrdAddrMax: number;
  /** Physical alignment required for a relocatable kernel. */
  kernelAlignment: number;
  relocatableKernel: boolean;
  xloadflags: number;
  /** Maximum command line length excluding the terminating NUL. */
  cmdlineSize: number;
  /** Offset of the compressed payload from the start of the protected-mode code. */
  payloadOffset: number;
  /** Length of the compressed payload. */
  payloadLength: number;
  /** Preferred load address of a relocatable kernel. */
  prefAddress: bigint;
  /** Linear memory the kernel needs from its load address before it can relocate. */
  initSize: number;
  /** Byte length of the header from 0x1f1 (so boot_params gets exactly what the kernel defines). */
  headerLength: number;
  /** Offset in the file where the protected-mode kernel starts: (setup_sects + 1) × 512. */
  protectedModeOffset: number;
}

/** Human-readable protocol version, e.g. "2.15". */
export function protocolString(version: number): string {
  return `${version >> 8}.${version & 0xff}`;
}

/** Whether `image` starts like a bzImage (boot flag and "HdrS"). */
export function isBzImage(image: Uint8Array): boolean {
  if (image.length < 0x206) return false;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return dv.getUint16(0x1fe, true) === BOOT_FLAG && dv.getUint32(0x202, true) === HDRS_MAGIC;
}

/**
 * Parses and validates the setup header of a bzImage: boot flag, "HdrS",
 * protocol ≥ 2.12, a 64-bit entry point (XLF_KERNEL_64), and a payload that
 * lies inside the file. Throws {@link BootImageError} naming the bad field.
 */
export function parseSetupHeader(image: Uint8Array, name = "kernel image"): SetupHeader {
  if (image.length < 0x270) {
    throw new BootImageError(`${name}: too short for a bzImage (${image.length} bytes)`);
  }
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const bootFlag = dv.getUint16(0x1fe, true);
  if (bootFlag !== BOOT_FLAG) {
    throw new BootImageError(
      `${name}: not a bzImage (boot_flag at 0x1fe is 0x${bootFlag.toString(16)}, expected 0xaa55)`,
    );
  }
  const magic = dv.getUint32(0x202, true);
  if (magic !== HDRS_MAGIC) {
    throw new BootImageError(
      `${name}: not a bzImage (header magic at 0x202 is 0x${magic.toString(16)}, expected "HdrS")`,
    );
  }
  const version = dv.getUint16(0x206, true);
  if (version < MIN_PROTOCOL) {
    throw new BootImageError(
      `${name}: boot protocol ${protocolString(version)} is too old (skiff needs ≥ 2.12)`,
    );
  }
  const xloadflags = dv.getUint16(0x236, true);
  if (!(xloadflags & XLF.KERNEL_64)) {
    throw new BootImageError(
      `${name}: no 64-bit entry point (xloadflags 0x${
        xloadflags.toString(16)
      } lacks XLF_KERNEL_64)`,
    );
  }
  const setupSects = image[0x1f1] === 0 ? 4 : image[0x1f1];
  const protectedModeOffset = (setupSects + 1) * 512;
  if (protectedModeOffset >= image.length) {
    throw new BootImageError(
      `${name}: setup_sects ${setupSects} points past the end of the file (${image.length} bytes)`,
    );
  }
  const payloadOffset = dv.getUint32(0x248, true);
  const payloadLength = dv.getUint32(0x24c, true);
  if (protectedModeOffset + payloadOffset + payloadLength > image.length) {
    throw new BootImageError(
      `${name}: payload 0x${payloadOffset.toString(16)}+0x${
        payloadLength.toString(16)
      } lies outside the protected-mode code (${image.length - protectedModeOffset} bytes)`,
    );
  }
  // The byte at 0x201 is the short jump's displacement: the header ends where it lands.
  const headerLength = 0x202 + image[0x201] - SETUP_HEADER_OFFSET;
  return {
    setupSects,
    version,
    loadflags: image[0x211],
    code32Start: dv.getUint32(0x214, true),
    initrdAddrMax: dv.getUint32(0x22c, true),
    kernelAlignment: dv.getUint32(0x230, true),
    relocatableKernel: image[0x234] !== 0,
    xloadflags,
    cmdlineSize: dv.getUint32(0x238, true),
    payloadOffset,
    payloadLength,
    prefAddress: dv.getBigUint64(0x258, true),
    initSize: dv.getUint32(0x260, true),
    headerLength,
    protectedModeOffset,
  };
}

/** The compressed payload of a bzImage (a view into `image`). */
export function bzImagePayload(image: Uint8Array, header = parseSetupHeader(image)): Uint8Array {
  const start = header.protectedModeOffset + header.payloadOffset;
  return image.subarray(start, start + header.payloadLength);
}
