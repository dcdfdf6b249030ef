/**
 * Snapshots of `hv/` VMs ({@link Vm}: one Worker per vCPU).
 *
 * Capture: the VM must be paused (`await vm.pause()`). A paused vCPU Worker
 * may have stopped right after handling an I/O exit, before re-entering
 * `KVM_RUN`, so the instruction is not finished yet; capture completes it
 * first ({@link completePendingIo} on each vCPU fd), then saves KVM state,
 * the devices' state and memory. The VM can be resumed afterwards.
 *
 * Restore: {@link restoreHvVm} maps the snapshot memory copy-on-write and
 * calls the caller's `build` to create the {@link Vm} over it (its devices,
 * vCPUs and CPUID — everything a cold boot creates, without loading a
 * kernel), then sets VM, vCPU and device state. The caller starts it with
 * `vm.start()`.
 *
 * Devices living in vCPU Workers keep their state in SharedArrayBuffers, so
 * their {@link Persist} adapters run on the main thread while the VM is
 * paused (capture) or not yet started (restore).
 *
 * @module
 */

import type { Vm } from "../hv/vm.ts";
import type { StateValue } from "./codec.ts";
import { completePendingIo, detectFeatures } from "./kvm_state.ts";
import type { PublishResult } from "./store.ts";
import {
  captureVm,
  type MachineParts,
  type Persist,
  type RestoreContext,
  restoreVm,
  saveableMsrs,
} from "./vm_snapshot.ts";

/** The {@link MachineParts} view of an hv {@link Vm}. */
export function hvMachineParts(
  vm: Vm,
  devices: ReadonlyMap<string, Persist> = new Map(),
): MachineParts {
  return {
    vm: vm.fd,
    vcpus: vm.vcpus.map((v) => v.fd),
    memory: { regions: vm.memory.flatMap((m) => m.regions) },
    features: detectFeatures(vm.kvm, { irqchip: vm.irqchip, pit: vm.pit }),
    msrIndices: saveableMsrs(vm.kvm),
    devices,
  };
}

/** Options of {@link captureHvVm}. */
export interface HvCaptureOptions {
  /** Device state adapters by id. */
  devices?: ReadonlyMap<string, Persist>;
  /** What the VM was built from (shown by `skiff snapshot list`). */
  source?: Record<string, StateValue>;
}

/**
 * Captures a paused hv VM into snapshot directory `dir` (atomically;
 * `"exists"` when another process published it first). Leaves it paused.
 */
export function captureHvVm(
  vm: Vm,
  dir: string,
  options: HvCaptureOptions = {},
): Promise<PublishResult> {
  if (vm.state !== "paused") {
    return Promise.reject(new Error(`captureHvVm: the VM must be paused (it is ${vm.state})`));
  }
  for (const v of vm.vcpus) completePendingIo(v.fd);
  return captureVm(hvMachineParts(vm, options.devices), dir, options.source ?? {});
}

/** What {@link restoreHvVm}'s `build` returns. */
export interface HvRestoreBuild {
  /** The new VM over `ctx.memory`, with its devices and vCPUs, not started. */
  vm: Vm;
  /** Device state adapters by id (the same ids as at capture). */
  devices?: ReadonlyMap<string, Persist>;
}

/** A restored hv VM and the snapshot memory it runs on (the caller disposes it after the VM). */
export interface HvRestored extends HvRestoreBuild {
  /** Guest memory: the snapshot's `memory` file mapped copy-on-write. */
  memory: RestoreContext["memory"];
}

/**
 * Restores an hv VM from `dir`: validate, map memory `MAP_PRIVATE`, `build`,
 * set state. Resolves to the built VM, ready for `vm.start()`. On failure the
 * VM is closed and the error (a `SnapshotError` for a bad snapshot) thrown.
 */
export async function restoreHvVm(
  dir: string,
  build: (ctx: RestoreContext) => HvRestoreBuild,
): Promise<HvRestored> {
  let built: HvRestored | null = null;
  try {
    restoreVm(dir, (ctx) => {
      const b = build(ctx);
      built = { ...b, memory: ctx.memory };
      return hvMachineParts(b.vm, b.devices);
    });
  } catch (e) {
    // A failed build already released the memory (restoreVm); a failed state restore did not.
    const b = built as HvRestored | null;
    if (b) {
      await b.vm.close();
      b.memory[Symbol.dispose]();
    }
    throw e;
  }
  return built!;
}
