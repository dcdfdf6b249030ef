/**
 * Spare copies of qemu-engine cache entries' guest RAM, made ahead on tmpfs,
 * so that a cache hit takes a ready file instead of copying one.
 *
 * A restore cannot map the cached `ram` file itself: guest RAM must be a
 * shared mapping that the vhost-user back-ends map too, and the guest's
 * writes must not reach the cache (hv/qemu/persist.ts says why a
 * copy-on-write mapping does not work). So each restore needs a private
 * tmpfs copy of the entry's data (~66 MB for the default guest), and making
 * it was the last thing a hit waited for before the guest could run. A
 * running VM instead makes a spare for the next restore once its session is
 * ready (hv/qemu/engine.ts), and the next restore claims it with one
 * `rename(2)`.
 *
 * Layout: `<shm>/skiff-spare-<uid>-<hash of the cache root>/` (0700) holds `root`
 * (the cache root's path, so a sweep can tell when the cache is gone) and
 * `<ram digest hex>.ram` files, each a complete sparse copy of an entry's
 * `ram` whose manifest names that digest. A copy is written as
 * `.tmp-<pid>-…` and renamed into place only when complete, so a name is a
 * promise about the content — which is why a directory that is not this
 * user's own and private (another user can create names in a shared
 * /dev/shm) is never taken from. At most {@link MAX_SPARES} are kept per cache;
 * `SnapshotCache.clear()` (`skiff snapshot clear`) removes them all, and
 * {@link RamSpares.sweep} removes those of caches that no longer exist and
 * the temporary files of killed processes.
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { sha256Hex } from "./codec.ts";
import { copySparseInBackground, removeQuietly } from "./sparse_copy.ts";
import { processRunning } from "../hv/pid_dir.ts";

/** Spares kept per cache: the entries a user alternates between, bounded (each holds its entry's data bytes of tmpfs). */
export const MAX_SPARES = 2;
/**
 * Most RAM data (allocated bytes) an entry may have to get a spare: a spare
 * holds that much memory in tmpfs after skiff exits, which for a big guest
 * (1.1 GiB for `--memory 65536` doing nothing) is more than a faster next
 * hit is worth; such an entry's hits copy its RAM instead. The default
 * guest's is ~66 MB.
 */
export const MAX_SPARE_DATA_BYTES = 512 * 2 ** 20;

const DIR_PREFIX = "skiff-spare-";
/** Where a spare directory is made before it is renamed into place: `skiff-sparetmp-<uid>-<pid>-…`. */
const TMP_DIR_PREFIX = "skiff-sparetmp-";
const TMP_PREFIX = ".tmp-";
const SUFFIX = ".ram";
const DIGEST_RE = /^sha256:([0-9a-f]{64})$/;
/** A temporary copy's name, with the pid of the process writing it. */
const TMP_RE = new RegExp(`^\\${TMP_PREFIX}(\\d+)-`);

/** The spares of one snapshot cache. */
export class RamSpares {
  /** The spare directory on tmpfs. */
  readonly dir: string;
  /** The cache root it belongs to (absolute). */
  readonly cacheRoot: string;

  /** Most RAM data an entry may have to get a spare ({@link MAX_SPARE_DATA_BYTES}). */
  readonly maxDataBytes: number;

  /**
   * `shmRoot`: the tmpfs the VMs' RAM files live on (it must be the same file
   * system: a spare is claimed by rename).
   */
  constructor(cacheRoot: string, shmRoot = "/dev/shm", maxDataBytes = MAX_SPARE_DATA_BYTES) {
    this.cacheRoot = resolve(cacheRoot);
    this.maxDataBytes = maxDataBytes;
    // skiff's own SHA-256: node:crypto is not loaded on a cache hit (codec.ts).
    const tag = sha256Hex(this.cacheRoot).slice(0, 16);
    this.dir = join(shmRoot, `${DIR_PREFIX}${Deno.uid() ?? 0}-${tag}`);
  }

