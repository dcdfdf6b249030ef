/**
 * vCPU Workers started ahead of their vCPUs, and reused.
 *
 * Starting a Worker is the slowest step between a VM's setup and its first
 * `KVM_RUN` (measured here): `new Worker()` blocks the calling thread ~10 ms
 * while Deno builds the Worker's runtime, and the Worker then spends ~5–15 ms
 * loading `hv/worker.ts` and its imports. So:
 *
 * - `Vm.createVcpu` takes the vCPU's Worker at once ({@link VcpuWorkerPool.take}),
 *   and its modules load while the caller sets up registers, devices or
 *   snapshot state; `Vm.start` then only posts the vCPU to it.
 * - A Worker whose vCPU stopped cleanly goes back to the pool
 *   ({@link VcpuWorkerPool.give}) and serves the next vCPU without any
 *   start-up. By default the pool keeps none (each Worker ends with its VM,
 *   as before): an idle Worker keeps the process alive and is an open
 *   resource to Deno's test sanitizers. A process that starts VMs one after
 *   another (a server, a benchmark) keeps some with
 *   {@link VcpuWorkerPool.keepIdle} and ends them with
 *   {@link VcpuWorkerPool.drain}.
 * - {@link VcpuWorkerPool.prewarm} starts Workers before any VM exists (a
 *   restore calls it before reading the snapshot) for as long as the caller
 *   holds the returned lease.
 *
 * @module
 */

import { runtimeModuleUrl } from "./module_url.ts";
import type { WorkerInit, WorkerMessage } from "./worker_protocol.ts";

/** Who listens to a {@link VcpuWorker} while a vCPU uses it. */
export interface VcpuWorkerListener {
  /** A message from the Worker. */
  message(m: WorkerMessage): void;
  /** The Worker failed (its module did not load, or it threw outside its loop). */
  error(message: string): void;
}

/** One vCPU Worker: `hv/worker.ts` in its own thread, loaded or loading. */
export class VcpuWorker {
  #worker: Worker;
  #listener: VcpuWorkerListener | null = null;
  #error: string | null = null;
  #ended = false;

  /** Starts the Worker (blocks ~10 ms: see the module doc). */
  constructor() {
    this.#worker = new Worker(runtimeModuleUrl("hv/worker.ts"), { type: "module" });
    this.#worker.onmessage = (ev: MessageEvent<WorkerMessage>) => this.#listener?.message(ev.data);
    this.#worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#error ??= ev.message;
      this.#listener?.error(ev.message);
    };
  }

  /** Whether it failed (a failed Worker is never reused). */
  get failed(): boolean {
    return this.#error !== null;
  }

  /** Whether {@link terminate} ended it. */
  get ended(): boolean {
    return this.#ended;
  }

  /**
   * Hands the Worker to a vCPU: `listener` gets its messages from now on (an
   * error it had while idle is reported at once, asynchronously), and `init`
   * starts the vCPU's loop.
   */
  run(init: WorkerInit, listener: VcpuWorkerListener): void {
    if (this.#ended) throw new Error("VcpuWorker.run: the Worker was terminated");
    this.#listener = listener;
    const early = this.#error;
    if (early !== null) {
      queueMicrotask(() => listener.error(early));
      return;
    }
    this.#worker.postMessage(init);
  }

  /** Stops delivering messages (the vCPU is done with it). */
  detach(): void {
    this.#listener = null;
  }

  /** Ends the Worker's thread. Idempotent. */
  terminate(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#listener = null;
    this.#worker.terminate();
  }
}

/** The process's vCPU Workers not in use (see the module doc). */
export class VcpuWorkerPool {
  #idle: VcpuWorker[] = [];
  #keep = 0;
  #reserved = 0;
  #spawned = 0;

  /** Idle Workers now. */
  get idle(): number {
    return this.#idle.length;
  }

  /** Workers this pool has started so far (diagnostics, tests). */
  get spawned(): number {
    return this.#spawned;
  }

  /**
   * Keeps up to `n` Workers whose vCPU stopped, for the next vCPUs (default
   * 0). Idle Workers keep the process alive: call {@link drain} when done.
   */
  keepIdle(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`keepIdle(${n}): not a count`);
    this.#keep = n;
    this.#trim();
  }

  /** A Worker for a vCPU: an idle one, or a new one. */
  take(): VcpuWorker {
    for (let w = this.#idle.pop(); w; w = this.#idle.pop()) {
      if (!w.failed) return w;
      w.terminate();
    }
    return this.#spawn();
  }

  /**
   * Returns a Worker whose vCPU stopped cleanly (or never started): kept if
   * the pool wants it, else terminated. A failed or terminated one is dropped.
   */
  give(w: VcpuWorker): void {
    w.detach();
    if (w.failed || w.ended || this.#idle.length >= this.#keep + this.#reserved) {
      w.terminate();
      return;
    }
    this.#idle.push(w);
  }

  /**
   * Starts Workers until `n` are idle, and keeps `n` more than
   * {@link keepIdle} says until the lease is disposed; then the surplus idle
   * ones end. For a caller that knows a VM is coming (a restore, before it
   * reads the snapshot).
   */
  prewarm(n: number): Disposable {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`prewarm(${n}): not a count`);
    this.#reserved += n;
    while (this.#idle.length < n) this.#idle.push(this.#spawn());
    let done = false;
    return {
      [Symbol.dispose]: () => {
        if (done) return;
        done = true;
        this.#reserved -= n;
        this.#trim();
      },
    };
  }

  /** Ends every idle Worker and keeps none from now on. */
  drain(): void {
    this.#keep = 0;
    this.#trim();
  }

  #spawn(): VcpuWorker {
    this.#spawned++;
    return new VcpuWorker();
  }

  #trim(): void {
    while (this.#idle.length > this.#keep + this.#reserved) this.#idle.shift()!.terminate();
  }
}

/** The process-wide pool every {@link Vm} takes its vCPU Workers from. */
export const vcpuWorkers: VcpuWorkerPool = new VcpuWorkerPool();
