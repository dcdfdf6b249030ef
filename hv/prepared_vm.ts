/**
 * A VM made ahead of need: `/dev/kvm` open, `KVM_CREATE_VM` done and the
 * memory slots registered, nothing else. On this host's shadow-paging KVM a
 * slot costs ~0.5 ms per GiB (KVM allocates and zeroes per-page metadata), so
 * a process that restores one VM after another makes the next one while the
 * current one runs (snapshot/restore_pool.ts) and builds it with
 * `Vm.fromPrepared`.
 *
 * @module
 */

import { Kvm, type VmFd } from "../kvm_ffi/kvm.ts";
import type { UserspaceMemoryRegion } from "../kvm_ffi/structs.ts";
import type { MemoryRegion, RegionMemory } from "./memory.ts";

/** A VM with its memory slots, not yet run. */
export interface PreparedVm {
  /** The open `/dev/kvm`. */
  kvm: Kvm;
  /** The VM fd; `slots` are registered, nothing else is set. */
  vm: VmFd;
  /** The slots, as registered. */
  slots: readonly UserspaceMemoryRegion[];
  /** The KVM device it was made on. */
  kvmPath: string;
}

/** `KVM_SET_USER_MEMORY_REGION` for `r` as slot `slot`; `r` must be mmap-backed. */
export function regionSlot(r: MemoryRegion, slot: number): UserspaceMemoryRegion {
  if (!r.hostPtr) {
    throw new Error(
      `guest region at 0x${r.guestAddr.toString(16)} is not mmap-backed; use RegionMemory.memfd`,
    );
  }
  return {
    slot,
    flags: 0,
    guestPhysAddr: BigInt(r.guestAddr),
    memorySize: BigInt(r.size),
    userspaceAddr: Deno.UnsafePointer.value(r.hostPtr) as bigint,
  };
}

/** The slots a new VM over `memory` gets: slot i for its region i (`Vm.create`'s order). */
export function memorySlots(memory: RegionMemory): UserspaceMemoryRegion[] {
  return memory.regions.map((r, i) => regionSlot(r, i));
}

/** Closes a prepared VM nobody took (both fds, even if the first close fails). */
export function closePrepared(p: PreparedVm): void {
  try {
    p.vm.close();
  } finally {
    p.kvm.close();
  }
}

/**
 * Opens KVM, creates a VM and registers `slots`, each step off this thread
 * (`KVM_CREATE_VM` and every slot on thread-pool threads).
 */
export async function prepareVmAsync(
  slots: readonly UserspaceMemoryRegion[],
  kvmPath = "/dev/kvm",
): Promise<PreparedVm> {
  const kvm = Kvm.open(kvmPath);
  let vm: VmFd | null = null;
  try {
    vm = await kvm.createVmAsync();
    for (const s of slots) await vm.setUserMemoryRegionAsync(s, 0);
    return { kvm, vm, slots, kvmPath };
  } catch (e) {
    vm?.close();
    kvm.close();
    throw e;
  }
}

/** Whether two slot lists are the same slots (index, flags, guest range, host address). */
export function sameSlots(
  a: readonly UserspaceMemoryRegion[],
  b: readonly UserspaceMemoryRegion[],
): boolean {
  return a.length === b.length &&
    a.every((x, i) =>
      x.slot === b[i].slot && x.flags === b[i].flags && x.guestPhysAddr === b[i].guestPhysAddr &&
      x.memorySize === b[i].memorySize && x.userspaceAddr === b[i].userspaceAddr
    );
}
