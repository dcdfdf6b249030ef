/**
 * The tmpfs directory of one qemu-engine VM's guest RAM file (persist.ts
 * captures and restores through it), and the sweep of those a killed skiff
 * left behind.
 *
 * @module
 */

import { join } from "node:path";
import { makePidDir, sweepPidDirs } from "../pid_dir.ts";

/** Name prefix of {@link QemuRamDir}s: `skiff-ram-<pid>n<pid namespace>-<random>` (hv/pid_dir.ts). */
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
    try {
      return new QemuRamDir(makePidDir(root, RAM_DIR_PREFIX));
    } catch (e) {
      throw new Error(`cannot create a RAM directory in ${root}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }

  /**
   * Removes the RAM directories under `root` whose creating process is gone
   * (a skiff killed with SIGKILL cannot clean up, and tmpfs holds guest RAM
   * in memory until the files are removed). Returns the paths removed.
   */
  static sweep(root = "/dev/shm"): string[] {
    return sweepPidDirs(root, RAM_DIR_PREFIX);
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
