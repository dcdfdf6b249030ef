/**
 * A running VM as both engines return it: commands, files and stats go to
 * the guest agent (init/agent) through its client; the machine itself
 * (capture, stop, its death) is the engine's. Every call also ends when the
 * machine does, with the machine's error.
 *
 * Every error a call rejects with is a `SkiffError` (the agent client's are
 * `AgentError`s, which are), except its own signal's reason when it was
 * aborted: a vsock connection that fails becomes a `VmError` ("the VM was
 * stopped" once {@link AgentVm.stop} was called).
 *
 * @module
 */

import { type AgentClient, READ_FILE_DEFAULT_MAX_BYTES } from "../../init/agent/client.ts";
import { AgentProtocolError } from "../../init/agent/errors.ts";
import { VsockError } from "../../devices/virtio/vsock/connection.ts";
import { GUEST_PATH, MAX_TIMER_MS, type VmConfig } from "../config.ts";
import { CommandTimeoutError, ConfigError, SkiffError, VmError } from "../errors.ts";
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

/** Largest `timeoutMs`: the longest timer. */
export const MAX_TIMEOUT_MS = MAX_TIMER_MS;

/**
 * How long a call that lost its vsock connection waits for the machine's own
 * end (a dying VM resets its connections before the engine reports why).
 */
const HALT_GRACE_MS = 250;

/** Throws a {@link ConfigError} unless `ms` is a usable `timeoutMs`. */
export function checkTimeoutMs(ms: unknown): number {
  if (typeof ms !== "number" || !(ms > 0 && ms <= MAX_TIMEOUT_MS)) {
    throw new ConfigError(
      `timeoutMs: expected a positive number of milliseconds up to ${MAX_TIMEOUT_MS}, got ${
        String(ms)
      }`,
    );
  }
  return ms;
}

/** Throws a {@link ConfigError} unless `n` is a usable `maxBytes`. */
export function checkMaxBytes(n: unknown): number {
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) {
    throw new ConfigError(`maxBytes: expected a non-negative integer number of bytes, got ${n}`);
  }
  return n;
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

  /**
   * `p`, or the machine's end if that comes first; a failure as
   * {@link AgentVm.#callError} maps it.
   */
  async #guard<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await Promise.race([p, this.#halted]);
    } catch (e) {
      throw await this.#callError(e, signal);
    }
  }

  /**
   * What a call rejects with for `e`: the signal's reason and skiff's own
   * errors as they are; a lost connection (vsock failure, the agent's reply
   * cut short) as "the VM was stopped" after {@link stop}, else as the
   * machine's end if it comes within {@link HALT_GRACE_MS}, else as a
   * `VmError` (vsock) or the protocol error itself.
   */
  async #callError(e: unknown, signal?: AbortSignal): Promise<unknown> {
    if (signal?.aborted && e === signal.reason) return e;
    const lost = e instanceof VsockError || (e instanceof Error && e.name === "VsockError") ||
      e instanceof AgentProtocolError;
    if (!lost) return e;
    if (this.#stopping) return new VmError("the VM was stopped", { cause: e });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const halted = await Promise.race([
      this.#halted.catch((h) => h as unknown),
      new Promise<null>((r) => timer = setTimeout(() => r(null), HALT_GRACE_MS)),
    ]);
    clearTimeout(timer);
    if (halted !== null) return halted;
    if (e instanceof SkiffError) return e;
    return new VmError(
      `the connection to the guest agent failed: ${(e as Error).message}`,
      { cause: e },
    );
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
    return this.#guard(
      this.#agent.spawn(argv, {
        ...this.#spawnOptions(o),
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
        signal: o.signal,
      }),
      o.signal,
    );
  }

  /**
   * Runs `argv` to its end. With `timeoutMs` (a positive number up to
   * {@link MAX_TIMEOUT_MS}, else a `ConfigError` before anything is sent) the
   * command is killed when it expires and this rejects with a
   * `CommandTimeoutError` (a `VmTimeoutError`); the VM goes on.
   */
  async exec(argv: readonly string[], o: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = o.timeoutMs === undefined ? undefined : checkTimeoutMs(o.timeoutMs);
    const timeout = timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs);
    const signals = [o.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    try {
      return await this.#guard(
        this.#agent.exec(argv, {
          ...this.#spawnOptions(o),
          stdin: o.stdin,
          signal,
        }),
        signal,
      );
    } catch (e) {
      if (timeout?.aborted && !o.signal?.aborted && e === signal?.reason) {
        throw new CommandTimeoutError(timeoutMs! / 1000, { cause: e });
      }
      throw e;
    }
  }

  writeFile(
    path: string,
    data: Uint8Array | string | ReadableStream<Uint8Array>,
    o: { mode?: number; signal?: AbortSignal } = {},
  ): Promise<void> {
    return this.#guard(
      this.#agent.writeFile(path, data, {
        mode: o.mode ?? 0o644,
        root: this.#root,
        signal: o.signal,
      }),
      o.signal,
    );
  }

  /**
   * Reads `path` from the guest, at most `maxBytes` (default 1 GiB; else a
   * `ConfigError`): a larger or endless file rejects with a
   * `FileTooLargeError` once it exceeds it, and the read stops.
   */
  readFile(
    path: string,
    o: { maxBytes?: number; signal?: AbortSignal } = {},
  ): Promise<Uint8Array> {
    try {
      const maxBytes = checkMaxBytes(o.maxBytes ?? READ_FILE_DEFAULT_MAX_BYTES);
      return this.#guard(
        this.#agent.readFile(path, { root: this.#root, maxBytes, signal: o.signal }),
        o.signal,
      );
    } catch (e) {
      return Promise.reject(e);
    }
  }

  stats(o: { signal?: AbortSignal } = {}): Promise<VmStats> {
    return this.#guard(this.#agent.stats({ signal: o.signal }), o.signal);
  }

  snapshot(o: { dir?: string; signal?: AbortSignal } = {}): Promise<SnapshotRef> {
    return this.#guard(this.#machine.snapshot(o), o.signal);
  }

  stop(): Promise<void> {
    return this.#stopping ??= this.#machine.stop();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
