/**
 * KVM machine state for snapshots: VM-wide state (irqchip, PIT, clock) and
 * every vCPU's state, as the raw structs stored in `state.json`, captured
 * and restored through the `kvm_ffi` fd classes.
 *
 * Ordering (after Firecracker's `vcpu.rs`, which documents the KVM pitfalls):
 * - Before saving, every vCPU must be out of `KVM_RUN` with any pending I/O
 *   completed ({@link completePendingIo}): after an I/O exit the instruction
 *   is finished only when `KVM_RUN` is entered again.
 * - Save: `KVM_GET_MP_STATE` first (it may flush pending LAPIC events), vCPU
 *   events last (`VcpuFd.saveState` does this).
 * - Restore the VM first: PIT, clock, then PIC master, PIC slave, IOAPIC.
 * - Restore each vCPU: CPUID (the table it booted with), MP state, regs, sregs (restores the APIC base MSR),
 *   XSAVE (or FPU), XCRs, debug registers, LAPIC (after sregs), MSRs (after
 *   the LAPIC: the TSC-deadline MSR only sticks once the LAPIC is set up),
 *   vCPU events last (`KVM_SET_REGS` clears pending exceptions, the events
 *   bring them back).
 *
 * `VcpuFd.restoreState` sets MSRs before the LAPIC, which loses
 * `IA32_TSC_DEADLINE`, so this module has its own restore sequence.
 *
 * @module
 */

import type { Kvm, VcpuFd, VcpuStateBytes, VmFd, VmStateBytes } from "../kvm_ffi/kvm.ts";
import {
  KVM,
  KVM_CAP,
  KVM_CLOCK_DATA_LAYOUT,
  KVM_CPUID2_LAYOUT,
  KVM_CPUID_ENTRY2_LAYOUT,
  KVM_MP_STATE_LAYOUT,
  KVM_MSR_ENTRY_LAYOUT,
  KVM_MSRS_LAYOUT,
  KVM_REGS_LAYOUT,
  KVM_RUN_LAYOUT,
  KVM_SREGS_LAYOUT,
} from "../kvm_ffi/kvm_sys.ts";
import { errno, ioctl, libc, SysError } from "../kvm_ffi/libc.ts";
import { encodeCpuid2 } from "../kvm_ffi/structs.ts";
import { SnapshotError } from "./errors.ts";
import type { RawState } from "./format.ts";

/** errno of a KVM_RUN interrupted by `immediate_exit` or a signal. */
const EINTR = 4;

/** Which optional in-kernel devices and features the VM has. */
export interface KvmFeatures {
  /** `KVM_CREATE_IRQCHIP` was called (PIC, IOAPIC, LAPICs). */
  irqchip: boolean;
  /** `KVM_CREATE_PIT2` was called. */
  pit: boolean;
  /** `KVM_CAP_XSAVE`. */
  xsave: boolean;
  /** `KVM_CAP_XCRS`. */
  xcrs: boolean;
}

/** Detects XSAVE/XCRS support; the caller says whether irqchip and PIT exist. */
export function detectFeatures(kvm: Kvm, vm: { irqchip: boolean; pit: boolean }): KvmFeatures {
  return {
    irqchip: vm.irqchip,
    pit: vm.pit,
    xsave: kvm.checkExtension(KVM_CAP.XSAVE) > 0,
    xcrs: kvm.checkExtension(KVM_CAP.XCRS) > 0,
  };
}

/**
 * Finishes whatever the last exit left pending (the rest of an `out`/`in`
 * or MMIO instruction) without running guest code: `KVM_RUN` with
 * `immediate_exit` set returns `EINTR` at once after completing it. For an
 * `in` or MMIO read the exit's data must already be filled in.
 */
export function completePendingIo(vcpu: VcpuFd): void {
  const at = KVM_RUN_LAYOUT.fields.immediate_exit;
  vcpu.run[at] = 1;
  try {
    const r = libc.ioctl_val(vcpu.fd, KVM.KVM_RUN, 0n);
    if (r < 0) {
      const e = errno();
      if (e !== EINTR) throw new SysError("KVM_RUN(immediate_exit)", e);
    }
  } finally {
    vcpu.run[at] = 0;
  }
}

