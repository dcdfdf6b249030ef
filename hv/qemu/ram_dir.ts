/**
 * The tmpfs directory of one qemu-engine VM's guest RAM file (persist.ts
 * captures and restores through it), and the sweep of those a killed skiff
 * left behind.
 *
 * @module
 */

import { join } from "node:path";

/** Name prefix of {@link QemuRamDir}s: `skiff-ram-<pid>-<random>`. */
const RAM_DIR_PREFIX = "skiff-ram-";

/**
 * A private (0700) directory on tmpfs for one VM's guest RAM file, plus
 * whatever staging a capture needs beside it. Disposing removes it.
 */
export class QemuRamDir implements Disposable {
  /** The directory. */
  readonly dir: string;
  /** Where the guest RAM file goes (`<dir>/ram`; QEMU or a restore creates it). */
  readonly ramFile: string;

  private constructor(dir: string) {
    this.dir = dir;
    this.ramFile = join(dir, "ram");
  }

  /**
   * Creates the directory under `root` (default `/dev/shm`, tmpfs on Linux:
   * a shared file mapping on a disk file system would write guest RAM back
   * to disk). Its name carries this process's pid, for {@link sweep}.
   */
  static create(root = "/dev/shm"): QemuRamDir {
    let dir: string;
    try {
      dir = Deno.makeTempDirSync({ dir: root, prefix: `${RAM_DIR_PREFIX}${Deno.pid}-` });
      Deno.chmodSync(dir, 0o700);
    } catch (e) {
      throw new Error(`cannot create a RAM directory in ${root}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    return new QemuRamDir(dir);
  }

  /**
   * Removes the RAM directories under `root` whose creating process is gone
   * (a skiff killed with SIGKILL cannot clean up, and tmpfs holds guest RAM
   * in memory until the files are removed). Returns the paths removed.
   */
  static sweep(root = "/dev/shm"): string[] {
    const removed: string[] = [];
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(root)];
    } catch {
      return removed;
    }
    for (const ent of names) {
      const m = new RegExp(`^${RAM_DIR_PREFIX}(\\d+)-`).exec(ent.name);
      if (!m || !ent.isDirectory) continue;
      try {
        Deno.statSync(`/proc/${m[1]}`);
        continue; // its process still runs
      } catch {
        // gone
      }
      try {
        Deno.removeSync(join(root, ent.name), { recursive: true });
        removed.push(join(root, ent.name));
      } catch {
        // another sweeper was first, or not ours to remove
      }
    }
    return removed;
  }

  /** Removes the directory and everything in it. Idempotent. */
  remove(): void {
    try {
      Deno.removeSync(this.dir, { recursive: true });
    } catch {
      // already gone
    }
  }

  /** {@link remove} for `using`. */
  [Symbol.dispose](): void {
    this.remove();
  }
}
