/**
 * The snapshot cache: one snapshot directory per VM configuration, under
 * `${XDG_CACHE_HOME:-~/.cache}/skiff/snapshots/<key>/`, where the key is the
 * SHA-256 of a canonical JSON of everything that shapes the booted state
 * (see {@link snapshotKey}).
 *
 * A bad entry (corrupt, truncated, wrong version) is reported in one line,
 * deleted, and treated as a miss so the caller cold-boots; it never throws.
 * Concurrent writers of one key both succeed and one entry survives (atomic
 * rename in {@link publishDir}).
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { canonicalJson, sha256Hex, toJsonData } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import { RamSpares } from "./ram_spares.ts";
import { isQemuEntry, readQemuEntry } from "./qemu_entry.ts";
import {
  type PublishResult,
  readSnapshot,
  type Snapshot,
  type SnapshotContents,
  writeSnapshot,
} from "./store.ts";

/** Reads an environment variable (injectable for tests). */
export type EnvLookup = (name: string) => string | undefined;

const processEnv: EnvLookup = (name) => Deno.env.get(name);

/** `${XDG_CACHE_HOME:-$HOME/.cache}/skiff`: skiff's per-user cache directory. */
export function skiffCacheDir(env: EnvLookup = processEnv): string {
  const xdg = env("XDG_CACHE_HOME");
  if (xdg && xdg.startsWith("/")) return join(xdg, "skiff");
  const home = env("HOME");
  if (!home) {
    throw new Error("cannot locate the cache directory: neither XDG_CACHE_HOME nor HOME is set");
  }
  return join(home, ".cache", "skiff");
}

/** The default snapshot cache root. */
export function defaultSnapshotDir(env: EnvLookup = processEnv): string {
  return join(skiffCacheDir(env), "snapshots");
}

/**
 * Everything that shapes the booted state of a VM. Include content hashes
 * (not paths) of the kernel and initramfs (see {@link contentHash}), the full
 * command line, memory size, vCPU count and each device with its
 * configuration. Never the command to run: that is sent after restore.
 */
export type SnapshotKeyParts = Record<string, unknown>;

/** The cache key: SHA-256 (hex) of the canonical JSON of `parts` (key order does not matter). */
export function snapshotKey(parts: SnapshotKeyParts): string {
  return sha256Hex(canonicalJson(toJsonData(parts)));
}

const KEY_RE = /^[0-9a-f]{64}$/;

/**
 * A fresh random key, for a snapshot of a running VM (`vm.snapshot()`):
 * it matches no configuration's key, so only its holder restores it.
 */