/** Byte offset of `flags` in `struct kvm_clock_data`. */
const CLOCK_FLAGS = KVM_CLOCK_DATA_LAYOUT.fields.flags;

/** VM-wide state as raw structs: `pic_master`, `pic_slave`, `ioapic`, `pit2`, `clock`. */
export function saveVmState(vm: VmFd, features: KvmFeatures): RawState {
  const s = vm.saveState({ irqchip: features.irqchip, pit: features.pit });
  // Clear the clock flags (as Firecracker): KVM_CLOCK_REALTIME would make the
  // restored clock jump by the wall time since capture, and KVM_SET_CLOCK
  // rejects flags it does not know.
  new DataView(s.clock.buffer, s.clock.byteOffset).setUint32(CLOCK_FLAGS, 0, true);
  const out: RawState = { clock: s.clock };
  if (s.irqchip) {
    out.pic_master = s.irqchip.picMaster;
    out.pic_slave = s.irqchip.picSlave;
    out.ioapic = s.irqchip.ioapic;
  }
  if (s.pit2) out.pit2 = s.pit2;
  return out;
}

/** Restores {@link saveVmState}'s result (irqchip and PIT must exist when saved with them). */
export function restoreVmState(vm: VmFd, state: RawState, path: string): void {
  const s: VmStateBytes = { clock: need(state, "clock", path) };
  if (state.pic_master || state.pic_slave || state.ioapic) {
    s.irqchip = {
      picMaster: need(state, "pic_master", path),
      picSlave: need(state, "pic_slave", path),
      ioapic: need(state, "ioapic", path),
    };
  }
  if (state.pit2) s.pit2 = state.pit2;
  vm.restoreState(s);
}

/**
 * One vCPU's state as raw structs: `regs`, `sregs`, `fpu`, `xsave`, `xcrs`,
 * `msrs` (`struct kvm_msrs` with every readable MSR of `msrIndices`),
 * `lapic`, `events`, `mp_state`, `debugregs`, `cpuid` (when KVM reports it). The vCPU must be paused with
 * pending I/O completed.
 */
export function saveVcpuState(
  vcpu: VcpuFd,
  msrIndices: readonly number[],
  features: KvmFeatures,
): RawState {
  const s = vcpu.saveState(msrIndices, {
    lapic: features.irqchip,
    xsave: features.xsave,
    xcrs: features.xcrs,
  });
  const out: RawState = {
    mp_state: s.mpState,
    regs: s.regs,
    sregs: s.sregs,
    fpu: s.fpu,
    msrs: s.msrs,
    debugregs: s.debugregs,
    events: s.vcpuEvents,
  };
  if (s.xsave) out.xsave = s.xsave;
  if (s.xcrs) out.xcrs = s.xcrs;
  if (s.lapic) out.lapic = s.lapic;
  const cpuid = getVcpuCpuid(vcpu);
  if (cpuid) out.cpuid = cpuid;
  return out;
}

/** errno when the buffer is too small for KVM_GET_CPUID2. */
const E2BIG = 7;

/**
 * `KVM_GET_CPUID2`: the CPUID table the vCPU was given, as raw
 * `struct kvm_cpuid2` (with exactly `nent` entries), or null when KVM cannot
 * report it. Saved so a restored guest sees the CPUID it booted with.
 */
export function getVcpuCpuid(vcpu: VcpuFd): Uint8Array | null {
  const entry = KVM_CPUID_ENTRY2_LAYOUT.size;
  for (let cap = 64; cap <= 4096; cap *= 2) {
    const buf = encodeCpuid2([], cap);
    if (libc.ioctl(vcpu.fd, KVM.KVM_GET_CPUID2, buf) >= 0) {
      const n = new DataView(buf.buffer).getUint32(KVM_CPUID2_LAYOUT.fields.nent, true);
      const out = buf.slice(0, KVM_CPUID2_LAYOUT.size + n * entry);
      new DataView(out.buffer).setUint32(KVM_CPUID2_LAYOUT.fields.nent, n, true);
      return n > 0 ? out : null;
    }
    if (errno() !== E2BIG) return null;
  }
  return null;
}

