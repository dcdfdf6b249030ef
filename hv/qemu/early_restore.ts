/**
 * A restore's QEMU started before the snapshot-cache lookup: `-incoming
 * defer -S` on an empty RAM file of the guest's size, which the restore then
 * fills (hv/qemu/persist.ts `restoreQemu`'s `started`). A hit is the common
 * case of `skiff run`, and QEMU's own start (≈50 ms here: libraries, TCG,
 * the machine) then overlaps the key's hashing and the lookup instead of
 * following them. A miss stops it before the cold boot, which makes its RAM
 * file afresh.
 *
 * @module
 */

import { timelineLine } from "../engine/timeline.ts";
import type { RamSpares } from "../../snapshot/ram_spares.ts";
import { QemuProcess, type QemuStartOptions } from "./process.ts";

/** The restore's QEMU, starting; {@link take} it for the restore or {@link drop} it. */
export class EarlyRestore {
  #started: Promise<QemuProcess> | null;
  #ramFile: string;
  /** Its `--verbose` timeline lines, logged when it is taken (a miss's timeline shows the cold boot's QEMU). */
  #held: string[] = [];
  #log: (line: string) => void;
  #taken = false;
  /** The RAM digest of the spare its RAM file is (snapshot/ram_spares.ts), or undefined for a hole. */
  readonly ramHolds: string | undefined;

  private constructor(
    start: QemuStartOptions & { ramFile: string },
    log: (line: string) => void,
    ramHolds: string | undefined,
  ) {
    this.ramHolds = ramHolds;
    this.#ramFile = start.ramFile;
    this.#log = log;
    this.#started = QemuProcess.start({
      ...start,
      machine: "q35",
      incoming: true,
      timeline: (event) => {
        const line = timelineLine(event);
        if (this.#taken) this.#log(line);
        else this.#held.push(line);
      },
    });
    this.#started.catch(() => {}); // whoever takes it sees the failure
  }

  /**
   * Makes `start.ramFile` (it must not exist) — the newest of `spares` of
   * `memoryMiB` MiB, most likely the entry the lookup will find, or else a
   * new file (0600, all a hole) — and starts QEMU on it with `start` as a
   * restore would.
   */
  static begin(
    start: QemuStartOptions & { ramFile: string },
    memoryMiB: number,
    log: (line: string) => void,
    spares?: RamSpares,
  ): EarlyRestore {
    const bytes = memoryMiB * 1024 * 1024;
    const holds = spares?.claim(bytes, start.ramFile) ?? undefined;
    if (holds === undefined) {
      Deno.writeFileSync(start.ramFile, new Uint8Array(0), { createNew: true, mode: 0o600 });
      Deno.truncateSync(start.ramFile, bytes);
    }
    return new EarlyRestore(start, log, holds);
  }

  /** The starting QEMU for `restoreQemu` (which owns it from then on), once; logs its timeline. */
  take(): Promise<QemuProcess> | undefined {
    const p = this.#started ?? undefined;
    this.#started = null;
    if (p) {
      this.#taken = true; // later lines (QMP up) are logged as they happen
      for (const line of this.#held.splice(0)) this.#log(line);
    }
    return p;
  }

  /** Unless it was taken: stops the QEMU and removes its RAM file (the cold boot's QEMU makes its own). */
  async drop(): Promise<void> {
    const p = this.#started;
    if (!p) return; // taken: the restore owns QEMU and the RAM file
    this.#started = null;
    await discardEarly(p, this.#ramFile);
  }
}

/**
 * Stops an early QEMU (if it started at all) and removes its RAM file: what
 * {@link EarlyRestore.drop} does, and a restore that gives up on one it took.
 */
export async function discardEarly(started: Promise<QemuProcess>, ramFile: string): Promise<void> {
  await started.then((q) => q.stop(0)).catch(() => {});
  await Deno.remove(ramFile).catch(() => {});
}
