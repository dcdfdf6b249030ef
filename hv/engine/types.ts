/**
 * The engine interface: what `skiff run`, `skiff boot` and the library need
 * from a VMM. Two implementations: `kvm` (skiff's own VMM over /dev/kvm) and
 * `qemu` (skiff drives a QEMU process, as Kata drives Cloud Hypervisor).
 * Everything above the CPU — kernel, init, initramfs, FUSE server, console
 * protocol, network stack — is skiff's in both.
 *
 * @module
 */

import type { ExitStatus, VmConfig } from "../config.ts";
import type {
  AgentChild,
  AgentExecResult,
  AgentSignal,
  AgentStats,
  AgentStatus,
} from "../../init/agent/client.ts";

/** Host streams carrying the workload's standard streams. */
export interface WorkloadIO {
  /** Forwarded to the guest command's stdin (null: the guest sees EOF at once). */
  stdin: ReadableStream<Uint8Array> | null;
  stdout: WritableStream<Uint8Array>;
  stderr: WritableStream<Uint8Array>;
}

/** Options for an interactive console session (`skiff boot`). */
export interface ConsoleIO {
  input: ReadableStream<Uint8Array>;
  output: WritableStream<Uint8Array>;
  /** Current terminal size, and a way to learn of changes. */
  size?: () => { columns: number; rows: number };
  onResize?: (listener: () => void) => () => void;
}

/** How a guest process ended: its code (128 + N when signal N killed it), the signal, success. */
export type ProcessStatus = AgentStatus;
/** A process in the guest with its own streams (`vm.spawn`); disposing it kills it. */
export type GuestProcess = AgentChild;
/** What `vm.exec` resolves to: the status and the whole output, as bytes and text. */
export type ExecResult = AgentExecResult;
/** A signal by name (`"SIGTERM"`) or number. */
export type GuestSignal = AgentSignal;
/** `vm.stats()`: guest memory in use and in all, CPU time since boot, process count. */
export type VmStats = AgentStats;

/** A user to run a guest command as. */
export interface GuestUser {
  uid: number;
  gid: number;
  /** Supplementary groups (default none). */
  groups?: number[];
}

/** Options of {@link RunningVm.spawn}. */
export interface SpawnOptions {
  /** Environment (default: PATH and HOME of {@link GUEST_PATH}; an image's Env). */
  env?: Record<string, string>;
  /** Working directory (default "/"; an image's WorkingDir). */
  cwd?: string;
  /** Run as this user (default root; an image's User). */
  user?: GuestUser;
  /** "piped" gives a writable `stdin`; "null" (default) is /dev/null. */
  stdin?: "piped" | "null";
  /** "piped" (default) gives a readable stream; "null" discards. */
  stdout?: "piped" | "null";
  /** "piped" (default), "null", or "stdout" (the same stream as stdout). */
  stderr?: "piped" | "null" | "stdout";
  /** Aborting kills the process (its whole process group). */
  signal?: AbortSignal;
}

/** Options of {@link RunningVm.exec}. */
export interface ExecOptions extends Omit<SpawnOptions, "stdin" | "stdout" | "stderr"> {
  /** Bytes (or text) for stdin; absent: /dev/null. */
  stdin?: Uint8Array | string;
  /** Kill the process after this many milliseconds (rejects with a `VmTimeoutError`). */
  timeoutMs?: number;
}

/** Where a running VM came from. */
export interface VmOrigin {
  /** `snapshot`: restored (from the cache or a snapshot given); `boot`: cold-booted. */
  from: "snapshot" | "boot";
  /** Whether this boot published a new cache entry. */
  captured: boolean;
  /** The snapshot cache key, or null with the cache off. */
  key: string | null;
  /** Milliseconds from the start of the boot until the guest was ready for commands. */
  readyMs: number;
}

/** A captured VM: a snapshot directory and the engine that can restore it. */
export interface SnapshotRef {
  engine: "kvm" | "qemu";
  /** The snapshot's directory (in the cache, or one the caller gave). */
  dir: string;
  /** The configuration the VM was booted with (shares are attached again on restore). */
  config: VmConfig;
}

/** Options of {@link Engine.boot} and {@link Engine.restore}. */
export interface BootOptions {
  /** Aborting stops the boot (and the VM, if it is up). */
  signal?: AbortSignal;
  /** Use the snapshot cache (default true): restore from it, or capture into it after a boot. */
  snapshot?: boolean;
  /** Progress lines (`--verbose`). */
  log?: (line: string) => void;
  /**
   * Lines the user needs without `--verbose` (the host port the OS picked for
   * a `--publish` of port 0); `skiff run` prints them on stderr, a library
   * caller gets them only if it asks.
   */
  notice?: (line: string) => void;
}

/** A booted VM whose guest agent takes commands, until {@link RunningVm.stop}. */
export interface RunningVm extends AsyncDisposable {
  /** The engine running it. */
  readonly engine: "kvm" | "qemu";
  /** How it came to be. */
  readonly origin: VmOrigin;
  /** Its configuration. */
  readonly config: VmConfig;
  /** Starts `argv` with its own streams. */
  spawn(argv: readonly string[], options?: SpawnOptions): Promise<GuestProcess>;
  /** Runs `argv` to completion and collects its output. */
  exec(argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  /** Writes a file in the guest (byte-exact, any size; `mode` applied exactly, default 0o644). */
  writeFile(
    path: string,
    data: Uint8Array | string | ReadableStream<Uint8Array>,
    options?: { mode?: number; signal?: AbortSignal },
  ): Promise<void>;
  /** Reads a file of the guest. */
  readFile(
    path: string,
    options?: { maxBytes?: number; signal?: AbortSignal },
  ): Promise<Uint8Array>;
  /** Guest memory in use, CPU time, process count. */
  stats(options?: { signal?: AbortSignal }): Promise<VmStats>;
  /**
   * Captures the running VM (into `dir`, or the snapshot cache) and lets it
   * go on; the returned reference restores it with {@link Engine.restore}.
   */
  snapshot(options?: { dir?: string; signal?: AbortSignal }): Promise<SnapshotRef>;
  /** Stops the VM and releases everything. Idempotent. */
  stop(): Promise<void>;
  /** Settles when the VM has stopped, for whatever reason (rejects on a VM failure). */
  readonly stopped: Promise<void>;
}

/** A VMM that boots VMs and runs workloads in them. */
export interface Engine {
  /** "kvm" or "qemu". */
  readonly name: "kvm" | "qemu";
  /**
   * Boots a VM for `config` — restored from the snapshot cache when it holds
   * one — and resolves once its guest agent takes commands, with the
   * configuration's shares, network and host name set up.
   */
  boot(config: VmConfig, options?: BootOptions): Promise<RunningVm>;
  /** Restores a VM captured by {@link RunningVm.snapshot}; `config` may give other shares. */
  restore(snapshot: SnapshotRef, config?: VmConfig, options?: BootOptions): Promise<RunningVm>;
  /**
   * An interactive shell on the guest console with `io` as its terminal;
   * resolves when the shell exits (the VM is then stopped).
   */
  shell?(config: VmConfig, io: ConsoleIO, signal?: AbortSignal): Promise<ExitStatus>;
}
