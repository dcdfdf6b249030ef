/**
 * The main thread's handle on one vCPU: its fd (for register setup and for
 * reading state while it is paused) and the Worker that runs its `KVM_RUN`
 * loop. Run states: `created` → `running` ⇄ `paused` → `stopped`.
 *
 * @module
 */

import type { VcpuFd } from "../kvm_ffi/kvm.ts";
import { installKickHandler, kickThread } from "./kick.ts";
import { KVM_RUN_LAYOUT } from "../kvm_ffi/kvm_sys.ts";
import {
  CMD,
  CTL,
  CTL_BYTES,
  STATE,
  type VcpuStop,
  type WorkerInit,
  type WorkerMessage,
} from "./worker_protocol.ts";
import { type VcpuWorker, vcpuWorkers } from "./vcpu_worker.ts";

/** A vCPU's run state as the host sees it. */
export type RunState = "created" | "running" | "paused" | "stopped";

/** Called for each message a device posts from this vCPU's Worker. */
export type DeviceMessageHandler = (name: string, message: unknown, vcpuId: number) => void;

/** One vCPU and its Worker. Create it with `Vm.createVcpu`. */
export class Vcpu {
  /** The vCPU fd: set registers before `start`, read state while paused or stopped. */
  readonly fd: VcpuFd;
  /** The vCPU id. */
  readonly id: number;
  /** Resolves with how the run ended (never rejects). */
  readonly done: Promise<VcpuStop>;
  #resolveDone!: (s: VcpuStop) => void;
  #control = new SharedArrayBuffer(CTL_BYTES);
  #ctl = new Int32Array(this.#control);
  #worker: VcpuWorker | null;
  #state: RunState = "created";
  #onPaused: (() => void)[] = [];
  #onDevice: DeviceMessageHandler;

  /**
   * @param worker the Worker to run on (already loading: `Vm.createVcpu` takes
   *   one from the pool at once, see vcpu_worker.ts); without one, `start`
   *   takes it
   */
  constructor(
    fd: VcpuFd,
    onDeviceMessage: DeviceMessageHandler = () => {},
    worker: VcpuWorker | null = null,
  ) {
    this.fd = fd;
    this.id = fd.id;
    this.#onDevice = onDeviceMessage;
    this.#worker = worker;
    this.done = new Promise((r) => (this.#resolveDone = r));
  }

  /** Current run state. */
  get state(): RunState {
    return this.#state;
  }

  /** Exits handled by the loop so far (diagnostics, benchmarks). */
  get exitCount(): number {
    return Atomics.load(this.#ctl, CTL.EXITS);
  }

  /**
   * Starts the Worker and its `KVM_RUN` loop; resolves once the loop is
   * entered (devices instantiated). Rejects if the Worker could not start.
   */
  start(
    init: Omit<WorkerInit, "vcpu" | "control">,
    opts: { paused?: boolean } = {},
  ): Promise<void> {
    if (this.#state !== "created") {
      throw new Error(`vCPU ${this.id}: start in state ${this.#state}`);
    }
    installKickHandler();
    if (opts.paused) Atomics.store(this.#ctl, CTL.CMD, CMD.PAUSE);
    const worker = this.#worker ??= vcpuWorkers.take();
    this.#state = opts.paused ? "paused" : "running";
    return new Promise<void>((resolve) => {
      const message = (m: WorkerMessage) => {
        switch (m.type) {
          case "running":
            resolve();
            break;
          case "paused":
            this.#state = "paused";
            for (const f of this.#onPaused.splice(0)) f();
            break;
          case "resumed":
            if (this.#state === "paused") this.#state = "running";
            break;
          case "device":
            this.#onDevice(m.name, m.message, this.id);
            break;
          case "stopped":
            // The loop ended and the Worker waits for its next vCPU: reusable.
            this.#finish(m.stop, true);
            resolve();
            break;
        }
      };
      const error = (why: string) => {
        this.#finish({ kind: "error", reason: `vCPU ${this.id} worker failed: ${why}` }, false);
        resolve();
      };
      const full: WorkerInit = { ...init, vcpu: this.fd.toRaw(), control: this.#control };
      worker.run(full, { message, error });
    });
  }

  /** Ends the vCPU; its Worker goes back to the pool when `reusable`, else it is terminated. */
  #finish(stop: VcpuStop, reusable: boolean): void {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    for (const f of this.#onPaused.splice(0)) f();
    const w = this.#worker;
    this.#worker = null;
    if (w) {
      if (reusable) vcpuWorkers.give(w);
      else w.terminate();
    }
    this.#resolveDone(stop);
  }

  /** Sets the command and kicks the thread out of KVM_RUN. */
  #command(cmd: number): void {
    Atomics.store(this.#ctl, CTL.CMD, cmd);
    // immediate_exit after the command: the loop clears it before reading the command.
    this.fd.run[KVM_RUN_LAYOUT.fields.immediate_exit] = 1;
    Atomics.notify(this.#ctl, CTL.CMD);
    const tid = Atomics.load(this.#ctl, CTL.TID);
    if (tid > 0 && Atomics.load(this.#ctl, CTL.STATE) === STATE.RUNNING) {
      try {
        kickThread(tid);
      } catch {
        // the thread already exited (ESRCH): its stop message is on the way
      }
    }
  }

  /** Stops the guest at the next exit boundary; resolves once it is paused. */
  pause(): Promise<void> {
    if (this.#state === "stopped" || this.#state === "created") {
      return Promise.reject(new Error(`vCPU ${this.id}: pause in state ${this.#state}`));
    }
    if (this.#state === "paused" && Atomics.load(this.#ctl, CTL.STATE) === STATE.PAUSED) {
      return Promise.resolve();
    }
    const p = new Promise<void>((r) => this.#onPaused.push(r));
    this.#command(CMD.PAUSE);
    return p;
  }

  /** Continues a paused vCPU. */
  resume(): void {
    if (this.#state !== "paused") {
      throw new Error(`vCPU ${this.id}: resume in state ${this.#state}`);
    }
    Atomics.store(this.#ctl, CTL.CMD, CMD.RUN);
    Atomics.notify(this.#ctl, CTL.CMD);
    this.#state = "running";
  }

  /** Asks the loop to end (without waiting). */
  requestStop(): void {
    if (this.#state === "stopped") return;
    if (this.#state === "created") {
      this.#finish({ kind: "stopped" }, true); // its Worker never got a vCPU
      return;
    }
    this.#command(CMD.STOP);
  }

  /** Ends the run and resolves with how it ended (`stopped`, unless it had already ended). */
  stop(): Promise<VcpuStop> {
    this.requestStop();
    return this.done;
  }
}
