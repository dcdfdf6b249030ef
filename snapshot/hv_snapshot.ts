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

import { Vm, type VmOptions } from "../hv/vm.ts";
import { vcpuWorkers } from "../hv/vcpu_worker.ts";
import { closePrepared } from "../hv/prepared_vm.ts";
import type { StateValue } from "./codec.ts";
import { completePendingIo, detectFeatures, type KvmFeatures } from "./kvm_state.ts";
import type { PublishResult, Snapshot } from "./store.ts";
import {
  captureVm,
  type MachineParts,
  type Persist,
  type RestoreContext,
  restoreVmAsync,
  saveableMsrs,
} from "./vm_snapshot.ts";

/** The {@link MachineParts} view of an hv {@link Vm}. */
export function hvMachineParts(
  vm: Vm,
  devices: ReadonlyMap<string, Persist> = new Map(),
): MachineParts {
  let features: KvmFeatures | null = null;
  return {
    vm: vm.fd,
    vcpus: vm.vcpus.map((v) => v.fd),
    memory: { regions: vm.memory.flatMap((m) => m.regions) },
    // Only a capture reads these (two KVM_CHECK_EXTENSIONs, KVM_GET_MSR_INDEX_LIST twice):
    // asked on first use, so a restore does not pay for them.
    get features() {
      return features ??= detectFeatures(vm.kvm, { irqchip: vm.irqchip, pit: vm.pit });
    },
    get msrIndices() {
      return saveableMsrs(vm.kvm);
    },
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

/** What {@link restoreHvVm}'s `build` receives. */
export interface HvRestoreContext extends RestoreContext {
  /**
   * The VM over `memory` with its memory slots, irqchip and PIT, made while
   * the snapshot was being verified ({@link HvRestoreOptions.vm}); `build`
   * adds vCPUs and devices to it and returns it. Absent without that option:
   * `build` then creates the VM itself.
   */
  vm?: Vm;
}

/** Options of {@link restoreHvVm}. */
export interface HvRestoreOptions {
  /**
   * Create the VM for `build` ({@link HvRestoreContext.vm}) with these options
   * (`memory` is the snapshot's), overlapped with verifying the snapshot on a
   * process's first restore (`Vm.createAsync`: a big guest's memory slot
   * costs ~0.5 ms per GiB here), in place on later ones (`Vm.create`), or
   * over the VM `restorePool` made ahead (snapshot/restore_pool.ts).
   */
  vm?: Omit<VmOptions, "memory">;
  /**
   * vCPU Workers to start before the snapshot is read (default 1; see
   * hv/vcpu_worker.ts): their module loading overlaps the restore, and
   * `Vm.createVcpu` takes them. Ones not taken end when the restore returns.
   */
  prewarmWorkers?: number;
}

/**
 * Restores an hv VM from directory `from` (or a {@link Snapshot} a cache lookup
 * already read): validate, map memory `MAP_PRIVATE`, `build`,
 * set state. Resolves to the built VM, ready for `vm.start()`. On failure the
 * VM is closed and the error (a `SnapshotError` for a bad snapshot) thrown.
 */
export async function restoreHvVm(
  from: string | Snapshot,
  build: (ctx: HvRestoreContext) => HvRestoreBuild,
  options: HvRestoreOptions = {},
): Promise<HvRestored> {
  // First, so that the Workers' module loading overlaps everything below.
  using _workers = vcpuWorkers.prewarm(options.prewarmWorkers ?? 1);
  let built: HvRestored | null = null;
  const vmOptions = options.vm;
  try {
    await restoreVmAsync<MachineParts, Vm | undefined>(from, {
      prepare: vmOptions
        ? async (memory, overlap, pooled) => {
          const opts = { ...vmOptions, memory };
          if (pooled && pooled.kvmPath === (vmOptions.kvmPath ?? "/dev/kvm")) {
            return Vm.fromPrepared(opts, pooled);
          }
          if (pooled) closePrepared(pooled);
          return overlap ? await Vm.createAsync(opts) : Vm.create(opts);
        }
        : undefined,
      release: (vm) => vm?.close(),
      build: (ctx, vm) => {
        let b: HvRestoreBuild;
        try {
          b = build({ ...ctx, vm });
        } catch (e) {
          void vm?.close();
          throw e;
        }
        if (vm && b.vm !== vm) void vm.close();
        built = { ...b, memory: ctx.memory };
        return hvMachineParts(b.vm, b.devices);
      },
    });
  } catch (e) {
    // A failed build already released the memory (restoreVmAsync); a failed state restore did not.
    const b = built as HvRestored | null;
    if (b) {
      await b.vm.close();
      b.memory[Symbol.dispose]();
    }
    throw e;
  }
  return built!;
}