  /**
   * Moves the newest spare of exactly `size` bytes to `target` (which must
   * not exist; same file system) and returns the RAM digest it holds
   * (`sha256:…`), or null when there is none. Another process claiming at
   * the same time gets a different spare or none.
   */
  claim(size: number, target: string): string | null {
    if (!this.#private()) return null;
    for (const spare of this.#spares()) {
      if (spare.size !== size) continue;
      try {
        Deno.renameSync(spare.path, target);
      } catch {
        continue; // another restore was first
      }
      return `sha256:${spare.name.slice(0, -SUFFIX.length)}`;
    }
    return null;
  }

  /**
   * Makes a spare of an entry's `ram` file (`digest` as its manifest gives
   * it) unless one is there already; then keeps the newest
   * {@link MAX_SPARES}. Refuses (rejects) an entry with more RAM data than
   * {@link MAX_SPARE_DATA_BYTES}. The copy runs on the thread pool; the promise
   * settles when it is in place (or rejects: nothing is left behind).
   */
  async replenish(ramPath: string, digest: string): Promise<void> {
    const m = DIGEST_RE.exec(digest);
    if (!m) throw new RangeError(`not a RAM digest: ${JSON.stringify(digest)}`);
    const final = join(this.dir, `${m[1]}${SUFFIX}`);
    try {
      Deno.statSync(final);
      return; // one is ready
    } catch {
      // none yet
    }
    this.#ensureDir();
    if (!this.#private()) {
      throw new Error(`${this.dir} is not a private directory of this user; no spare made`);
    }
    const st = Deno.statSync(ramPath);
    const data = st.blocks !== null ? st.blocks * 512 : st.size;
    if (data > this.maxDataBytes) {
      throw new Error(
        `its RAM data (${(data / 2 ** 20).toFixed(1)} MiB) is more than a spare holds ` +
          `(${(this.maxDataBytes / 2 ** 20).toFixed(1)} MiB of tmpfs)`,
      );
    }
    const tmp = join(
      this.dir,
      `${TMP_PREFIX}${Deno.pid}-${crypto.randomUUID().slice(0, 8)}${SUFFIX}`,
    );
    await copySparseInBackground(ramPath, tmp); // removes tmp if it fails
    try {
      Deno.renameSync(tmp, final);
    } catch (e) {
      Deno.removeSync(tmp);
      throw e;
    }
    this.#prune();
  }

  /** Removes every spare of this cache. */
  clear(): void {
    try {
      Deno.removeSync(this.dir, { recursive: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  /**
   * Under `shmRoot`: removes this user's spare directories whose cache root
   * is gone (or unrecorded), directories half made by a process that is
   * gone, and, in the others, temporary copies whose process is gone (a
   * skiff killed mid-copy). Returns the paths removed.
   */
  static sweep(shmRoot = "/dev/shm"): string[] {
    const removed: string[] = [];
    const mine = `${DIR_PREFIX}${Deno.uid() ?? 0}-`;
    const making = new RegExp(`^${TMP_DIR_PREFIX}${Deno.uid() ?? 0}-(\\d+)-`);
    for (const dir of listNames(shmRoot)) {
      const maker = making.exec(dir)?.[1];
      if (maker !== undefined && !processRunning(maker)) {
        if (removeQuietly(join(shmRoot, dir), true)) removed.push(join(shmRoot, dir));
        continue;
      }
      if (!dir.startsWith(mine)) continue;
      const path = join(shmRoot, dir);
      let root: string | null = null;
      try {
        root = Deno.readTextFileSync(join(path, "root"));
        Deno.statSync(root);
      } catch {
        root = null;
      }
      if (root === null) {
        if (removeQuietly(path, true)) removed.push(path);
        continue;
      }
      for (const name of listNames(path)) {
        const pid = TMP_RE.exec(name)?.[1];
        if (pid === undefined || processRunning(pid)) continue;
        if (removeQuietly(join(path, name))) removed.push(join(path, name));
      }
    }
    return removed;
  }

  /** The directory is a real one (no symlink), this user's, and closed to others. */
  #private(): boolean {
    try {
      const st = Deno.lstatSync(this.dir);
      return st.isDirectory && st.uid === Deno.uid() && ((st.mode ?? 0) & 0o077) === 0;
    } catch {
      return false;
    }
  }

  /** The complete spares (files named `<digest>.ram`), newest first. */
  #spares(): { name: string; path: string; size: number }[] {
    const spares: { name: string; path: string; size: number; mtime: number }[] = [];
    for (const name of listNames(this.dir)) {
      if (!name.endsWith(SUFFIX) || name.startsWith(".")) continue;
      const path = join(this.dir, name);
      try {
        const st = Deno.statSync(path);
        if (st.isFile) spares.push({ name, path, size: st.size, mtime: st.mtime?.getTime() ?? 0 });
      } catch {
        // claimed meanwhile
      }
    }
    return spares.sort((a, b) => b.mtime - a.mtime);
  }

  /**
   * Creates the directory with its `root` file in one step (made aside and
   * renamed into place): a sweep in another process removes a spare
   * directory without `root`, and must never see a new one half made.
   */
  #ensureDir(): void {
    try {
      if (Deno.readTextFileSync(join(this.dir, "root")) === this.cacheRoot) return;
    } catch {
      // not made yet
    }
    const parent = dirname(this.dir);
    const tmp = Deno.makeTempDirSync({
      dir: parent,
      prefix: `${TMP_DIR_PREFIX}${Deno.uid() ?? 0}-${Deno.pid}-`,
    }); // 0700
    try {
      Deno.writeTextFileSync(join(tmp, "root"), this.cacheRoot, { mode: 0o600 });
      Deno.renameSync(tmp, this.dir);
    } catch {
      Deno.removeSync(tmp, { recursive: true }); // another process made it first
    }
  }

  /** Keeps the newest {@link MAX_SPARES} spares. */
  #prune(): void {
    for (const { path } of this.#spares().slice(MAX_SPARES)) removeQuietly(path);
  }
}

function listNames(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return [];
  }
}
