/**
 * The snapshot-cache flow an engine follows for `skiff run`, independent of
 * how it boots, captures or restores:
 *
 * - hit: restore from the cached snapshot; if that fails in any way, warn in
 *   one line, delete the entry and cold-boot instead — unless the run was
 *   stopped meanwhile (its abort signal), which is the run's failure and
 *   leaves the entry;
 * - miss: cold-boot to the init's ready doorbell, capture into the cache
 *   (atomically; a capture failure only costs a warning), prune the least
 *   recently used entries beyond the cache's size limit, and carry on in the
 *   same VM;
 * - no cache (`--no-snapshot`): cold-boot only.
 *
 * The caller then sends the command to the VM it got back.
 *
 * @module
 */

import type { SnapshotCache } from "./cache.ts";
import type { Snapshot } from "./store.ts";

/** What {@link bootCached} needs from the engine (`S`: the engine's validated entry). */
export interface BootCachedOptions<T, S extends { dir: string } = Snapshot> {
  /** The cache, or null when snapshots are off (`--no-snapshot`). */
  cache: SnapshotCache | null;
  /** The key from `snapshotKey(parts)`. */
  key: string;
  /**
   * Opens and validates an entry directory, throwing a `SnapshotError` when
   * it is unusable (default: the kvm format's `readSnapshot`; the qemu
   * engine passes `readQemuEntry`).
   */
  read?: (dir: string) => S;
  /**
   * Builds a ready-to-run VM from a validated snapshot (e.g. with `restoreVm`);
   * on failure it releases whatever it built and throws.
   */
  restore(snapshot: S): T | Promise<T>;
  /** Cold-boots a VM up to the ready doorbell, paused there. */
  boot(): Promise<T>;
  /**
   * Captures the paused, freshly booted VM into snapshot directory `dir`
   * (e.g. with `captureVm`). An engine that writes the entry in the
   * background returns `published`, which settles once it is on disk.
   */
  capture(vm: T, dir: string): Promise<void | { published: Promise<unknown> }>;
  /** One-line warnings (default: `console.error` with a `skiff: ` prefix). */
  warn?(message: string): void;
  /**
   * The run's abort signal (`--timeout`, Ctrl-C): a restore that fails once it
   * has fired failed because of it, not because of the entry, which is kept.
   */
  signal?: AbortSignal;
}

/** The VM and where it came from. */
export interface BootCachedResult<T> {
  vm: T;
  /** `snapshot`: restored; `boot`: cold-booted (and captured when `captured`). */
  from: "snapshot" | "boot";
  /** Whether a new snapshot was published (false on hits, with no cache, or on failure). */
  captured: boolean;
}

/** Restores from the cache or boots (and captures); never fails because of the cache. */
export async function bootCached<T, S extends { dir: string } = Snapshot>(
  o: BootCachedOptions<T, S>,
): Promise<BootCachedResult<T>> {
  const warn = o.warn ?? ((m: string) => console.error(`skiff: ${m}`));
  if (o.cache) {
    const snapshot = o.read ? o.cache.lookupWith(o.key, o.read) : o.cache.lookup(o.key) as S | null;
    if (snapshot) {
      try {
        return { vm: await o.restore(snapshot), from: "snapshot", captured: false };
      } catch (e) {
        if (o.signal?.aborted) throw e;
        o.cache.discard(
          o.key,
          `restoring snapshot ${snapshot.dir} failed: ${(e as Error).message ?? String(e)}`,
        );
      }
    }
  }
  const vm = await o.boot();
  let captured = false;
  if (o.cache) {
    try {
      const written = await o.capture(vm, o.cache.pathOf(o.key));
      captured = true;
      // Each new configuration adds an entry (~66 MB for the default guest):
      // the least recently used go once the cache is over its size limit,
      // counted with the new entry, so once that is on disk.
      const cache = o.cache;
      if (written) written.published.then(() => cache.prune(o.key), () => {});
      else cache.prune(o.key);
    } catch (e) {
      warn(`could not save a snapshot: ${(e as Error).message ?? String(e)}`);
    }
  }
  return { vm, from: "boot", captured };
}