/** Restores {@link saveVcpuState}'s result in Firecracker's order (see the module doc). */
export function restoreVcpuState(vcpu: VcpuFd, state: RawState, path: string): void {
  const s: VcpuStateBytes = {
    mpState: need(state, "mp_state", path),
    regs: need(state, "regs", path),
    sregs: need(state, "sregs", path),
    fpu: need(state, "fpu", path),
    msrs: need(state, "msrs", path),
    debugregs: need(state, "debugregs", path),
    vcpuEvents: need(state, "events", path),
    xsave: state.xsave,
    xcrs: state.xcrs,
    lapic: state.lapic,
  };
  // CPUID first (Firecracker): other SET ioctls (XSAVE, MSRs) are checked against it.
  if (state.cpuid) {
    const c = state.cpuid;
    const n = c.byteLength >= 8 ? new DataView(c.buffer, c.byteOffset).getUint32(0, true) : -1;
    if (c.byteLength !== KVM_CPUID2_LAYOUT.size + n * KVM_CPUID_ENTRY2_LAYOUT.size) {
      throw new SnapshotError("corrupt", path, `cpuid: ${c.byteLength} bytes for ${n} entries`);
    }
    ioctl(vcpu.fd, KVM.KVM_SET_CPUID2, "KVM_SET_CPUID2", new Uint8Array(c));
  }
  setRaw(vcpu, KVM.KVM_SET_MP_STATE, "KVM_SET_MP_STATE", s.mpState, KVM_MP_STATE_LAYOUT.size);
  setRaw(vcpu, KVM.KVM_SET_REGS, "KVM_SET_REGS", s.regs, KVM_REGS_LAYOUT.size);
  setRaw(vcpu, KVM.KVM_SET_SREGS, "KVM_SET_SREGS", s.sregs, KVM_SREGS_LAYOUT.size);
  if (s.xsave) vcpu.setXsave(s.xsave);
  else vcpu.setFpu(s.fpu);
  if (s.xcrs) vcpu.setXcrs(s.xcrs);
  vcpu.setDebugregs(s.debugregs);
  if (s.lapic) vcpu.setLapic(s.lapic);
  setRawMsrs(vcpu, s.msrs, path);
  vcpu.setVcpuEvents(s.vcpuEvents);
}

/**
 * `KVM_SET_MSRS` with the saved `struct kvm_msrs` bytes as they are (a copy,
 * checked for its exact size): decoding every entry to an object and encoding
 * it back cost ~0.2 ms of a fresh process's restore. KVM returns how many
 * entries it set; fewer than all is an error naming the refused MSR.
 */
function setRawMsrs(vcpu: VcpuFd, saved: Uint8Array, path: string): void {
  const buf = new Uint8Array(saved); // copied once, then checked and used
  const v = new DataView(buf.buffer);
  const n = buf.byteLength >= KVM_MSRS_LAYOUT.size
    ? v.getUint32(KVM_MSRS_LAYOUT.fields.nmsrs, true)
    : -1;
  if (buf.byteLength !== KVM_MSRS_LAYOUT.size + n * KVM_MSR_ENTRY_LAYOUT.size) {
    throw new SnapshotError("corrupt", path, `msrs: ${buf.byteLength} bytes for ${n} entries`);
  }
  if (n === 0) return;
  const set = ioctl(vcpu.fd, KVM.KVM_SET_MSRS, "KVM_SET_MSRS", buf);
  if (set !== n) {
    const at = KVM_MSRS_LAYOUT.fields.entries + set * KVM_MSR_ENTRY_LAYOUT.size;
    const index = v.getUint32(at + KVM_MSR_ENTRY_LAYOUT.fields.index, true);
    throw new Error(`KVM_SET_MSRS refused MSR 0x${index.toString(16)} (set ${set} of ${n})`);
  }
}

/** A `KVM_SET_*` ioctl with raw struct bytes of exactly `size`. */
function setRaw(vcpu: VcpuFd, req: bigint, name: string, bytes: Uint8Array, size: number): void {
  if (bytes.byteLength !== size) {
    throw new RangeError(`${name}: expected ${size} bytes, got ${bytes.byteLength}`);
  }
  ioctl(vcpu.fd, req, name, new Uint8Array(bytes));
}

function need(state: RawState, key: string, path: string): Uint8Array {
  const v = state[key];
  if (!(v instanceof Uint8Array)) {
    throw new SnapshotError("corrupt", path, `state.json: missing KVM state part '${key}'`);
  }
  return v;
}
