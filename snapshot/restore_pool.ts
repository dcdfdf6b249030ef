/**
 * Restores made ahead: for a process that restores one VM after another from
 * the same snapshot (a test suite, a server), the next restore's memory and
 * VM are made while the current VM runs.
 *
 * A restore's part that grows with the guest is KVM's, not skiff's: on this
 * host's shadow-paging KVM a memory slot allocates and zeroes per-page
 * metadata (~0.5 ms per GiB), and mapping a file over a range a slot already
 * covers makes KVM's MMU notifier walk that metadata (~0.35 ms per GiB):
 * snapshot/FORMAT.md. So the pool maps the snapshot's memory file into a
 * range of its own and only then makes the VM with its slots over it (on
 * thread-pool threads, {@link prepareVmAsync}). A restore that takes it
 * ({@link RestorePool.take}, called by `restoreVmAsync`) does neither: what
 * is left is the same at any guest size.
 *
 * The pooled memory is used only while the snapshot's memory path names the
 * same file, unchanged ({@link sameFile}); the restore still reads and
 * verifies `state.json` as always. A pooled VM never runs before a restore
 * takes it. Off by default (a pooled 4 GiB VM holds ~8 MiB of kernel memory):
 * turn it on with `restorePool.keepReady(true)`, and end it with
 * `await restorePool.drain()`, as with `vcpuWorkers.keepIdle`.
 *
 * @module
 */

import type { RegionMemory } from "../hv/memory.ts";
import { closePrepared, memorySlots, type PreparedVm, prepareVmAsync } from "../hv/prepared_vm.ts";
import { fileIdentity } from "./file_identity.ts";
import { memoryInfoOf, openSnapshotMemory, type ParsedSnapshot, type Snapshot } from "./store.ts";
import { type PooledRestore, type RestoreAhead, setRestoreAhead } from "./vm_snapshot.ts";

/** Snapshots a pool keeps a restore ready for at most (the oldest one is dropped). */
export const MAX_READY = 2;

interface Ready extends PooledRestore {
  /** The mapped file's {@link fileIdentity}, from its descriptor. */
  identity: string;
}

/**
 * The identity of the file `openSnapshotMemory` mapped as `memory`, from its
 * descriptor (not its path, which may name another file by now).
 */
function mappedFileIdentity(memory: RegionMemory): string {
  const fd = memory.regions[0]?.fd;
  if (fd === undefined) throw new Error("mappedFileIdentity: the memory is not a mapped file");
  return fileIdentity(Deno.statSync(`/proc/self/fd/${fd}`));
}

/**
 * Whether `path` names the file `identity` describes, unchanged. Snapshots
 * are published whole by rename and never rewritten, so a replaced file is a
 * new inode.
 */
function sameFile(path: string, identity: string): boolean {
  try {
    return fileIdentity(Deno.statSync(path)) === identity;
  } catch {
    return false;
  }
}

function keyOf(snap: Snapshot | ParsedSnapshot): string {
  const info = memoryInfoOf(snap);
  return `${snap.memoryPath}\n${info.fileSize}\n${
    info.regions.map((r) => `${r.guestAddr}+${r.size}@${r.fileOffset}`).join(",")
  }`;
}

/**
 * Closes the VM, then returns the memory (so no live slot covers it when it
 * is unmapped). It runs in the background (nobody awaits a dropped restore),
 * so a failure to close is not thrown: there is nothing left to do about it,
 * and an unhandled rejection would end the process.
 */
async function discard(r: PooledRestore): Promise<void> {
  const vm = await r.vm;
  try {
    if (vm) closePrepared(vm);
  } catch {
    // the fds are gone or going either way
  }
  try {
    r.memory[Symbol.dispose]();
  } catch {
    // likewise the mapping
  }
}

/** The process's restores made ahead (see the module doc). */
export class RestorePool implements RestoreAhead {
  #keep = false;
  #ready = new Map<string, Ready>();
  #scheduled = new Map<string, ReturnType<typeof setTimeout>>();
  #made = 0;
  #taken = 0;

  /** Restores this pool has made ahead so far (diagnostics, tests). */
  get made(): number {
    return this.#made;
  }

  /** Restores that took what this pool made (diagnostics, tests). */
  get taken(): number {
    return this.#taken;
  }

  /** Snapshots with a restore ready (or its VM being made). */
  get size(): number {
    return this.#ready.size;
  }

  /**
   * Whether a restore makes the next one for its snapshot ahead (default
   * false). Turning it off drops what is kept.
   */
  keepReady(on: boolean): void {
    this.#keep = on;
    if (!on) void this.drain();
  }

  /**
   * What was made ahead for `snap`, if its memory path still names the file
   * that was mapped; null otherwise (the restore maps and creates as usual).
   */
  take(snap: Snapshot | ParsedSnapshot): PooledRestore | null {
    if (this.#ready.size === 0) return null; // a fresh process's restore: nothing to look up
    const key = keyOf(snap);
    const r = this.#ready.get(key);
    if (!r) return null;
    this.#ready.delete(key);
    if (!sameFile(snap.memoryPath, r.identity)) {
      void discard(r);
      return null;
    }
    this.#taken++;
    return { memory: r.memory, vm: r.vm };
  }

  /**
   * After a restore of `snap`: when {@link keepReady} is on, makes the next
   * one once the caller yields to the event loop (while the restored VM
   * runs, not during its restore, whose CPU it would share).
   */
  refill(snap: Snapshot | ParsedSnapshot): void {
    if (!this.#keep) return;
    const key = keyOf(snap);
    if (this.#ready.has(key) || this.#scheduled.has(key)) return;
    this.#scheduled.set(
      key,
      setTimeout(() => {
        this.#scheduled.delete(key);
        if (this.#keep && !this.#ready.has(key)) this.#prepare(key, snap);
      }, 0),
    );
  }

  /** Drops everything kept (closing the VMs) and keeps nothing from now on. */
  async drain(): Promise<void> {
    this.#keep = false;
    for (const t of this.#scheduled.values()) clearTimeout(t);
    this.#scheduled.clear();
    const all = [...this.#ready.values()];
    this.#ready.clear();
    await Promise.all(all.map(discard));
  }

  #prepare(key: string, snap: Snapshot | ParsedSnapshot): void {
    // In a timer: whatever fails here is the next restore's to find and report.
    let memory: RegionMemory;
    try {
      memory = openSnapshotMemory(snap);
    } catch {
      return;
    }
    let identity: string;
    let vm: Promise<PreparedVm | null>;
    try {
      identity = mappedFileIdentity(memory);
      vm = prepareVmAsync(memorySlots(memory)).catch(() => null);
    } catch {
      memory[Symbol.dispose]();
      return;
    }
    this.#made++;
    this.#ready.set(key, { memory, identity, vm });
    for (const [k, r] of this.#ready) {
      if (this.#ready.size <= MAX_READY) break;
      this.#ready.delete(k);
      void discard(r);
    }
  }
}

/** The process's pool; `restoreVmAsync` consults it from when this module is loaded. */
export const restorePool: RestorePool = new RestorePool();
setRestoreAhead(restorePool);
