/**
 * A running VM as both engines return it: commands, files and stats go to
 * the guest agent (init/agent) through its client; the machine itself
 * (capture, stop, its death) is the engine's. Every call also ends when the
 * machine does, with the machine's error.
 *
 * @module
 */

import type { AgentClient } from "../../init/agent/client.ts";
import { GUEST_PATH, type VmConfig } from "../config.ts";
import { VmError, VmTimeoutError } from "../errors.ts";
import type {
  ExecOptions,
  ExecResult,
  GuestProcess,
  RunningVm,
  SnapshotRef,
  SpawnOptions,
  VmOrigin,
  VmStats,
} from "./types.ts";

/** What an engine contributes to a running VM: the machine. */
export interface VmMachine {
  /** Captures the VM (into `dir`, or the cache) and lets it go on. */
  snapshot(options: { dir?: string; signal?: AbortSignal }): Promise<SnapshotRef>;
  /** Stops the VM and releases every resource. Idempotent. */
  stop(): Promise<void>;
  /** Settles when the VM stopped (rejects with a `VmError` when it failed). */
  readonly stopped: Promise<void>;
}

/** Options of {@link AgentVm}. */
export interface AgentVmOptions {
  engine: "kvm" | "qemu";
  origin: VmOrigin;
  config: VmConfig;
  /** The guest agent's client (over the VM's vsock device). */
  agent: AgentClient;
  /** Where commands chroot ("" = the initramfs). */
  root: string;
  machine: VmMachine;
}

/** The default environment of a guest command. */
export function defaultGuestEnv(): Record<string, string> {
  return { PATH: GUEST_PATH, HOME: "/" };
}

/** A running VM driven through its guest agent. */
export class AgentVm implements RunningVm {
  readonly engine: "kvm" | "qemu";
  readonly origin: VmOrigin;
  readonly config: VmConfig;
  readonly stopped: Promise<void>;
  #agent: AgentClient;
  #root: string;
  #machine: VmMachine;
  #halted: Promise<never>;
  #stopping: Promise<void> | null = null;

  constructor(o: AgentVmOptions) {
    this.engine = o.engine;
    this.origin = o.origin;
    this.config = o.config;
    this.#agent = o.agent;
    this.#root = o.root;
    this.#machine = o.machine;
    this.stopped = o.machine.stopped;
    this.stopped.catch(() => {});
    // Rejects once the machine is gone, so that no call waits on a dead guest.
    this.#halted = this.stopped.then(
      () => {
        throw new VmError(
          this.#stopping ? "the VM was stopped" : "the VM stopped before the call finished",
        );
      },
      (e) => {
        throw e instanceof VmError ? e : new VmError(`the VM failed: ${(e as Error).message ?? e}`);
      },
    );
    this.#halted.catch(() => {});
  }

  /** `p`, or the machine's end if that comes first. */
  #guard<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.#halted]);
  }

  #spawnOptions(o: SpawnOptions | ExecOptions) {
    return {
      env: { ...defaultGuestEnv(), ...o.env },
      cwd: o.cwd ?? "/",
      root: this.#root,
      ...(o.user ? { uid: o.user.uid, gid: o.user.gid, groups: o.user.groups ?? [] } : {}),
    };
  }

  spawn(argv: readonly string[], o: SpawnOptions = {}): Promise<GuestProcess> {
    return this.#guard(this.#agent.spawn(argv, {
      ...this.#spawnOptions(o),
      stdin: o.stdin,
      stdout: o.stdout,
      stderr: o.stderr,
      signal: o.signal,
    }));
  }

  async exec(argv: readonly string[], o: ExecOptions = {}): Promise<ExecResult> {
    const timeout = o.timeoutMs === undefined ? undefined : AbortSignal.timeout(o.timeoutMs);
    const signals = [o.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    try {
      return await this.#guard(this.#agent.exec(argv, {
        ...this.#spawnOptions(o),
        stdin: o.stdin,
        signal,
      }));
    } catch (e) {
      if (timeout?.aborted && !o.signal?.aborted) {
        throw new VmTimeoutError(o.timeoutMs! / 1000);
      }
      throw e;
    }
  }

  writeFile(
    path: string,
    data: Uint8Array | string | ReadableStream<Uint8Array>,
    o: { mode?: number; signal?: AbortSignal } = {},
  ): Promise<void> {
    return this.#guard(this.#agent.writeFile(path, data, {
      mode: o.mode ?? 0o644,
      root: this.#root,
      signal: o.signal,
    }));
  }

  readFile(path: string, o: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    return this.#guard(this.#agent.readFile(path, { root: this.#root, signal: o.signal }));
  }

  stats(o: { signal?: AbortSignal } = {}): Promise<VmStats> {
    return this.#guard(this.#agent.stats({ signal: o.signal }));
  }

  snapshot(o: { dir?: string; signal?: AbortSignal } = {}): Promise<SnapshotRef> {
    return this.#guard(this.#machine.snapshot(o));
  }

  stop(): Promise<void> {
    return this.#stopping ??= this.#machine.stop();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
