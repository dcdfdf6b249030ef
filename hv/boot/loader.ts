/**
 * Kernel loaders: an ELF `vmlinux` by its program headers, or a bzImage's
 * protected-mode code at code32_start (Linux boot protocol, boot.rst "64-bit
 * Boot Protocol"), plus initrd placement under `initrd_addr_max`.
 *
 * @module
 */

import type { GuestMemory } from "../memory.ts";
import { Elf64, ElfError, isElf, PT_LOAD } from "./elf.ts";
import { LAYOUT } from "./layout.ts";
import {
  BootImageError,
  isBzImage,
  parseSetupHeader,
  SETUP_HEADER_OFFSET,
  type SetupHeader,
} from "./setup_header.ts";

/** A kernel loaded into guest memory. */
export interface LoadedKernel {
  format: "elf" | "bzimage";
  /** Guest-physical 64-bit entry point (RIP in long mode, identity-mapped). */
  entry: number;
  /** Lowest and highest (exclusive) guest-physical addresses the image occupies. */
  start: number;
  end: number;
  /** bzImage only: the parsed setup header and its raw bytes for boot_params. */
  header?: SetupHeader;
  setupHeaderBytes?: Uint8Array;
  /** Highest initrd address + 1 the kernel accepts (boot.rst initrd_addr_max). */
  initrdAddrMax: number;
  /** Longest command line the kernel accepts, without the NUL. */
  cmdlineMax: number;
}

/** Kernel address space mapping of x86-64 (`__START_KERNEL_map`), for virtual e_entry values. */
const START_KERNEL_MAP = 0xffffffff80000000n;

/** Loads an ELF64 x86-64 vmlinux by its PT_LOAD program headers (physical addresses). */
export function loadElfKernel(mem: GuestMemory, image: Uint8Array, name = "vmlinux"): LoadedKernel {
  const elf = new Elf64(image, name);
  if (elf.machine !== 62) throw new ElfError(`${name}: not x86-64 (e_machine ${elf.machine})`);
  const loads = elf.programHeaders().filter((p) => p.type === PT_LOAD && p.memsz > 0);
  if (loads.length === 0) throw new ElfError(`${name}: no loadable segments`);
  let start = Infinity, end = 0;
  for (const p of loads) {
    if (p.paddr < LAYOUT.HIMEM_START || !mem.contains(p.paddr, p.memsz)) {
      throw new ElfError(
        `${name}: segment at 0x${p.paddr.toString(16)} (+0x${
          p.memsz.toString(16)
        }) does not fit in guest RAM`,
      );
    }
    const dst = mem.slice(p.paddr, p.memsz);
    dst.set(image.subarray(p.offset, p.offset + p.filesz));
    dst.fill(0, p.filesz);
    start = Math.min(start, p.paddr);
    end = Math.max(end, p.paddr + p.memsz);
  }
  // vmlinux's e_entry is physical (ENTRY(phys_startup_64)); translate if a virtual one shows up.
  let entry = elf.entry;
  if (entry >= START_KERNEL_MAP) {
    const seg = loads.find((p) => entry >= p.vaddr && entry < p.vaddr + BigInt(p.memsz));
    if (!seg) throw new ElfError(`${name}: entry 0x${entry.toString(16)} lies in no segment`);
    entry = entry - seg.vaddr + BigInt(seg.paddr);
  }
  return {
    format: "elf",
    entry: Number(entry),
    start,
    end,
    initrdAddrMax: 0x7fffffff,
    cmdlineMax: 2047,
  };
}

/**
 * Loads a bzImage: the protected-mode code goes to code32_start (0x100000);
 * the 64-bit entry is code32_start + 0x200 (boot.rst, "64-bit BOOT PROTOCOL").
 * The kernel decompresses and relocates itself using `init_size` bytes from
 * its load address, which must be RAM.
 */
export function loadBzImage(mem: GuestMemory, image: Uint8Array, name = "bzImage"): LoadedKernel {
  const header = parseSetupHeader(image, name);
  const code = image.subarray(header.protectedModeOffset);
  const load = LAYOUT.HIMEM_START;
  const need = Math.max(code.length, header.initSize);
  if (!mem.contains(load, need)) {
    throw new BootImageError(
      `${name}: needs ${need} bytes of RAM from 0x${
        load.toString(16)
      } (init_size); give the guest more memory`,
    );
  }
  mem.write(load, code);
  return {
    format: "bzimage",
    entry: load + 0x200,
    start: load,
    end: load + need,
    header,
    setupHeaderBytes: image.slice(SETUP_HEADER_OFFSET, SETUP_HEADER_OFFSET + header.headerLength),
    initrdAddrMax: header.initrdAddrMax,
    cmdlineMax: header.cmdlineSize,
  };
}

/** Loads `image`, detecting ELF vmlinux or bzImage. */
export function loadKernel(mem: GuestMemory, image: Uint8Array, name = "kernel"): LoadedKernel {
  if (isElf(image)) return loadElfKernel(mem, image, name);
  if (isBzImage(image)) return loadBzImage(mem, image, name);
  throw new BootImageError(`${name} is neither an ELF vmlinux nor a bzImage`);
}

/**
 * Places the initrd page-aligned at the top of low RAM, below both
 * `initrd_addr_max` and `lowRamEnd`, above the kernel. Returns its address.
 */
export function placeInitrd(
  mem: GuestMemory,
  initrd: Uint8Array,
  kernel: LoadedKernel,
  lowRamEnd: number,
): number {
  const top = Math.min(lowRamEnd, kernel.initrdAddrMax + 1);
  const addr = Math.floor((top - initrd.length) / 4096) * 4096;
  if (addr < kernel.end) {
    throw new BootImageError(
      `initrd of ${initrd.length} bytes does not fit between the kernel end 0x${
        kernel.end.toString(16)
      } and 0x${top.toString(16)}; give the guest more memory`,
    );
  }
  mem.write(addr, initrd);
  return addr;
}
