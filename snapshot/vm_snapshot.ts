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
import type { PreparedVm } from "../hv/prepared_vm.ts";
import type { StateValue } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import {
  manifestChecksum,
  manifestsVerified,
  type SnapshotManifest,
  type SnapshotState,
} from "./format.ts";
import {
  type KvmFeatures,
  restoreVcpuState,
  restoreVmState,
  saveVcpuState,
  saveVmState,
} from "./kvm_state.ts";
import {
  finishSnapshotState,
  openSnapshotMemory,
  type ParsedSnapshot,
  parseSnapshotState,
  type PublishResult,
  readSnapshotState,
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
 * Restores a VM from snapshot directory `from` (or a {@link Snapshot} already
 * read, e.g. by a cache lookup): validates it, maps its memory
 * copy-on-write, calls `build` to create the VM (fds, memory slots over
 * `ctx.memory`, irqchip/PIT, vCPUs, devices), then restores VM, vCPU and
 * device state. Returns what `build` returned, ready to run. On failure after
 * `build`, the caller's `dispose` (if given) releases the half-built VM.
 */
export function restoreVm<M extends MachineParts>(
  from: string | Snapshot,
  build: (ctx: RestoreContext) => M,
  dispose?: (m: M) => void,
): M {
  // A Snapshot from a cache lookup is already validated; the memory size is
  // checked again on the descriptor openSnapshotMemory maps.
  const snapshot = typeof from === "string" ? readSnapshotState(from) : from;
  const memory = openSnapshotMemory(snapshot);
  let machine: M;
  try {
    machine = build({ memory, snapshot });
  } catch (e) {
    memory[Symbol.dispose]();
    throw e;
  }
  return setState(machine, snapshot, dispose);
}

/** Sets VM, vCPU and device state on a built machine; on failure disposes it and throws. */
function setState<M extends MachineParts>(
  machine: M,
  snapshot: Snapshot,
  dispose?: (m: M) => void,
): M {
  const dir = snapshot.dir;
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

/** The steps of {@link restoreVmAsync}. */
export interface RestoreSteps<M extends MachineParts, P> {
  /**
   * Work that needs nothing but the mapped memory, e.g. the VM and its memory
   * slots (`Vm.createAsync`). It is started before the checksum and the rest
   * of `state.json` are verified and decoded, which happens on this thread
   * while the promise's slow part (a `KVM_SET_USER_MEMORY_REGION` on a
   * thread-pool thread) runs on another. Only the memory layout is checked
   * when it starts, so it must use nothing else from the snapshot.
   *
   * `overlap` says whether there is work to overlap: true for the first
   * manifest a process verifies (cold code, ~0.8 ms), false once one was
   * (verifying then takes ~0.1 ms and is done before `prepare` is called),
   * or when `from` was already verified. Without it, handing work to another
   * thread only adds its cost (~0.3–0.7 ms measured for a 4 GiB slot):
   * `prepare` should then work in place (`Vm.create` rather than
   * `Vm.createAsync`).
   *
   * `pooled` is a VM with `memory`'s slots made ahead (`restorePool`,
   * restore_pool.ts; slot i for `memory.regions[i]`: `memorySlots`), or
   * null; `prepare` owns it and should build on it instead of making one.
   */
  prepare?: (memory: RegionMemory, overlap: boolean, pooled: PreparedVm | null) => Promise<P>;
  /**
   * Whether to start `prepare` before verifying (default: only for the first
   * manifest this process verifies; see `prepare`'s `overlap`).
   */
  overlap?: boolean;
  /** Releases what `prepare` made when the restore fails before `build` is called. */
  release?: (prepared: P) => void | Promise<void>;
  /**
   * Builds the machine as {@link restoreVm}'s `build` does, with what
   * `prepare` made (`undefined` without one); it owns `prepared` from then on
   * (and releases it if it throws).
   */
  build: (ctx: RestoreContext, prepared: P) => M;
  /** Releases the machine when setting its state fails. */
  dispose?: (m: M) => void;
}

/** Memory and a VM made ahead for a restore: it owns both once given them. */
export interface PooledRestore {
  /** The snapshot's memory, mapped `MAP_PRIVATE` and not yet touched. */
  memory: RegionMemory;
  /** A VM with `memory`'s slots (`memorySlots`), or null if making it failed. */
  vm: Promise<PreparedVm | null>;
}

/** Where {@link restoreVmAsync} gets restores made ahead (restore_pool.ts's `restorePool`). */
export interface RestoreAhead {
  /** What was made ahead for `snap`, or null. */
  take(snap: Snapshot | ParsedSnapshot): PooledRestore | null;
  /** Called after each restore of `snap`. */
  refill(snap: Snapshot | ParsedSnapshot): void;
}

/**
 * The pool restores consult; restore_pool.ts sets it when it is loaded, so a
 * process that never imports it (a fresh process's one restore) loads none
 * of it (with it imported, one A/B measured `restore-fresh-process-ms` ≈ 0.1
 * ms higher in the median, about that line's noise).
 */
let ahead: RestoreAhead | null = null;

/** Sets the pool {@link restoreVmAsync} consults (restore_pool.ts does, on load). */
export function setRestoreAhead(pool: RestoreAhead | null): void {
  ahead = pool;
}

/**
 * {@link restoreVm} with a `prepare` step overlapped with verifying the
 * snapshot: read and parse `state.json`, check its memory section and the
 * memory file's size, map the memory, start `prepare`, verify the checksum
 * and decode the rest, await `prepare`, `build`, set state. (Once a process
 * has verified a manifest, verifying is fast and comes before `prepare`:
 * see {@link RestoreSteps.prepare}.) A snapshot that
 * fails verification is reported as such (a {@link SnapshotError}) even when
 * `prepare` failed too, and whatever `prepare` made is released.
 */
export async function restoreVmAsync<M extends MachineParts, P = undefined>(
  from: string | Snapshot,
  steps: RestoreSteps<M, P>,
): Promise<M> {
  const staged = typeof from === "string" ? parseSnapshotState(from) : from;
  let snapshot: Snapshot | null = "manifest" in staged ? staged : null;
  // The body's checksum through WebCrypto (manifestChecksum): native and off this
  // thread, awaited where the restore verifies. When prepare overlaps it is started
  // right after prepare, not before: prepare's memory slot is the long pole of a
  // big guest's first restore (~2.7 ms of KVM work for 4 GiB here), and starting
  // the checksum (stringify, digest call: ~0.3–0.5 ms cold) first delayed it.
  let checksum: Promise<string> | undefined;
  const startChecksum = () => {
    if (snapshot !== null || checksum) return;
    checksum = manifestChecksum((staged as ParsedSnapshot).parsed);
    checksum.catch(() => {});
  };
  const verify = async (): Promise<Snapshot> => {
    startChecksum();
    return snapshot ??= finishSnapshotState(staged as ParsedSnapshot, await checksum);
  };
  // Overlap only while verifying is slow: the first manifest a process verifies
  // runs cold code (~0.8 ms); later ones take ~0.1 ms, less than handing a slot
  // to another thread costs, so then verify first and let prepare work in place.
  const overlap = snapshot === null && (steps.overlap ?? manifestsVerified() === 0);
  if (!overlap) await verify();
  // Made ahead by the previous restore of this snapshot (restore_pool.ts), when kept.
  const pooled = steps.prepare && ahead ? ahead.take(staged) : null;
  let memory: RegionMemory;
  try {
    memory = pooled?.memory ?? openSnapshotMemory(staged);
  } catch (e) {
    await verify(); // a corrupt state.json is the better explanation
    throw e;
  }
  let prepared: P;
  try {
    let pending: Promise<P> | undefined;
    try {
      pending = pooled
        ? pooled.vm.then((vm) => steps.prepare!(memory, overlap, vm))
        : steps.prepare?.(memory, overlap, null);
      // Awaited below, after the checksum: a failure meanwhile is not unhandled.
      pending?.catch(() => {});
      startChecksum();
    } catch (e) {
      await verify();
      throw e;
    }
    try {
      await verify();
    } catch (e) {
      if (pending) {
        try {
          await steps.release?.(await pending);
        } catch {
          // prepare failed too: the verification error explains it
        }
      }
      throw e;
    }
    prepared = (await pending) as P;
  } catch (e) {
    memory[Symbol.dispose]();
    throw e;
  }
  const verified = await verify();
  let machine: M;
  try {
    machine = steps.build({ memory, snapshot: verified }, prepared);
  } catch (e) {
    memory[Symbol.dispose]();
    throw e;
  }
  const restored = setState(machine, verified, steps.dispose);
  ahead?.refill(staged);
  return restored;
}

/** `Kvm.msrIndexList()` once per process (it does not change). */
let msrCache: number[] | null = null;

/** The MSRs KVM reports as saveable (`KVM_GET_MSR_INDEX_LIST`), cached per process. */
export function saveableMsrs(kvm: Kvm): readonly number[] {
  msrCache ??= kvm.msrIndexList();
  return msrCache;
}
