/**
 * x86-64 long-mode entry state, shared by the Linux loader (64-bit boot
 * protocol) and the test guests: a flat GDT, identity-mapped page tables,
 * CR0/CR3/CR4/EFER, segment registers and the initial general registers.
 *
 * Linux's 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit
 * Boot Protocol") asks for: long mode with paging, an identity map covering
 * the kernel, boot_params and the command line; a GDT with flat 4 GiB
 * segments where `__BOOT_CS` = 0x10 is execute/read and `__BOOT_DS` = 0x18
 * read/write, CS/DS/ES/SS loaded with them; interrupts disabled; `%rsi`
 * holding the address of boot_params.
 *
 * @module
 */

import type { VcpuFd } from "../../kvm_ffi/kvm.ts";
import type { Segment, Sregs } from "../../kvm_ffi/structs.ts";
import type { GuestMemory } from "../memory.ts";

/** Default guest-physical placement of the boot structures (below 1 MiB, clear of 0x7000 zero page and 0x20000 cmdline). */
export const X86_BOOT = {
  /** GDT: null, null, code64 (0x10), data (0x18), TSS (0x20). */
  GDT_ADDR: 0x500,
  /** An empty IDT (limit 0): any exception before the guest loads its own IDT triple-faults. */
  IDT_ADDR: 0x520,
  /** PML4; the PDPT and the page directories follow it page by page. */
  PML4_ADDR: 0x9000,
  /** Code selector (`__BOOT_CS`). */
  BOOT_CS: 0x10,
  /** Data selector (`__BOOT_DS`). */
  BOOT_DS: 0x18,
  /** Task-register selector. */
  BOOT_TSS: 0x20,
} as const;

/** Control-register and EFER bits (Intel SDM vol. 3, §2.5 and §2.2.1). */
export const X86 = {
  CR0_PE: 1n,
  CR0_MP: 1n << 1n,
  CR0_ET: 1n << 4n,
  CR0_NE: 1n << 5n,
  CR0_WP: 1n << 16n,
  CR0_PG: 1n << 31n,
  CR4_PAE: 1n << 5n,
  CR4_OSFXSR: 1n << 9n,
  CR4_OSXMMEXCPT: 1n << 10n,
  EFER_SCE: 1n,
  EFER_LME: 1n << 8n,
  EFER_LMA: 1n << 10n,
  EFER_NXE: 1n << 11n,
  /** Page-table entry bits: present, writable, page size (2 MiB / 1 GiB leaf). */
  PTE_P: 1n,
  PTE_RW: 2n,
  PTE_PS: 0x80n,
} as const;

/** A GDT descriptor from flags (`0xGF0T` nibbles as in Firecracker/Linux `GDT_ENTRY`), base and limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0), l = BigInt(limit & 0xfffff), f = BigInt(flags & 0xf0ff);
  return ((b & 0xff000000n) << 32n) | ((f & 0xf0ffn) << 40n) | ((l & 0xf0000n) << 32n) |
    ((b & 0x00ffffffn) << 16n) | (l & 0xffffn);
}

/** The boot GDT: null, null, code64 at 0x10, data at 0x18, TSS at 0x20. */
export function bootGdt(): bigint[] {
  return [
    0n,
    0n,
    gdtEntry(0xa09b, 0, 0xfffff), // code: G, L, P, DPL0, S, execute/read accessed
    gdtEntry(0xc093, 0, 0xfffff), // data: G, D/B, P, DPL0, S, read/write accessed
    gdtEntry(0x808b, 0, 0xfffff), // TSS: G, P, busy 64-bit TSS
  ];
}

/** Decodes a GDT descriptor into the `kvm_segment` KVM expects for `selector`. */
export function segmentFromGdt(entry: bigint, selector: number): Segment {
  const base = Number(((entry >> 16n) & 0xffffffn) | ((entry >> 32n) & 0xff000000n));
  const rawLimit = Number((entry & 0xffffn) | ((entry >> 32n) & 0xf0000n));
  const g = Number((entry >> 55n) & 1n);
  return {
    base: BigInt(base),
    // kvm_segment limits are in bytes: scale a page-granular limit.
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: Number((entry >> 40n) & 0xfn),
    present: Number((entry >> 47n) & 1n),
    dpl: Number((entry >> 45n) & 3n),
    db: Number((entry >> 54n) & 1n),
    s: Number((entry >> 44n) & 1n),
    l: Number((entry >> 53n) & 1n),
    g,
    avl: Number((entry >> 52n) & 1n),
    unusable: 0,
  };
}

/** Writes the boot GDT at `addr` and an empty IDT at `idtAddr`; returns the GDT's limit. */
export function writeGdt(
  mem: GuestMemory,
  addr: number = X86_BOOT.GDT_ADDR,
  idtAddr: number = X86_BOOT.IDT_ADDR,
): number {
  const gdt = bootGdt();
  gdt.forEach((e, i) => mem.writeU64(addr + 8 * i, e));
  mem.writeU64(idtAddr, 0n);
  return gdt.length * 8 - 1;
}

/**
 * Writes identity page tables mapping guest-physical `[0, gib GiB)` with
 * 2 MiB pages (1 GiB pages need `pdpe1gb`, which not every CPU model offers):
 * a PML4 at `pml4Addr`, a PDPT in the next page, then one page directory per
 * GiB. Returns the bytes used (`(2 + gib) × 4096`).
 */
