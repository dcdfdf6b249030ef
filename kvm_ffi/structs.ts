/**
 * Encode/decode helpers between KVM structs (bytes) and plain serialisable
 * objects, for the structs skiff reads or builds field by field: registers,
 * special registers, memory regions, MSR and CPUID lists, clock data, MP state.
 * The other state structs (FPU, XSAVE, XCRs, LAPIC, vCPU events, debug
 * registers, irqchip, PIT) travel as raw bytes whose layouts are in
 * `kvm_sys.ts`: a snapshot stores them verbatim and hands them back.
 *
 * All u64 fields are bigints so no bits are lost.
 *
 * @module
 */

import {
  KVM_CLOCK_DATA_LAYOUT,
  KVM_CPUID2_LAYOUT,
  KVM_CPUID_ENTRY2_LAYOUT,
  KVM_DTABLE_LAYOUT,
  KVM_MSR_ENTRY_LAYOUT,
  KVM_MSRS_LAYOUT,
  KVM_REGS_LAYOUT,
  KVM_SEGMENT_LAYOUT,
  KVM_SREGS_LAYOUT,
  KVM_USERSPACE_MEMORY_REGION_LAYOUT,
} from "./kvm_sys.ts";

function dv(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function need(bytes: Uint8Array, size: number, what: string): void {
  if (bytes.byteLength < size) {
    throw new RangeError(`${what}: need ${size} bytes, got ${bytes.byteLength}`);
  }
}

/** `struct kvm_regs` as an object. */
export interface Regs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

const REG_NAMES = Object.keys(KVM_REGS_LAYOUT.fields) as (keyof Regs)[];

/** All-zero registers with the reserved RFLAGS bit 1 set (as after reset). */
export function emptyRegs(): Regs {
  const r = {} as Regs;
  for (const k of REG_NAMES) r[k] = 0n;
  r.rflags = 2n;
  return r;
}

/** Decodes `struct kvm_regs`. */
export function decodeRegs(bytes: Uint8Array): Regs {
  need(bytes, KVM_REGS_LAYOUT.size, "kvm_regs");
  const v = dv(bytes);
  const r = {} as Regs;
  for (const k of REG_NAMES) r[k] = v.getBigUint64(KVM_REGS_LAYOUT.fields[k], true);
  return r;
}

/** Encodes `struct kvm_regs`. */
export function encodeRegs(regs: Regs): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KVM_REGS_LAYOUT.size);
  const v = dv(out);
  for (const k of REG_NAMES) {
    v.setBigUint64(KVM_REGS_LAYOUT.fields[k], BigInt.asUintN(64, regs[k]), true);
  }
  return out;
}

/** `struct kvm_segment` as an object (flags are 0/1 except `type` and `dpl`). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** `struct kvm_dtable` as an object. */
export interface DTable {
  base: bigint;
  limit: number;
}

/** `struct kvm_sregs` as an object. */
export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DTable;
  idt: DTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apic_base: bigint;
  /** Pending external interrupts, one bit per vector (4 × u64). */
  interrupt_bitmap: [bigint, bigint, bigint, bigint];
}

const SEG_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
const SEG_U8 = ["type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"] as const;

function decodeSegment(v: DataView, at: number): Segment {
  const f = KVM_SEGMENT_LAYOUT.fields;
  const s = {
    base: v.getBigUint64(at + f.base, true),
    limit: v.getUint32(at + f.limit, true),
    selector: v.getUint16(at + f.selector, true),
  } as Segment;
  for (const k of SEG_U8) s[k] = v.getUint8(at + f[k]);
  return s;
}

function encodeSegment(v: DataView, at: number, s: Segment): void {
  const f = KVM_SEGMENT_LAYOUT.fields;
  v.setBigUint64(at + f.base, BigInt.asUintN(64, s.base), true);
  v.setUint32(at + f.limit, s.limit >>> 0, true);
  v.setUint16(at + f.selector, s.selector, true);
  for (const k of SEG_U8) v.setUint8(at + f[k], s[k]);
}

