/**
 * The engine interface: what `skiff run`, `skiff boot` and the library need
 * from a VMM. Two implementations: `kvm` (skiff's own VMM over /dev/kvm) and
 * `qemu` (skiff drives a QEMU process, as Kata drives Cloud Hypervisor).
 * Everything above the CPU — kernel, init, initramfs, FUSE server, console
 * protocol, network stack — is skiff's in both.
 *
 * @module
 */

/** A host directory shared with the guest over virtio-fs. */
export interface Share {
  /** virtio-fs tag (unique per VM, ≤ 36 bytes: virtio 1.2 §5.11.4). */
  tag: string;
  /** Absolute host path. */
  hostPath: string;
  /** Absolute guest path where the init mounts it; "/" is the root share. */
  guestPath: string;
  /** Mutations fail with EROFS on the host side. */
  readOnly: boolean;
  /** Root-share policy: do not cross host mount points (other devices show empty). */
  stayOnDevice?: boolean;
  /** Host paths (absolute) hidden from the guest (shown as empty directories). */
  hide?: string[];
  /**
   * An image root instead of a host directory: these unpacked layers (bottom
   * first) merged read-only (`hostPath` is then only an existing directory, the
   * image store). The manifest digest is part of the snapshot key.
   */
  image?: { name: string; manifestDigest: string; layers: string[] };
}

/** A `--publish [HOSTIP:]HOSTPORT:GUESTPORT[/udp]` rule. */
export interface PortForward {
  hostIp: string;
  hostPort: number;
  guestPort: number;
  protocol: "tcp" | "udp";
}

/** `--net` options: the guest gets a virtio-net NIC behind skiff's user-mode stack. */
export interface NetOptions {
  /** Host loopback reachable from the guest at the gateway address (`--net=host-loopback`). */
  hostLoopback: boolean;
  /** Ports published from the host into the guest. */
  publish: PortForward[];
}

/** Everything that shapes a booted VM (and so keys the snapshot cache). */
export interface VmConfig {
  /** Kernel override (`--kernel`): bzImage or ELF vmlinux; default: the cached Debian kernel. */
  kernel?: string;
  /** Modules directory override (`--modules`). */
  modules?: string;
  /** vCPU count (≥ 1). */
  cpus: number;
  /** Guest RAM in MiB. */
  memoryMiB: number;
  /** Appended to the kernel command line. */
  cmdlineExtra: string;
  /** The root share (host `/` read-only with a tmpfs overlay by default), or null for the initramfs. */
  root: Share | null;
  /** Additional shares (`--volume`). */
  volumes: Share[];
  /** Networking, or null for loopback only. */
  net: NetOptions | null;
  /** Guest hostname. */
  hostname: string;
  /** Print progress and engine choice on stderr. */
  verbose: boolean;
}

/** The command to run in the guest. */
export interface Workload {
  argv: string[];
  env: Record<string, string>;
  /** Absolute guest working directory. */
  workdir: string;
  /** Run as this user instead of root (`--user`, an image's `User`). */
  user?: { uid: number; gid: number; groups: number[] };
}

/** Host streams carrying the workload's standard streams. */
export interface WorkloadIO {
  /** Forwarded to the guest command's stdin (null: the guest sees EOF at once). */
  stdin: ReadableStream<Uint8Array> | null;
  stdout: WritableStream<Uint8Array>;
  stderr: WritableStream<Uint8Array>;
}

/** How the guest command ended. */
export type ExitStatus =
  | { kind: "exited"; code: number }
  | { kind: "signaled"; signal: number };

/** Exit code of `skiff run` when `--timeout` expires (as coreutils `timeout`). */
export const EXIT_TIMEOUT = 124;
/** Exit code for skiff's own failures: bad usage, missing kernel, VM failure. */
export const EXIT_FAILURE = 125;

/** The process exit code for a status: the code, or 128+N for signal N (as shells do). */
export function exitCodeOf(status: ExitStatus): number {
  return status.kind === "exited" ? status.code : 128 + status.signal;
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

/** Base class of skiff's typed errors. */
export class SkiffError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The VM failed: guest stopped inside the kernel, VMM error, engine crashed. */
export class VmError extends SkiffError {}

/** The guest stopped on an exit skiff cannot continue from (emulation error, triple fault…). */
export class VmExitError extends VmError {
  /** Exit reason, e.g. `KVM_EXIT_INTERNAL_ERROR (emulation failure)`. */
  readonly reason: string;
  /** Guest RIP at the exit, when known. */
  readonly rip?: bigint;
  constructor(reason: string, rip?: bigint, detail = "") {
    const at = rip === undefined ? "" : ` at RIP 0x${rip.toString(16)}`;
    super(`guest stopped: ${reason}${at}${detail ? ` ${detail}` : ""}`);
    this.reason = reason;
    this.rip = rip;
  }
}

/** `--timeout` expired; the VM was stopped. */
export class VmTimeoutError extends VmError {
  constructor(readonly seconds: number) {
    super(`timed out after ${seconds} s; the VM was stopped`);
  }
}

/** No engine can run guests here, or the chosen one is unavailable. */
export class EngineUnavailableError extends SkiffError {}

/** Invalid configuration (bad share path, bad port spec, …), found before boot. */
export class ConfigError extends SkiffError {}
