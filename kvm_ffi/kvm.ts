/**
 * One class per KVM file descriptor: {@link Kvm} (`/dev/kvm`), {@link VmFd}
 * and {@link VcpuFd}. Each method wraps one ioctl and throws
 * {@link SysError} naming it (`KVM_CREATE_VCPU failed: EEXIST`).
 *
 * File descriptors and mappings are process-wide, so a `VcpuFd` created on the
 * main thread can be re-opened in a Worker with {@link VcpuFd.fromRaw} (the
 * same fd number and the same `kvm_run` address): that is how the vCPU loop
 * runs in a Worker while the main thread can still read state of a paused vCPU.
 *
 * State for snapshots: VM state is raw irqchip (PIC master, PIC slave, IOAPIC),
 * PIT and clock bytes ({@link VmFd.saveState}); vCPU state is the raw bytes of
 * each `KVM_GET_*` struct ({@link VcpuFd.saveState}). Their layouts are in
 * `kvm_sys.ts`; a snapshot stores them verbatim.
 *
 * @module
 */

import {
  check,
  close,
  ioctl,
  ioctlValue,
  libc,
  MAP,
  mmap,
  munmap,
  O,
  open,
  PROT,
  SysError,
  viewAt,
} from "./libc.ts";
import { Errno } from "./errno.ts";
import {
  KVM,
  KVM_API_VERSION,
  KVM_CAP,
  KVM_CLOCK_DATA_LAYOUT,
  KVM_DEBUGREGS_LAYOUT,
  KVM_ENABLE_CAP_LAYOUT,
  KVM_FPU_LAYOUT,
  KVM_IOEVENTFD_FLAG,
  KVM_IOEVENTFD_LAYOUT,
  KVM_IRQ_LEVEL_LAYOUT,
  KVM_IRQCHIP,
  KVM_IRQCHIP_LAYOUT,
  KVM_IRQFD_FLAG,
  KVM_IRQFD_LAYOUT,
  KVM_LAPIC_STATE_LAYOUT,
  KVM_MP_STATE_LAYOUT,
  KVM_MSR_LIST_LAYOUT,
  KVM_PIT_CONFIG_LAYOUT,
  KVM_PIT_STATE2_LAYOUT,
  KVM_REGS_LAYOUT,
  KVM_SREGS_LAYOUT,
  KVM_TRANSLATION_LAYOUT,
  KVM_VCPU_EVENTS_LAYOUT,
  KVM_XCRS_LAYOUT,
  KVM_XSAVE_LAYOUT,
} from "./kvm_sys.ts";
import {
  type ClockData,
  type CpuidEntry,
  decodeClock,
  decodeCpuid2,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeClock,
  encodeCpuid2,
  encodeMemoryRegion,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  type MsrEntry,
  type Regs,
  type Sregs,
  type UserspaceMemoryRegion,
} from "./structs.ts";

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * The smallest memory slot {@link VmFd.setUserMemoryRegionAsync} hands to
 * another thread (1 GiB: there KVM's work, ~0.7 ms on this host, starts to
 * exceed the hand-off).
 */
export const ASYNC_SLOT_MIN_BYTES = 1 << 30;

