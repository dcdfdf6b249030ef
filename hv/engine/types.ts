/**
 * The engine interface: what `skiff run`, `skiff boot` and the library need
 * from a VMM. Two implementations: `kvm` (skiff's own VMM over /dev/kvm) and
 * `qemu` (skiff drives a QEMU process, as Kata drives Cloud Hypervisor).
 * Everything above the CPU — kernel, init, initramfs, FUSE server, console
 * protocol, network stack — is skiff's in both.
 *
 * @module
 */

import type { ExitStatus, VmConfig, Workload } from "../config.ts";

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

/** A VMM that can run workloads. */
export interface Engine {
  /** "kvm" or "qemu". */
  readonly name: string;
  /**
   * Boots a VM for `config`, runs `workload` with `io`, and resolves to its
   * exit status once the VM has stopped and every resource is released.
   * Rejects with a {@link VmError} subclass on VM failure, timeout or abort.
   */
  run(
    config: VmConfig,
    workload: Workload,
    io: WorkloadIO,
    signal?: AbortSignal,
  ): Promise<ExitStatus>;
  /** Interactive shell on the guest console; resolves when the guest powers off. */
  shell?(config: VmConfig, io: ConsoleIO, signal?: AbortSignal): Promise<ExitStatus>;
}
