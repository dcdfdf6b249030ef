/**
 * Restores a kvm-engine machine from a snapshot: the snapshot's memory
 * mapped copy-on-write, the same devices over it, then VM, vCPU and device
 * state (snapshot/hv_snapshot.ts). Capture is `captureHvVm` with the
 * machine's `persist()` table.
 *
 * @module
 */

import { Vm } from "../vm.ts";
import { restoreHvVm } from "../../snapshot/hv_snapshot.ts";
import { MachineOptions, MachinePlan } from "./plan.ts";
import { attachDevices, disposer, KvmDevices } from "./device_manager.ts";

/** A machine restored from a snapshot (not started). */
export interface RestoredKvmMachine extends KvmDevices, AsyncDisposable {
  /** The snapshot directory it came from. */
  snapshotDir: string;
}
/**
 * Restores a machine of plan `p` from snapshot directory `dir`: the
 * snapshot's memory mapped copy-on-write, the same devices over it, then
 * VM, vCPU and device state (`snapshot/hv_snapshot.ts`). Not started.
 * Throws (a `SnapshotError` for a bad snapshot) with everything released.
 */
export async function restorePlanned(
  p: MachinePlan,
  dir: string,
  opts: MachineOptions,
): Promise<RestoredKvmMachine> {
  const cleanups: (() => void | Promise<void>)[] = [];
  const dispose = disposer(cleanups);
  let devices: ReturnType<typeof attachDevices> | null = null;
  try {
    const r = await restoreHvVm(dir, (ctx) => {
      const vm = Vm.create({ memory: ctx.memory });
      try {
        const m = ctx.snapshot.manifest;
        const savedCpuid = m.vcpus.every((v) => v.cpuid);
        devices = attachDevices(vm, ctx.memory, p, opts, cleanups, m.devices, savedCpuid);
      } catch (e) {
        // restoreHvVm releases the memory when build throws; the VM is ours.
        void vm.close();
        throw e;
      }
      return { vm, devices: devices.persist() };
    });
    cleanups.unshift(() => r.memory[Symbol.dispose]());
    cleanups.push(() => r.vm.close());
    return {
      vm: r.vm,
      memory: r.memory,
      ...devices!,
      cmdline: p.cmdline,
      emulated: p.emulated,
      snapshotDir: dir,
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}