/** Decodes `struct kvm_sregs`. */
export function decodeSregs(bytes: Uint8Array): Sregs {
  need(bytes, KVM_SREGS_LAYOUT.size, "kvm_sregs");
  const v = dv(bytes);
  const f = KVM_SREGS_LAYOUT.fields;
  const out = {} as Sregs;
  for (const k of SEG_NAMES) out[k] = decodeSegment(v, f[k]);
  for (const k of ["gdt", "idt"] as const) {
    out[k] = {
      base: v.getBigUint64(f[k] + KVM_DTABLE_LAYOUT.fields.base, true),
      limit: v.getUint16(f[k] + KVM_DTABLE_LAYOUT.fields.limit, true),
    };
  }
  for (const k of ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"] as const) {
    out[k] = v.getBigUint64(f[k], true);
  }
  const ib = f.interrupt_bitmap;
  out.interrupt_bitmap = [0, 1, 2, 3].map((i) => v.getBigUint64(ib + 8 * i, true)) as Sregs[
    "interrupt_bitmap"
  ];
  return out;
}

/** Encodes `struct kvm_sregs`. */
export function encodeSregs(s: Sregs): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KVM_SREGS_LAYOUT.size);
  const v = dv(out);
  const f = KVM_SREGS_LAYOUT.fields;
  for (const k of SEG_NAMES) encodeSegment(v, f[k], s[k]);
  for (const k of ["gdt", "idt"] as const) {
    v.setBigUint64(f[k] + KVM_DTABLE_LAYOUT.fields.base, BigInt.asUintN(64, s[k].base), true);
    v.setUint16(f[k] + KVM_DTABLE_LAYOUT.fields.limit, s[k].limit, true);
  }
  for (const k of ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"] as const) {
    v.setBigUint64(f[k], BigInt.asUintN(64, s[k]), true);
  }
  for (let i = 0; i < 4; i++) {
    v.setBigUint64(f.interrupt_bitmap + 8 * i, s.interrupt_bitmap[i] ?? 0n, true);
  }
  return out;
}

/** `struct kvm_userspace_memory_region` as an object. */
export interface UserspaceMemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
}

/** Encodes `struct kvm_userspace_memory_region`. */
export function encodeMemoryRegion(r: UserspaceMemoryRegion): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KVM_USERSPACE_MEMORY_REGION_LAYOUT.size);
  const v = dv(out);
  const f = KVM_USERSPACE_MEMORY_REGION_LAYOUT.fields;
  v.setUint32(f.slot, r.slot, true);
  v.setUint32(f.flags, r.flags, true);
  v.setBigUint64(f.guest_phys_addr, r.guestPhysAddr, true);
  v.setBigUint64(f.memory_size, r.memorySize, true);
  v.setBigUint64(f.userspace_addr, r.userspaceAddr, true);
  return out;
}

/** One MSR: index and value. */
export interface MsrEntry {
  index: number;
  data: bigint;
}

/** Encodes `struct kvm_msrs` with its entries. */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array<ArrayBuffer> {
  const es = KVM_MSR_ENTRY_LAYOUT.size;
  const out = new Uint8Array(KVM_MSRS_LAYOUT.size + entries.length * es);
  const v = dv(out);
  v.setUint32(KVM_MSRS_LAYOUT.fields.nmsrs, entries.length, true);
  entries.forEach((e, i) => {
    const at = KVM_MSRS_LAYOUT.fields.entries + i * es;
    v.setUint32(at + KVM_MSR_ENTRY_LAYOUT.fields.index, e.index >>> 0, true);
    v.setBigUint64(at + KVM_MSR_ENTRY_LAYOUT.fields.data, BigInt.asUintN(64, e.data), true);
  });
  return out;
}