/** `/dev/kvm`: system-wide queries and VM creation. */
export class Kvm implements Disposable {
  /** The open `/dev/kvm` fd. */
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens `/dev/kvm` (or `path`) and checks `KVM_GET_API_VERSION` is 12. */
  static open(path = "/dev/kvm"): Kvm {
    const fd = open(path, O.RDWR);
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new Error(`${path}: KVM API version ${version}, skiff needs ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  /** `KVM_GET_API_VERSION`. */
  apiVersion(): number {
    return ioctlValue(this.fd, KVM.KVM_GET_API_VERSION, "KVM_GET_API_VERSION", 0);
  }

  /** `KVM_CHECK_EXTENSION`: 0 when unsupported, else a capability-specific positive value. */
  checkExtension(cap: number): number {
    return ioctlValue(this.fd, KVM.KVM_CHECK_EXTENSION, `KVM_CHECK_EXTENSION(${cap})`, cap);
  }

  /** Throws naming the capability when {@link checkExtension} is 0. */
  requireExtension(cap: number, name: string): number {
    const v = this.checkExtension(cap);
    if (v <= 0) throw new Error(`KVM lacks capability KVM_CAP_${name} (${cap})`);
    return v;
  }

  /** `KVM_GET_VCPU_MMAP_SIZE`: bytes to mmap from a vCPU fd (kvm_run plus extra pages). */
  vcpuMmapSize(): number {
    return ioctlValue(this.fd, KVM.KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", 0);
  }

  /** `KVM_GET_SUPPORTED_CPUID` (grows the buffer on E2BIG). */
  supportedCpuid(): CpuidEntry[] {
    for (let cap = 64; cap <= 4096; cap *= 2) {
      const buf = encodeCpuid2([], cap);
      const r = libc.ioctl(this.fd, KVM.KVM_GET_SUPPORTED_CPUID, buf);
      if (r >= 0) return decodeCpuid2(buf);
      const e = errnoNow();
      if (e !== Errno.E2BIG) throw new SysError("KVM_GET_SUPPORTED_CPUID", e);
    }
    throw new SysError("KVM_GET_SUPPORTED_CPUID", Errno.E2BIG);
  }

  /** `KVM_GET_MSR_INDEX_LIST`: MSRs KVM saves/restores for a vCPU. */
  msrIndexList(): number[] {
    return this.#msrList(KVM.KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST");
  }

  #msrList(req: bigint, name: string): number[] {
    // First call with nmsrs = 0 reports the count (E2BIG), the second fills it.
    const probe = new Uint8Array(KVM_MSR_LIST_LAYOUT.size);
    const r = libc.ioctl(this.fd, req, probe);
    if (r < 0 && errnoNow() !== Errno.E2BIG) throw new SysError(name, errnoNow());
    const n = dv(probe).getUint32(0, true);
    const buf = new Uint8Array(KVM_MSR_LIST_LAYOUT.size + 4 * n);
    dv(buf).setUint32(0, n, true);
    ioctl(this.fd, req, name, buf);
    const got = dv(buf).getUint32(0, true);
    const out: number[] = [];
    for (let i = 0; i < got; i++) {
      out.push(dv(buf).getUint32(KVM_MSR_LIST_LAYOUT.fields.indices + 4 * i, true));
    }
    return out;
  }

  /**
   * `KVM_CREATE_VM` (default machine type). Retried when a signal interrupts
   * it (EINTR): the kernel's VM setup can be long enough for a profiler's
   * timer signal, or any other, to land in it.
   */
  createVm(): VmFd {
    for (let tries = 1;; tries++) {
      try {
        const fd = ioctlValue(this.fd, KVM.KVM_CREATE_VM, "KVM_CREATE_VM", 0);
        return new VmFd(fd, this.vcpuMmapSize());
      } catch (e) {
        if (!(e instanceof SysError && e.errno === Errno.EINTR) || tries >= 100) throw e;
      }
    }
  }

  /**
   * {@link createVm} with `KVM_CREATE_VM` on a thread-pool thread (KVM sets up
   * the VM's MMU and structures: ~0.2–0.4 ms here), for work made ahead of
   * need (hv/prepared_vm.ts). A failure is repeated synchronously to learn
   * its errno.
   */
  async createVmAsync(): Promise<VmFd> {
    const fd = await libc.ioctl_nb(this.fd, KVM.KVM_CREATE_VM, null);
    return fd >= 0 ? new VmFd(fd, this.vcpuMmapSize()) : this.createVm();
  }

  /** Closes `/dev/kvm`. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function errnoNow(): number {
  const p = libc.__errno_location();
  return new Deno.UnsafePointerView(p!).getInt32();
}

/** Raw VM-wide device state for snapshots (each field is the struct's bytes). */
export interface VmStateBytes {
  /** `struct kvm_irqchip` for PIC master, PIC slave and IOAPIC (absent without an irqchip). */
  irqchip?: { picMaster: Uint8Array; picSlave: Uint8Array; ioapic: Uint8Array };
  /** `struct kvm_pit_state2` (absent without a PIT). */
  pit2?: Uint8Array;
  /** `struct kvm_clock_data`. */
  clock: Uint8Array;
}

/** A VM fd: memory slots, interrupt controllers, vCPU creation. */
export class VmFd implements Disposable {
  /** The VM fd. */
  readonly fd: number;
  /** Bytes to mmap per vCPU (from `KVM_GET_VCPU_MMAP_SIZE`). */
  readonly vcpuMmapSize: number;
  #closed = false;

  constructor(fd: number, vcpuMmapSize: number) {
    this.fd = fd;
    this.vcpuMmapSize = vcpuMmapSize;
  }

  /** `KVM_CHECK_EXTENSION` on the VM fd (some answers are per VM). */
  checkExtension(cap: number): number {
    return ioctlValue(this.fd, KVM.KVM_CHECK_EXTENSION, `KVM_CHECK_EXTENSION(${cap})`, cap);
  }

  /** `KVM_ENABLE_CAP` with up to four u64 arguments. */
  enableCap(cap: number, args: readonly bigint[] = [], flags = 0): void {
    const buf = new Uint8Array(KVM_ENABLE_CAP_LAYOUT.size);
    const v = dv(buf);
    v.setUint32(KVM_ENABLE_CAP_LAYOUT.fields.cap, cap, true);
    v.setUint32(KVM_ENABLE_CAP_LAYOUT.fields.flags, flags, true);
    args.slice(0, 4).forEach((a, i) =>
      v.setBigUint64(KVM_ENABLE_CAP_LAYOUT.fields.args + 8 * i, a, true)
    );
    ioctl(this.fd, KVM.KVM_ENABLE_CAP, `KVM_ENABLE_CAP(${cap})`, buf);
  }

  /** `KVM_CREATE_VCPU` and mmap of its `kvm_run` area. */
  createVcpu(id: number): VcpuFd {
    const fd = ioctlValue(this.fd, KVM.KVM_CREATE_VCPU, "KVM_CREATE_VCPU", id);
    let run: Deno.PointerObject;
    try {
      run = mmap(this.vcpuMmapSize, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
    } catch (e) {
      close(fd);
      throw e;
    }
    const xsave2 = this.checkExtension(KVM_CAP.XSAVE2);
    return new VcpuFd(
      fd,
      id,
      run,
      this.vcpuMmapSize,
      xsave2 > KVM_XSAVE_LAYOUT.size ? xsave2 : 0,
      true,
    );
  }

  /** `KVM_SET_USER_MEMORY_REGION` (size 0 deletes the slot). */
  setUserMemoryRegion(region: UserspaceMemoryRegion): void {
    ioctl(
      this.fd,
      KVM.KVM_SET_USER_MEMORY_REGION,
      `KVM_SET_USER_MEMORY_REGION(slot ${region.slot} at 0x${region.guestPhysAddr.toString(16)})`,
      encodeMemoryRegion(region),
    );
  }

  /**
   * {@link setUserMemoryRegion} on a thread-pool thread: resolves when the
   * slot exists, so the caller can do other work meanwhile. Worth it for big
   * slots, for which KVM allocates and zeroes per-page metadata (with shadow
   * paging, as on this host: ~0.5 ms per GiB); a slot below `minBytes`
   * (default {@link ASYNC_SLOT_MIN_BYTES}) is made synchronously, since the
   * hand-off costs about as much (~0.3 ms) to a caller that waits for it
   * (0 sends every slot off this thread). Nothing else may use this VM fd
   * until it settles (VM-wide ioctls would wait for KVM's slots lock anyway).
   * A failure is repeated synchronously to learn its errno (a failed call
   * changed nothing).
   */
  async setUserMemoryRegionAsync(
    region: UserspaceMemoryRegion,
    minBytes = ASYNC_SLOT_MIN_BYTES,
  ): Promise<void> {
    if (region.memorySize < BigInt(minBytes)) return this.setUserMemoryRegion(region);
    const buf = encodeMemoryRegion(region);
    if (await libc.ioctl_nb(this.fd, KVM.KVM_SET_USER_MEMORY_REGION, buf) >= 0) return;
    this.setUserMemoryRegion(region);
  }

  /** `KVM_SET_TSS_ADDR`: three pages of guest-physical space KVM needs on Intel. */
  setTssAddr(addr: number): void {
    ioctlValue(this.fd, KVM.KVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", addr);
  }

  /** `KVM_SET_IDENTITY_MAP_ADDR`: one page for the real-mode identity map on Intel. */
  setIdentityMapAddr(addr: number): void {
    const buf = new Uint8Array(8);
    dv(buf).setBigUint64(0, BigInt(addr), true);
    ioctl(this.fd, KVM.KVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", buf);
  }

  /** `KVM_CREATE_IRQCHIP`: in-kernel PIC pair, IOAPIC and local APICs. */
  createIrqchip(): void {
    ioctlValue(this.fd, KVM.KVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP", 0);
  }

  /** `KVM_CREATE_PIT2` (flags: `KVM_PIT_SPEAKER_DUMMY`). */
  createPit2(flags = 0): void {
    const buf = new Uint8Array(KVM_PIT_CONFIG_LAYOUT.size);
    dv(buf).setUint32(0, flags, true);
    ioctl(this.fd, KVM.KVM_CREATE_PIT2, "KVM_CREATE_PIT2", buf);
  }

  /** `KVM_IRQ_LINE`: drive GSI `irq` to `level` (1 asserted, 0 deasserted). */
  irqLine(irq: number, level: number): void {
    const buf = new Uint8Array(KVM_IRQ_LEVEL_LAYOUT.size);
    const v = dv(buf);
    v.setUint32(KVM_IRQ_LEVEL_LAYOUT.fields.irq, irq, true);
    v.setUint32(KVM_IRQ_LEVEL_LAYOUT.fields.level, level, true);
    ioctl(this.fd, KVM.KVM_IRQ_LINE, `KVM_IRQ_LINE(${irq}, ${level})`, buf);
  }

  /** `KVM_GET_IRQCHIP`: the whole `struct kvm_irqchip` (520 bytes) of `chipId`. */
  getIrqchip(chipId: number): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(KVM_IRQCHIP_LAYOUT.size);
    dv(buf).setUint32(KVM_IRQCHIP_LAYOUT.fields.chip_id, chipId, true);
    ioctl(this.fd, KVM.KVM_GET_IRQCHIP, `KVM_GET_IRQCHIP(${chipId})`, buf);
    return buf;
  }

  /** `KVM_SET_IRQCHIP` from bytes returned by {@link getIrqchip} (its chip_id says which chip). */
  setIrqchip(bytes: Uint8Array): void {
    const buf = exact(bytes, KVM_IRQCHIP_LAYOUT.size, "kvm_irqchip");
    ioctl(this.fd, KVM.KVM_SET_IRQCHIP, `KVM_SET_IRQCHIP(${dv(buf).getUint32(0, true)})`, buf);
  }

  /** `KVM_GET_PIT2`: `struct kvm_pit_state2` bytes. */
  getPit2(): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(KVM_PIT_STATE2_LAYOUT.size);
    ioctl(this.fd, KVM.KVM_GET_PIT2, "KVM_GET_PIT2", buf);
    return buf;
  }

  /** `KVM_SET_PIT2`. */
  setPit2(bytes: Uint8Array): void {
    ioctl(
      this.fd,
      KVM.KVM_SET_PIT2,
      "KVM_SET_PIT2",
      exact(bytes, KVM_PIT_STATE2_LAYOUT.size, "kvm_pit_state2"),
    );
  }

  /** `KVM_GET_CLOCK` as raw bytes. */
  getClockBytes(): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(KVM_CLOCK_DATA_LAYOUT.size);
    ioctl(this.fd, KVM.KVM_GET_CLOCK, "KVM_GET_CLOCK", buf);
    return buf;
  }

  /** `KVM_SET_CLOCK` from raw bytes. */
  setClockBytes(bytes: Uint8Array): void {
    ioctl(
      this.fd,
      KVM.KVM_SET_CLOCK,
      "KVM_SET_CLOCK",
      exact(bytes, KVM_CLOCK_DATA_LAYOUT.size, "kvm_clock_data"),
    );
  }

  /** `KVM_GET_CLOCK` decoded. */
  getClock(): ClockData {
    return decodeClock(this.getClockBytes());
  }

  /** `KVM_SET_CLOCK` (only `clock`, and `realtime` when its flag is set, are used by KVM). */
  setClock(c: ClockData): void {
    this.setClockBytes(encodeClock(c));
  }

  /** `KVM_IRQFD`: writing 1 to eventfd `fd` raises GSI `gsi` (edge). */
  irqfd(fd: number, gsi: number, opts: { deassign?: boolean; resampleFd?: number } = {}): void {
    const buf = new Uint8Array(KVM_IRQFD_LAYOUT.size);
    const v = dv(buf);
    let flags = 0;
    if (opts.deassign) flags |= KVM_IRQFD_FLAG.DEASSIGN;
    if (opts.resampleFd !== undefined) {
      flags |= KVM_IRQFD_FLAG.RESAMPLE;
      v.setUint32(KVM_IRQFD_LAYOUT.fields.resamplefd, opts.resampleFd, true);
    }
    v.setUint32(KVM_IRQFD_LAYOUT.fields.fd, fd, true);
    v.setUint32(KVM_IRQFD_LAYOUT.fields.gsi, gsi, true);
    v.setUint32(KVM_IRQFD_LAYOUT.fields.flags, flags, true);
    ioctl(this.fd, KVM.KVM_IRQFD, `KVM_IRQFD(fd ${fd}, gsi ${gsi})`, buf);
  }

  /**
   * `KVM_IOEVENTFD`: a guest write of `len` bytes to `addr` (MMIO, or port I/O
   * when `pio`) signals eventfd `fd` in the kernel without exiting to userspace;
   * `datamatch` restricts it to that value.
   */
  ioeventfd(
    fd: number,
    addr: number,
    len: number,
    opts: { pio?: boolean; datamatch?: bigint; deassign?: boolean } = {},
  ): void {
    const buf = new Uint8Array(KVM_IOEVENTFD_LAYOUT.size);
    const v = dv(buf);
    const f = KVM_IOEVENTFD_LAYOUT.fields;
    let flags = 0;
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG.PIO;
    if (opts.deassign) flags |= KVM_IOEVENTFD_FLAG.DEASSIGN;
    if (opts.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG.DATAMATCH;
      v.setBigUint64(f.datamatch, opts.datamatch, true);
    }
    v.setBigUint64(f.addr, BigInt(addr), true);
    v.setUint32(f.len, len, true);
    v.setInt32(f.fd, fd, true);
    v.setUint32(f.flags, flags, true);
    ioctl(this.fd, KVM.KVM_IOEVENTFD, `KVM_IOEVENTFD(fd ${fd}, addr 0x${addr.toString(16)})`, buf);
  }

  /**
   * Captures irqchip (when `irqchip`), PIT (when `pit`) and clock state as raw
   * structs. Call with every vCPU paused.
   */
  saveState(opts: { irqchip: boolean; pit: boolean }): VmStateBytes {
    const out: VmStateBytes = { clock: this.getClockBytes() };
    if (opts.irqchip) {
      out.irqchip = {
        picMaster: this.getIrqchip(KVM_IRQCHIP.PIC_MASTER),
        picSlave: this.getIrqchip(KVM_IRQCHIP.PIC_SLAVE),
        ioapic: this.getIrqchip(KVM_IRQCHIP.IOAPIC),
      };
    }
    if (opts.pit) out.pit2 = this.getPit2();
    return out;
  }

  /** Restores what {@link saveState} captured (irqchip and PIT must already exist). */
  restoreState(s: VmStateBytes): void {
    if (s.pit2) this.setPit2(s.pit2);
    this.setClockBytes(s.clock);
    if (s.irqchip) {
      this.setIrqchip(s.irqchip.picMaster);
      this.setIrqchip(s.irqchip.picSlave);
      this.setIrqchip(s.irqchip.ioapic);
    }
  }

  /** Closes the VM fd. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function exact(bytes: Uint8Array, size: number, what: string): Uint8Array<ArrayBuffer> {
  if (bytes.byteLength !== size) {
    throw new RangeError(`${what}: expected ${size} bytes, got ${bytes.byteLength}`);
  }
  const copy = new Uint8Array(size);
  copy.set(bytes);
  return copy;
}

/** Raw vCPU state for snapshots: each field is the bytes of the named KVM struct. */
export interface VcpuStateBytes {
  /** `struct kvm_regs`. */
  regs: Uint8Array;
  /** `struct kvm_sregs`. */
  sregs: Uint8Array;
  /** `struct kvm_fpu` (kept in addition to XSAVE so a host without XSAVE restores). */
  fpu: Uint8Array;
  /** `struct kvm_xsave` (4096 bytes, or more from KVM_GET_XSAVE2); absent without KVM_CAP_XSAVE. */
  xsave?: Uint8Array;
  /** `struct kvm_xcrs`; absent without KVM_CAP_XCRS. */
  xcrs?: Uint8Array;
  /** `struct kvm_msrs` with every MSR that could be read. */
  msrs: Uint8Array;
  /** `struct kvm_lapic_state`; absent without an in-kernel irqchip. */
  lapic?: Uint8Array;
  /** `struct kvm_vcpu_events`. */
  vcpuEvents: Uint8Array;
  /** `struct kvm_mp_state`. */
  mpState: Uint8Array;
  /** `struct kvm_debugregs`. */
  debugregs: Uint8Array;
}

/** A vCPU fd and its mmap'd `kvm_run`. */
export class VcpuFd implements Disposable {
  /** The vCPU fd. */
  readonly fd: number;
  /** The vCPU id given to KVM_CREATE_VCPU. */
  readonly id: number;
  /** Host address of the mmap'd `kvm_run`. */
  readonly runPtr: Deno.PointerObject;
  /** Length of that mapping. */
  readonly runSize: number;
  /** Zero-copy bytes of `kvm_run`. */
  readonly run: Uint8Array<ArrayBuffer>;
  /** Size of the XSAVE area when larger than 4096 (KVM_GET_XSAVE2), else 0. */
  readonly xsave2Size: number;
  #owner: boolean;
  #closed = false;

  /**
   * @param owner whether this object closes the fd and unmaps `kvm_run` on dispose
   *   (false for views re-created in a Worker by {@link fromRaw})
   */
  constructor(
    fd: number,
    id: number,
    runPtr: Deno.PointerObject,
    runSize: number,
    xsave2Size: number,
    owner: boolean,
  ) {
    this.fd = fd;
    this.id = id;
    this.runPtr = runPtr;
    this.runSize = runSize;
    this.run = viewAt(runPtr, runSize);
    this.xsave2Size = xsave2Size;
    this.#owner = owner;
  }

  /** What another thread needs to re-create this object with {@link fromRaw}. */
  toRaw(): RawVcpu {
    return {
      fd: this.fd,
      id: this.id,
      runAddr: Deno.UnsafePointer.value(this.runPtr) as bigint,
      runSize: this.runSize,
      xsave2Size: this.xsave2Size,
    };
  }

  /** A non-owning view of a vCPU created elsewhere in this process. */
  static fromRaw(raw: RawVcpu): VcpuFd {
    const p = Deno.UnsafePointer.create(BigInt(raw.runAddr));
    if (p === null) throw new Error("VcpuFd.fromRaw: null kvm_run address");
    return new VcpuFd(raw.fd, raw.id, p, raw.runSize, raw.xsave2Size, false);
  }

  #get(req: bigint, name: string, size: number): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(size);
    ioctl(this.fd, req, name, buf);
    return buf;
  }

  #set(req: bigint, name: string, bytes: Uint8Array, size: number, what: string): void {
    ioctl(this.fd, req, name, exact(bytes, size, what));
  }

  /** `KVM_GET_REGS`. */
  getRegs(): Regs {
    return decodeRegs(this.#get(KVM.KVM_GET_REGS, "KVM_GET_REGS", KVM_REGS_LAYOUT.size));
  }
  /** `KVM_SET_REGS`. */
  setRegs(regs: Regs): void {
    ioctl(this.fd, KVM.KVM_SET_REGS, "KVM_SET_REGS", encodeRegs(regs));
  }
  /** `KVM_GET_SREGS`. */
  getSregs(): Sregs {
    return decodeSregs(this.#get(KVM.KVM_GET_SREGS, "KVM_GET_SREGS", KVM_SREGS_LAYOUT.size));
  }
  /** `KVM_SET_SREGS`. */
  setSregs(sregs: Sregs): void {
    ioctl(this.fd, KVM.KVM_SET_SREGS, "KVM_SET_SREGS", encodeSregs(sregs));
  }
  /** `KVM_GET_FPU` bytes. */
  getFpu(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.KVM_GET_FPU, "KVM_GET_FPU", KVM_FPU_LAYOUT.size);
  }
  /** `KVM_SET_FPU`. */
  setFpu(bytes: Uint8Array): void {
    this.#set(KVM.KVM_SET_FPU, "KVM_SET_FPU", bytes, KVM_FPU_LAYOUT.size, "kvm_fpu");
  }
  /** `KVM_GET_XSAVE` (or `KVM_GET_XSAVE2` when the area is larger than 4 KiB). */
  getXsave(): Uint8Array<ArrayBuffer> {
    if (this.xsave2Size > 0) {
      return this.#get(KVM.KVM_GET_XSAVE2, "KVM_GET_XSAVE2", this.xsave2Size);
    }
    return this.#get(KVM.KVM_GET_XSAVE, "KVM_GET_XSAVE", KVM_XSAVE_LAYOUT.size);
  }
  /** `KVM_SET_XSAVE` (accepts a 4 KiB area or the larger KVM_GET_XSAVE2 one). */
  setXsave(bytes: Uint8Array): void {
    if (bytes.byteLength < KVM_XSAVE_LAYOUT.size) {
      throw new RangeError(`kvm_xsave: expected at least 4096 bytes, got ${bytes.byteLength}`);
    }
    ioctl(this.fd, KVM.KVM_SET_XSAVE, "KVM_SET_XSAVE", exact(bytes, bytes.byteLength, "kvm_xsave"));
  }
  /** `KVM_GET_XCRS` bytes. */
  getXcrs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.KVM_GET_XCRS, "KVM_GET_XCRS", KVM_XCRS_LAYOUT.size);
  }
  /** `KVM_SET_XCRS`. */
  setXcrs(bytes: Uint8Array): void {
    this.#set(KVM.KVM_SET_XCRS, "KVM_SET_XCRS", bytes, KVM_XCRS_LAYOUT.size, "kvm_xcrs");
  }
  /** `KVM_GET_LAPIC` bytes (needs the in-kernel irqchip). */
  getLapic(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.KVM_GET_LAPIC, "KVM_GET_LAPIC", KVM_LAPIC_STATE_LAYOUT.size);
  }
  /** `KVM_SET_LAPIC`. */
  setLapic(bytes: Uint8Array): void {
    this.#set(
      KVM.KVM_SET_LAPIC,
      "KVM_SET_LAPIC",
      bytes,
      KVM_LAPIC_STATE_LAYOUT.size,
      "kvm_lapic_state",
    );
  }
  /** `KVM_GET_VCPU_EVENTS` bytes. */
  getVcpuEvents(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", KVM_VCPU_EVENTS_LAYOUT.size);
  }
  /** `KVM_SET_VCPU_EVENTS`. */
  setVcpuEvents(bytes: Uint8Array): void {
    this.#set(
      KVM.KVM_SET_VCPU_EVENTS,
      "KVM_SET_VCPU_EVENTS",
      bytes,
      KVM_VCPU_EVENTS_LAYOUT.size,
      "kvm_vcpu_events",
    );
  }
  /** `KVM_GET_MP_STATE` (a `KVM_MP_STATE_*` value). */
  getMpState(): number {
    return dv(this.#get(KVM.KVM_GET_MP_STATE, "KVM_GET_MP_STATE", KVM_MP_STATE_LAYOUT.size))
      .getUint32(0, true);
  }
  /** `KVM_SET_MP_STATE`. */
  setMpState(state: number): void {
    const buf = new Uint8Array(KVM_MP_STATE_LAYOUT.size);
    dv(buf).setUint32(0, state, true);
    ioctl(this.fd, KVM.KVM_SET_MP_STATE, "KVM_SET_MP_STATE", buf);
  }
  /** `KVM_GET_DEBUGREGS` bytes. */
  getDebugregs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", KVM_DEBUGREGS_LAYOUT.size);
  }
  /** `KVM_SET_DEBUGREGS`. */
  setDebugregs(bytes: Uint8Array): void {
    this.#set(
      KVM.KVM_SET_DEBUGREGS,
      "KVM_SET_DEBUGREGS",
      bytes,
      KVM_DEBUGREGS_LAYOUT.size,
      "kvm_debugregs",
    );
  }

  /**
   * `KVM_GET_MSRS` for `indices`. KVM stops at the first MSR it cannot read;
   * those are skipped, so the result may be shorter than `indices`.
   */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const out: MsrEntry[] = [];
    let rest = indices.slice();
    while (rest.length > 0) {
      const buf = encodeMsrs(rest.map((index) => ({ index, data: 0n })));
      const n = check("KVM_GET_MSRS", libc.ioctl(this.fd, KVM.KVM_GET_MSRS, buf));
      out.push(...decodeMsrs(buf, n));
      rest = rest.slice(n + 1); // skip the unreadable one
    }
    return out;
  }

  /** `KVM_SET_MSRS`; throws naming the first MSR KVM refused. */
  setMsrs(entries: readonly MsrEntry[]): void {
    if (entries.length === 0) return;
    const n = check("KVM_SET_MSRS", libc.ioctl(this.fd, KVM.KVM_SET_MSRS, encodeMsrs(entries)));
    if (n !== entries.length) {
      throw new Error(
        `KVM_SET_MSRS refused MSR 0x${
          entries[n].index.toString(16)
        } (set ${n} of ${entries.length})`,
      );
    }
  }

  /** `KVM_SET_CPUID2`. */
  setCpuid2(entries: readonly CpuidEntry[]): void {
    ioctl(this.fd, KVM.KVM_SET_CPUID2, "KVM_SET_CPUID2", encodeCpuid2(entries));
  }

  /** `KVM_TRANSLATE`: guest-virtual to guest-physical under the vCPU's current paging, or null. */
  translate(gva: bigint): bigint | null {
    const buf = new Uint8Array(KVM_TRANSLATION_LAYOUT.size);
    dv(buf).setBigUint64(KVM_TRANSLATION_LAYOUT.fields.linear_address, gva, true);
    ioctl(this.fd, KVM.KVM_TRANSLATE, "KVM_TRANSLATE", buf);
    if (buf[KVM_TRANSLATION_LAYOUT.fields.valid] === 0) return null;
    return dv(buf).getBigUint64(KVM_TRANSLATION_LAYOUT.fields.physical_address, true);
  }

  /**
   * Captures every piece of vCPU state a snapshot needs, as raw structs.
   * The vCPU must not be inside KVM_RUN (pause it first).
   *
   * @param msrIndices MSRs to save (usually {@link Kvm.msrIndexList})
   * @param opts which optional state exists on this VM/host
   */
  saveState(
    msrIndices: readonly number[],
    opts: { lapic: boolean; xsave: boolean; xcrs: boolean },
  ): VcpuStateBytes {
    // Order after Firecracker: MP state first (it may flush pending events), events last.
    const mpState = this.#get(KVM.KVM_GET_MP_STATE, "KVM_GET_MP_STATE", KVM_MP_STATE_LAYOUT.size);
    const s: VcpuStateBytes = {
      mpState,
      regs: this.#get(KVM.KVM_GET_REGS, "KVM_GET_REGS", KVM_REGS_LAYOUT.size),
      sregs: this.#get(KVM.KVM_GET_SREGS, "KVM_GET_SREGS", KVM_SREGS_LAYOUT.size),
      fpu: this.getFpu(),
      msrs: encodeMsrs(this.getMsrs(msrIndices)),
      debugregs: this.getDebugregs(),
      vcpuEvents: new Uint8Array(0),
    };
    if (opts.xsave) s.xsave = this.getXsave();
    if (opts.xcrs) s.xcrs = this.getXcrs();
    if (opts.lapic) s.lapic = this.getLapic();
    s.vcpuEvents = this.getVcpuEvents();
    return s;
  }

  /** Restores what {@link saveState} captured (CPUID must be set before, if wanted). */
  restoreState(s: VcpuStateBytes): void {
    this.#set(KVM.KVM_SET_SREGS, "KVM_SET_SREGS", s.sregs, KVM_SREGS_LAYOUT.size, "kvm_sregs");
    this.setMsrs(decodeMsrs(s.msrs));
    this.#set(KVM.KVM_SET_REGS, "KVM_SET_REGS", s.regs, KVM_REGS_LAYOUT.size, "kvm_regs");
    if (s.xsave) this.setXsave(s.xsave);
    else this.setFpu(s.fpu);
    if (s.xcrs) this.setXcrs(s.xcrs);
    this.setDebugregs(s.debugregs);
    if (s.lapic) this.setLapic(s.lapic);
    this.#set(
      KVM.KVM_SET_MP_STATE,
      "KVM_SET_MP_STATE",
      s.mpState,
      KVM_MP_STATE_LAYOUT.size,
      "kvm_mp_state",
    );
    this.setVcpuEvents(s.vcpuEvents);
  }

  /** Unmaps `kvm_run` and closes the fd (only when this object owns them). Idempotent. */
  close(): void {
    if (this.#closed || !this.#owner) return;
    this.#closed = true;
    munmap(this.runPtr, this.runSize);
    close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A vCPU as plain data that can be posted to a Worker. */
export interface RawVcpu {
  fd: number;
  id: number;
  /** Host address of `kvm_run`. */
  runAddr: bigint;
  runSize: number;
  xsave2Size: number;
}
