/**
 * Restores a kvm-engine machine from a snapshot: the snapshot's memory
 * mapped copy-on-write, the vCPUs, and each device **constructed from its
 * record in the snapshot** (device_records.ts: kind, constructor arguments,
 * placement, transport and device state), then VM and vCPU state
 * (snapshot/hv_snapshot.ts). Capture is `captureHvVm` with the machine's
 * `persist()` records.
 *
 * @module
 */

import { Vm } from "../vm.ts";
import { restoreHvVm } from "../../snapshot/hv_snapshot.ts";
import { SnapshotError } from "../../snapshot/errors.ts";
import type { Snapshot } from "../../snapshot/store.ts";
import { MachineOptions, MachinePlan } from "./plan.ts";
import { devicesOf, disposer, KvmDevices } from "./device_manager.ts";
import { restoreDevices } from "./device_records.ts";
import { createVcpus, deviceOptions } from "./builder.ts";

/** A machine restored from a snapshot (not started). */
export interface RestoredKvmMachine extends KvmDevices, AsyncDisposable {
  /** The snapshot directory it came from. */
  snapshotDir: string;
}

/**
 * Restores a machine of plan `p` from snapshot directory `from` (or the
 * {@link Snapshot} a cache lookup already read and validated). The plan
 * gives the run's host back-ends and its command line; the devices come
 * from the snapshot. Not started. Throws (a `SnapshotError` for a bad
 * snapshot) with everything released.
 */
export async function restorePlanned(
  p: MachinePlan,
  from: string | Snapshot,
  opts: MachineOptions,
): Promise<RestoredKvmMachine> {
  const dir = typeof from === "string" ? from : from.dir;
  const cleanups: (() => void | Promise<void>)[] = [];
  const dispose = disposer(cleanups);
  let devices: ReturnType<typeof devicesOf> | null = null;
  try {
    const r = await restoreHvVm(from, (ctx) => {
      // Made by restoreHvVm while it verified the snapshot (Vm.createAsync).
      const vm = ctx.vm ?? Vm.create({ memory: ctx.memory });
      try {
        const m = ctx.snapshot.manifest;
        if (m.vcpus.length !== p.cpus) {
          throw new SnapshotError(
            "mismatch",
            dir,
            `snapshot has ${m.vcpus.length} vCPUs, the run asks for ${p.cpus}`,
          );
        }
        createVcpus(vm, m.vcpus.length, !m.vcpus.every((v) => v.cpuid));
        const dm = restoreDevices(
          vm,
          ctx.memory,
          m.devices as Record<string, unknown>,
          dir,
          deviceOptions(p, opts, cleanups),
        );
        devices = devicesOf(dm);
        return { vm, devices: dm.persist() };
      } catch (e) {
        // restoreHvVm releases the memory when build throws; the VM is ours.
        void vm.close();
        throw e;
      }
    }, { vm: {} });
    cleanups.unshift(() => r.memory[Symbol.dispose]());
    cleanups.push(() => r.vm.close());
    return {
      ...devices!,
      vm: r.vm,
      memory: r.memory,
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
