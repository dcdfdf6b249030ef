/**
 * Capturing and restoring a running VM: KVM state, device state and guest
 * memory, on top of the format, publish and reader in this folder.
 *
 * The VM is described by {@link MachineParts} (the KVM fds, its memory and
 * its devices), so any VMM loop — `hv/`'s Worker-based vCPUs or a test's
 * single-threaded loop — can use it. Capture requires every vCPU paused
 * outside `KVM_RUN` with pending I/O completed ({@link completePendingIo}).
 *
 * Restore builds the new VM over the snapshot's `memory` file mapped
 * `MAP_PRIVATE` (copy-on-write, nothing copied): {@link restoreVm} opens and
 * validates the snapshot, maps the memory, lets the caller create the VM,
 * its memory slots, irqchip/PIT, vCPUs and devices over that memory, then
 * sets VM state, vCPU state and device state in that order.
 *
 * @module
 */

import type { GuestMemory, RegionMemory } from "../hv/memory.ts";
import type { Kvm, VcpuFd, VmFd } from "../kvm_ffi/kvm.ts";
import type { StateValue } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import type { SnapshotManifest, SnapshotState } from "./format.ts";
import {
  type KvmFeatures,
  restoreVcpuState,
  restoreVmState,
  saveVcpuState,
  saveVmState,
} from "./kvm_state.ts";
import {
  openSnapshotMemory,
  type PublishResult,
  readSnapshot,
  type Snapshot,
  writeSnapshot,
} from "./store.ts";

/** A device whose state survives a snapshot (Firecracker's `Persist`). */
export interface Persist {
  /**
   * The device's state as JSON-able data; `Uint8Array` and `bigint` are
   * allowed (see FORMAT.md). Anything else (Map, class instances, NaN) makes
   * the capture fail naming the path, e.g. `$.devices.fs0.nodes: cannot encode`.
   */
  save(): unknown;
  /**
   * Puts back what {@link save} returned (after a JSON round trip); throws on
   * state it cannot accept. Runs after VM and vCPU state. A device the
   * restore's `build` already constructed from its saved state (Firecracker's
   * way: the snapshot says what to build) has nothing to put back: it has no
   * `restore`, or one for what must wait for the VM state.
   */
  restore?(state: unknown): void;
}

/** Everything capture and restore touch in a VM. */
export interface MachineParts {
  /** The VM fd. */
  vm: VmFd;
  /** vCPU fds, index = vCPU id. */
  vcpus: readonly VcpuFd[];
  /** Guest memory regions (memfd-backed for capture; the snapshot's private mapping after restore). */
  memory: Pick<GuestMemory, "regions">;
  /** Which optional KVM state exists. */
  features: KvmFeatures;
  /** MSRs to save: `Kvm.msrIndexList()`. */
  msrIndices: readonly number[];
  /** Devices by id. */
  devices: ReadonlyMap<string, Persist>;
}

/** Gathers the state of a paused VM (KVM and devices), without memory. */
export function captureState(
  m: MachineParts,
  source: Record<string, StateValue> = {},
): SnapshotState {
  const devices: Record<string, StateValue> = {};
  for (const [id, dev] of m.devices) devices[id] = dev.save() as StateValue;
  return {
    vm: saveVmState(m.vm, m.features),
    vcpus: m.vcpus.map((v) => saveVcpuState(v, m.msrIndices, m.features)),
    devices,
    source,
  };
}

/**
 * Captures a paused VM into snapshot directory `dir` (published atomically;
 * `"exists"` when another process published `dir` first).
 */
export function captureVm(
  m: MachineParts,
  dir: string,
  source: Record<string, StateValue> = {},
): Promise<PublishResult> {
  return writeSnapshot(dir, { ...captureState(m, source), memory: m.memory });
}

/** Sets VM, vCPU and device state from a manifest on a freshly built VM. */
export function restoreState(m: MachineParts, manifest: SnapshotManifest, path: string): void {
  if (m.vcpus.length !== manifest.vcpus.length) {
    throw new SnapshotError(
      "mismatch",
      path,
      `snapshot has ${manifest.vcpus.length} vCPUs, the VM has ${m.vcpus.length}`,
    );
  }
  const missing = Object.keys(manifest.devices).filter((id) => !m.devices.has(id));
  const extra = [...m.devices.keys()].filter((id) => !(id in manifest.devices));
  if (missing.length || extra.length) {
    throw new SnapshotError(
      "mismatch",
      path,
      `device set differs (only in snapshot: ${missing.join(",") || "-"}; only in VM: ${
        extra.join(",") || "-"
      })`,
    );
  }
  restoreVmState(m.vm, manifest.vm, path);
  m.vcpus.forEach((v, i) => restoreVcpuState(v, manifest.vcpus[i], path));
  for (const [id, dev] of m.devices) dev.restore?.(manifest.devices[id]);
}

/** What {@link restoreVm}'s `build` callback receives. */
export interface RestoreContext {
  /** The snapshot's memory, mapped `MAP_PRIVATE`; the VM must use it as its memory slots. */
  memory: RegionMemory;
  /** The validated snapshot. */
  snapshot: Snapshot;
}

/**
 * Restores a VM from snapshot directory `dir`: validates it, maps its memory
 * copy-on-write, calls `build` to create the VM (fds, memory slots over
 * `ctx.memory`, irqchip/PIT, vCPUs, devices), then restores VM, vCPU and
 * device state. Returns what `build` returned, ready to run. On failure after
 * `build`, the caller's `dispose` (if given) releases the half-built VM.
 */
export function restoreVm<M extends MachineParts>(
  dir: string,
  build: (ctx: RestoreContext) => M,
  dispose?: (m: M) => void,
): M {
  const snapshot = readSnapshot(dir);
  const memory = openSnapshotMemory(snapshot);
  let machine: M;
  try {
    machine = build({ memory, snapshot });
  } catch (e) {
    memory[Symbol.dispose]();
    throw e;
  }
  try {
    restoreState(machine, snapshot.manifest, dir);
  } catch (e) {
    if (dispose) dispose(machine);
    if (e instanceof SnapshotError) throw e;
    throw new SnapshotError(
      "mismatch",
      dir,
      `restoring state failed: ${(e as Error).message}`,
      { cause: e },
    );
  }
  return machine;
}

/** `Kvm.msrIndexList()` once per process (it does not change). */
let msrCache: number[] | null = null;

/** The MSRs KVM reports as saveable (`KVM_GET_MSR_INDEX_LIST`), cached per process. */
export function saveableMsrs(kvm: Kvm): readonly number[] {
  msrCache ??= kvm.msrIndexList();
  return msrCache;
}
