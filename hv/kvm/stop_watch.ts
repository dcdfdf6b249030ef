/**
 * Watches a VM's stop while a workload runs, so that a guest stop before the
 * command finished becomes one explained error.
 *
 * @module
 */

import { VmError } from "../errors.ts";
import { type VmStop } from "../vm.ts";
import { explainExit, lastLine } from "./emulated.ts";
import { KvmDevices } from "./device_manager.ts";

/**
 * The VM's stop, once it is known (the VM may be started later than the
 * watch is made): {@link rejection} rejects when it stops before the
 * command finished.
 */
export class StopWatch {
  #resolve!: (p: Promise<VmStop>) => void;
  /** Settles as the VM's `wait()` does. */
  readonly promise: Promise<VmStop>;
  #set = false;

  constructor() {
    this.promise = new Promise<Promise<VmStop>>((r) => (this.#resolve = r)).then((p) => p);
    this.promise.catch(() => {});
  }

  set(wait: Promise<VmStop>): void {
    if (this.#set) return;
    this.#set = true;
    wait.catch(() => {});
    this.#resolve(wait);
  }

  /** Rejects with a one-line VmError when the VM stops (an exit error is explained). */
  rejection(m: KvmDevices): Promise<never> {
    const p = this.promise.then((stop): never => {
      throw new VmError(
        `the guest stopped (${stop.kind}${stop.source ? ` from ${stop.source}` : ""}) ` +
          `before the command finished${lastLine(m.log())}`,
      );
    }, (e) => {
      throw explainExit(e, m.log(), m.emulated);
    });
    p.catch(() => {});
    return p;
  }

  dispose(): void {
    if (!this.#set) this.#resolve(new Promise<VmStop>(() => {}));
  }
}