/** Decodes the first `count` entries of `struct kvm_msrs`. */
export function decodeMsrs(bytes: Uint8Array, count?: number): MsrEntry[] {
  const v = dv(bytes);
  const n = count ?? v.getUint32(KVM_MSRS_LAYOUT.fields.nmsrs, true);
  const es = KVM_MSR_ENTRY_LAYOUT.size;
  need(bytes, KVM_MSRS_LAYOUT.size + n * es, "kvm_msrs");
  const out: MsrEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = KVM_MSRS_LAYOUT.fields.entries + i * es;
    out.push({
      index: v.getUint32(at + KVM_MSR_ENTRY_LAYOUT.fields.index, true),
      data: v.getBigUint64(at + KVM_MSR_ENTRY_LAYOUT.fields.data, true),
    });
  }
  return out;
}

/** `struct kvm_cpuid_entry2` as an object. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

const CPUID_U32 = ["function", "index", "flags", "eax", "ebx", "ecx", "edx"] as const;

/** Encodes `struct kvm_cpuid2` with room for `capacity` entries (at least `entries.length`). */
export function encodeCpuid2(
  entries: readonly CpuidEntry[],
  capacity = entries.length,
): Uint8Array<ArrayBuffer> {
  const n = Math.max(capacity, entries.length);
  const es = KVM_CPUID_ENTRY2_LAYOUT.size;
  const out = new Uint8Array(KVM_CPUID2_LAYOUT.size + n * es);
  const v = dv(out);
  v.setUint32(KVM_CPUID2_LAYOUT.fields.nent, n, true);
  entries.forEach((e, i) => {
    const at = KVM_CPUID2_LAYOUT.fields.entries + i * es;
    for (const k of CPUID_U32) {
      v.setUint32(at + KVM_CPUID_ENTRY2_LAYOUT.fields[k], e[k] >>> 0, true);
    }
  });
  return out;
}

/** Decodes `struct kvm_cpuid2` (as many entries as `nent` says). */
export function decodeCpuid2(bytes: Uint8Array): CpuidEntry[] {
  const v = dv(bytes);
  const n = v.getUint32(KVM_CPUID2_LAYOUT.fields.nent, true);
  const es = KVM_CPUID_ENTRY2_LAYOUT.size;
  need(bytes, KVM_CPUID2_LAYOUT.size + n * es, "kvm_cpuid2");
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = KVM_CPUID2_LAYOUT.fields.entries + i * es;
    const e = {} as CpuidEntry;
    for (const k of CPUID_U32) e[k] = v.getUint32(at + KVM_CPUID_ENTRY2_LAYOUT.fields[k], true);
    out.push(e);
  }
  return out;
}

/** `struct kvm_clock_data` as an object. */
export interface ClockData {
  clock: bigint;
  flags: number;
  realtime: bigint;
  hostTsc: bigint;
}

/** Decodes `struct kvm_clock_data`. */
export function decodeClock(bytes: Uint8Array): ClockData {
  need(bytes, KVM_CLOCK_DATA_LAYOUT.size, "kvm_clock_data");
  const v = dv(bytes);
  const f = KVM_CLOCK_DATA_LAYOUT.fields;
  return {
    clock: v.getBigUint64(f.clock, true),
    flags: v.getUint32(f.flags, true),
    realtime: v.getBigUint64(f.realtime, true),
    hostTsc: v.getBigUint64(f.host_tsc, true),
  };
}

/** Encodes `struct kvm_clock_data`. */
export function encodeClock(c: ClockData): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KVM_CLOCK_DATA_LAYOUT.size);
  const v = dv(out);
  const f = KVM_CLOCK_DATA_LAYOUT.fields;
  v.setBigUint64(f.clock, c.clock, true);
  v.setUint32(f.flags, c.flags, true);
  v.setBigUint64(f.realtime, c.realtime, true);
  v.setBigUint64(f.host_tsc, c.hostTsc, true);
  return out;
}