export function writeIdentityPageTables(
  mem: GuestMemory,
  pml4Addr: number = X86_BOOT.PML4_ADDR,
  gib = 4,
): number {
  if (!Number.isInteger(gib) || gib < 1 || gib > 512) {
    throw new RangeError(`identity map of ${gib} GiB: need 1..512`);
  }
  if (pml4Addr % 4096 !== 0) {
    throw new RangeError(`PML4 at 0x${pml4Addr.toString(16)} is not page-aligned`);
  }
  const size = (2 + gib) * 0x1000;
  // Built in one buffer with 32-bit halves and written at once: 2048 BigInt
  // writeU64s (4 GiB) took 2–4 ms of a VM's start-up before its first KVM_RUN.
  // The leaf entries are written inline, not through a helper: a function
  // called 2048 times at every VM start is compiled by V8's Maglev, whose
  // compiler code then stays resident (measured 0.3–1.7 MiB of the VMM’s RSS;
  // hv/start_bench.ts `vmm-rss`), for a loop that runs once.
  const tables = new Uint8Array(size);
  const v = new DataView(tables.buffer);
  const rw = Number(X86.PTE_P | X86.PTE_RW);
  const leaf = rw | Number(X86.PTE_PS);
  // An entry's address in two 32-bit halves; the flags sit in its low 12 bits.
  const entry = (at: number, addr: number, flags: number) => {
    v.setUint32(at, (addr % 2 ** 32) + flags, true);
    v.setUint32(at + 4, Math.floor(addr / 2 ** 32), true);
  };
  entry(0, pml4Addr + 0x1000, rw);
  for (let g = 0; g < gib; g++) {
    const pd = 0x2000 + g * 0x1000;
    entry(0x1000 + 8 * g, pml4Addr + pd, rw);
    // GiB g's 2 MiB pages: low half (g mod 4) GiB + j × 2 MiB + flags, high half ⌊g / 4⌋.
    const low = (g % 4) * 2 ** 30 + leaf;
    const high = Math.floor(g / 4);
    for (let j = 0, at = pd; j < 512; j++, at += 8) {
      v.setUint32(at, low + j * 2 ** 21, true);
      v.setUint32(at + 4, high, true);
    }
  }
  mem.write(pml4Addr, tables);
  return size;
}

/** Where the boot structures go (defaults: {@link X86_BOOT}). */
export interface LongModeTables {
  gdtAddr?: number;
  idtAddr?: number;
  pml4Addr?: number;
}

/** `sregs` switched to 64-bit long mode with the boot GDT, the given tables and paging on. */
export function longModeSregs(sregs: Sregs, t: LongModeTables = {}): Sregs {
  const gdtAddr = t.gdtAddr ?? X86_BOOT.GDT_ADDR;
  const gdt = bootGdt();
  const code = segmentFromGdt(gdt[X86_BOOT.BOOT_CS / 8], X86_BOOT.BOOT_CS);
  const data = segmentFromGdt(gdt[X86_BOOT.BOOT_DS / 8], X86_BOOT.BOOT_DS);
  const tss = segmentFromGdt(gdt[X86_BOOT.BOOT_TSS / 8], X86_BOOT.BOOT_TSS);
  return {
    ...sregs,
    cs: code,
    ds: { ...data },
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: tss,
    gdt: { base: BigInt(gdtAddr), limit: gdt.length * 8 - 1 },
    idt: { base: BigInt(t.idtAddr ?? X86_BOOT.IDT_ADDR), limit: 0 },
    cr0: (sregs.cr0 | X86.CR0_PE | X86.CR0_ET | X86.CR0_NE | X86.CR0_PG) & ~(3n << 29n), // CD, NW off
    cr3: BigInt(t.pml4Addr ?? X86_BOOT.PML4_ADDR),
    cr4: sregs.cr4 | X86.CR4_PAE,
    efer: sregs.efer | X86.EFER_LME | X86.EFER_LMA,
  };
}

/** Options of {@link setupLongMode}. */
export interface LongModeOptions extends LongModeTables {
  /** Guest-physical (= virtual) entry point. */
  entry: number | bigint;
  /** Initial RSP (default 0: the guest sets its own). */
  stack?: number | bigint;
  /** Initial RSI (Linux: the boot_params address). */
  rsi?: number | bigint;
  /** GiB identity-mapped (default 4). */
  identityGiB?: number;
}

/**
 * Writes the GDT, IDT and page tables into guest memory and puts `vcpu` in
 * 64-bit long mode at `entry`, interrupts disabled. Call before the vCPU runs.
 */
export function setupLongMode(mem: GuestMemory, vcpu: VcpuFd, opts: LongModeOptions): void {
  writeGdt(mem, opts.gdtAddr ?? X86_BOOT.GDT_ADDR, opts.idtAddr ?? X86_BOOT.IDT_ADDR);
  writeIdentityPageTables(mem, opts.pml4Addr ?? X86_BOOT.PML4_ADDR, opts.identityGiB ?? 4);
  vcpu.setSregs(longModeSregs(vcpu.getSregs(), opts));
  const regs = vcpu.getRegs();
  for (const k of Object.keys(regs) as (keyof typeof regs)[]) regs[k] = 0n;
  regs.rflags = 2n; // reserved bit 1; IF clear
  regs.rip = BigInt(opts.entry);
  regs.rsp = BigInt(opts.stack ?? 0);
  regs.rsi = BigInt(opts.rsi ?? 0);
  vcpu.setRegs(regs);
}