export function randomSnapshotKey(): string {
  return [...crypto.getRandomValues(new Uint8Array(32))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One entry as listed by {@link SnapshotCache.list}. */
export interface CacheEntry {
  /** The cache key (directory name). */
  key: string;
  /** The entry's directory. */
  dir: string;
  /** Bytes allocated on disk (sparse holes excluded). */
  diskBytes: number;
  /** The engine whose entry it is: `kvm` (state.json + memory) or `qemu` (qemu.json + ram + state). */
  engine: string;
  /** Logical size of the memory file (the guest's memory size). */
  memoryBytes: number;
  /** Creation time, from state.json (or the directory's mtime when unreadable). */
  createdAt: Date;
  /** What it was built from (state.json `source`), or null when unreadable. */
  source: Record<string, unknown> | null;
  /** Why the entry is unusable, if it is. */
  problem?: string;
}

/** Options of {@link SnapshotCache}. */
export interface SnapshotCacheOptions {
  /** Where one-line warnings go (default: `console.error` with a `skiff: ` prefix). */
  warn?: (message: string) => void;
  /**
   * Bytes on disk the configuration entries may take together before
   * {@link SnapshotCache.prune} removes the least recently used (default:
   * {@link cacheLimitBytes}).
   */
  maxBytes?: number;
}

/** The default limit of the cache's size on disk: 2 GiB, ≈ 30 entries of the default guest. */
export const DEFAULT_CACHE_LIMIT_MIB = 2048;

/**
 * The cache's size limit: `SKIFF_SNAPSHOT_CACHE_MIB` (MiB, a whole number;
 * 0 keeps only the entry just made) or {@link DEFAULT_CACHE_LIMIT_MIB}.
 * Throws on a value that is not a whole number.
 */
export function cacheLimitBytes(env: EnvLookup = processEnv): number {
  const v = env("SKIFF_SNAPSHOT_CACHE_MIB");
  if (v === undefined || v === "") return DEFAULT_CACHE_LIMIT_MIB * 2 ** 20;
  if (!/^\d+$/.test(v)) {
    throw new Error(`SKIFF_SNAPSHOT_CACHE_MIB=${v}: expected a whole number of MiB`);
  }
  return Number(v) * 2 ** 20;
}

/** The snapshot cache rooted at a directory (default {@link defaultSnapshotDir}). */
export class SnapshotCache {
  /** The cache root; entries are `<root>/<key>/`. */
  readonly root: string;
  #warn: (message: string) => void;

  #maxBytes: number | undefined;

  constructor(root: string = defaultSnapshotDir(), options: SnapshotCacheOptions = {}) {
    this.root = root;
    this.#warn = options.warn ?? ((m) => console.error(`skiff: ${m}`));
    this.#maxBytes = options.maxBytes;
  }

  /** The directory of entry `key`; throws RangeError for anything but 64 hex digits. */
  pathOf(key: string): string {
    if (!KEY_RE.test(key)) throw new RangeError(`bad snapshot key ${JSON.stringify(key)}`);
    return join(this.root, key);
  }

  /**
   * The validated snapshot for `key`, or null on a miss. An entry that fails
   * validation is reported in one line, deleted, and reported as a miss.
   */
  lookup(key: string): Snapshot | null {
    return this.lookupWith(key, readSnapshot);
  }

  /**
   * {@link lookup} for any entry format: `read` validates the directory and
   * throws (a {@link SnapshotError}) when it is unusable; the entry is then
   * reported in one line, deleted, and null returned (a miss).
   */
  lookupWith<S>(key: string, read: (dir: string) => S): S | null {
    const dir = this.pathOf(key);
    try {
      Deno.statSync(dir);
    } catch {
      return null;
    }
    let entry: S;
    try {
      entry = read(dir);
    } catch (e) {
      const why = e instanceof SnapshotError ? e.message : `snapshot ${dir}: ${String(e)}`;
      this.discard(key, why);
      return null;
    }
    touchEntry(dir, this.root);
    return entry;
  }

  /**
   * Keeps the cache within its size limit ({@link SnapshotCacheOptions.maxBytes}):
   * removes the least recently used entries (by when they were last restored
   * from — see {@link touchEntry} — or made) until the rest fit, never `keep`
   * (the entry just made). A running VM's snapshot taken into the cache
   * (`vm.snapshot()` without a directory) is an entry like the others: one
   * to keep belongs in a directory of the caller's. Returns the removed
   * keys. Never throws: a removal another process did first, or one that
   * fails, only counts as not removed.
   */
  prune(keep?: string): string[] {
    let limit: number;
    try {
      limit = this.#maxBytes ?? cacheLimitBytes();
    } catch (e) {
      this.#warn(`${(e as Error).message}; the snapshot cache is not pruned`);
      return [];
    }
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(this.root)];
    } catch {
      return [];
    }
    const entries = names
      .filter((e) => e.isDirectory && KEY_RE.test(e.name) && e.name !== keep)
      .map((e) => {
        const dir = join(this.root, e.name);
        let used = 0;
        try {
          used = Deno.statSync(dir).mtime?.getTime() ?? 0;
        } catch {
          // removed meanwhile
        }
        return { key: e.name, dir, used, bytes: diskUsage(dir) };
      })
      .sort((a, b) => b.used - a.used);
    const kept = keep && KEY_RE.test(keep) ? diskUsage(join(this.root, keep)) : 0;
    let total = kept + entries.reduce((n, e) => n + e.bytes, 0);
    const removed: string[] = [];
    for (let i = entries.length - 1; i >= 0 && total > limit; i--) {
      const e = entries[i];
      try {
        Deno.removeSync(e.dir, { recursive: true });
        removed.push(e.key);
        total -= e.bytes;
      } catch {
        // another process removed it, or it cannot be: not counted
      }
    }
    return removed;
  }

  /**
   * Deletes entry `key` after a failed restore or validation, with a one-line
   * warning giving `why`. Never throws.
   */
  discard(key: string, why: string): void {
    this.#warn(`${why}; deleted it, booting without the snapshot`);
    try {
      Deno.removeSync(this.pathOf(key), { recursive: true });
    } catch {
      // another process removed it first
    }
  }

  /** Publishes a snapshot for `key` atomically; `"exists"` when another process was first. */
  store(key: string, contents: SnapshotContents): Promise<PublishResult> {
    return writeSnapshot(this.pathOf(key), contents);
  }

  /** Every entry, newest first, with its size on disk, age and origin; unusable ones carry `problem`. */
  list(): CacheEntry[] {
    const out: CacheEntry[] = [];
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(this.root)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    for (const ent of names) {
      if (!ent.isDirectory || !KEY_RE.test(ent.name)) continue;
      const dir = join(this.root, ent.name);
      const entry: CacheEntry = {
        key: ent.name,
        dir,
        diskBytes: diskUsage(dir),
        engine: "kvm",
        memoryBytes: 0,
        createdAt: Deno.statSync(dir).mtime ?? new Date(0),
        source: null,
      };
      try {
        if (isQemuEntry(dir)) {
          entry.engine = "qemu";
          const q = readQemuEntry(dir);
          entry.createdAt = new Date(q.manifest.createdAt);
          entry.memoryBytes = q.manifest.ram.fileSize;
          entry.source = q.manifest.source as Record<string, unknown>;
        } else {
          const snap = readSnapshot(dir);
          entry.createdAt = new Date(snap.manifest.createdAt);
          entry.memoryBytes = snap.manifest.memory.fileSize;
          entry.source = snap.manifest.source as Record<string, unknown>;
        }
      } catch (e) {
        entry.problem = e instanceof SnapshotError ? e.message : String(e);
      }
      out.push(entry);
    }
    return out.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
  }

  /**
   * Removes every entry, leftover temp directory and spare RAM copy
   * (snapshot/ram_spares.ts); returns the number of entries removed.
   */
  clear(): number {
    new RamSpares(this.root).clear();
    let n = 0;
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(this.root)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return 0;
      throw e;
    }
    for (const ent of names) {
      const isEntry = KEY_RE.test(ent.name);
      if (!isEntry && !ent.name.startsWith(".tmp-")) continue;
      try {
        Deno.removeSync(join(this.root, ent.name), { recursive: true });
        if (isEntry) n++;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    return n;
  }
}

/**
 * Marks a cache entry as used now (its directory's mtime, which orders
 * {@link SnapshotCache.prune}): a cache hit, or a restore of a running VM's
 * snapshot by its directory. Only an entry of the cache at `root` (default:
 * the default cache) is touched: a directory of the caller's own is left as
 * it is. Never throws (a read-only cache only orders less well).
 */
export function touchEntry(dir: string, root?: string): void {
  try {
    const d = resolve(dir);
    if (dirname(d) !== resolve(root ?? defaultSnapshotDir()) || !KEY_RE.test(basename(d))) return;
    const now = new Date();
    Deno.utimeSync(d, now, now);
  } catch {
    // not ours to touch, or no cache directory
  }
}

/** Bytes allocated on disk by the files of a snapshot directory (either engine's). */
function diskUsage(dir: string): number {
  let total = 0;
  try {
    for (const ent of Deno.readDirSync(dir)) {
      if (!ent.isFile) continue;
      try {
        const st = Deno.statSync(join(dir, ent.name));
        total += st.blocks !== null ? st.blocks * 512 : st.size;
      } catch {
        // removed meanwhile: counted as nothing
      }
    }
  } catch {
    // unreadable directory: counted as nothing
  }
  return total;
}
