/**
 * What shapes a VM and its workload: shares, network, the VM configuration
 * (which keys the snapshot cache) and a workload's exit status. Plain data,
 * shared by every layer above the VM core.
 *
 * @module
 */

import { isAbsolute, posix, resolve } from "node:path";
import { ConfigError } from "./errors.ts";

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
  /** Host paths (absolute) hidden from the guest: absent there (ENOENT), with all below them. */
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

/** How the guest command ended. */
export type ExitStatus =
  | { kind: "exited"; code: number }
  | { kind: "signaled"; signal: number };

/** The process exit code for a status: the code, or 128+N for signal N (as shells do). */
export function exitCodeOf(status: ExitStatus): number {
  return status.kind === "exited" ? status.code : 128 + status.signal;
}

/**
 * Longest guest host name in bytes (UTF-8): the kernel's `__NEW_UTS_LEN`,
 * which the guest init and agent enforce too (init/agent/protocol.ts).
 */
export const MAX_HOSTNAME_BYTES = 64;

/**
 * Checks a guest host name before boot with the rule the guest side enforces
 * (1 to {@link MAX_HOSTNAME_BYTES} bytes), so a bad one fails before anything
 * starts; throws a {@link ConfigError} that starts with `what` (the flag).
 * Control characters (NUL ends the name the agent gets, a newline would add
 * lines to the guest's /etc/hosts) and whitespace are refused too.
 */
export function checkHostname(name: string, what = "--hostname"): void {
  if (typeof name !== "string") {
    throw new ConfigError(`${what}: expected a string, got ${typeof name}`);
  }
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x20\x7f]/.test(name)) {
    throw new ConfigError(
      `${what} ${JSON.stringify(name)}: control characters and whitespace are not allowed`,
    );
  }
  const n = new TextEncoder().encode(name).length;
  if (n < 1 || n > MAX_HOSTNAME_BYTES) {
    throw new ConfigError(
      `${what} '${name}': expected 1 to ${MAX_HOSTNAME_BYTES} bytes${n ? ` (it has ${n})` : ""}`,
    );
  }
}

/** Most vCPUs a VM takes (both engines; `skiff run --cpus`, the library's `cpus`). */
export const MAX_CPUS = 255;
/** Least guest RAM in MiB the engines take (a kernel of one's own; Debian's wants ~128). */
export const MIN_MEMORY_MIB = 64;
/** Most guest RAM in MiB `skiff run --memory` and the library's `memoryMiB` take. */
export const MAX_MEMORY_MIB = 65536;
/** Longest timer, in ms: setTimeout's delay is a signed 32-bit count (a longer one fires at once). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Default guest PATH. */
export const GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Host paths the root share hides (DESIGN.md: users' files stay out). */
export const HIDDEN_FROM_ROOT = ["/home", "/root"];

/** The default root share: host `/`, read-only, not crossing mounts, /home and /root hidden. */
export function defaultRootShare(): Share {
  return {
    tag: "root",
    hostPath: "/",
    guestPath: "/",
    readOnly: true,
    stayOnDevice: true,
    hide: HIDDEN_FROM_ROOT,
  };
}

/** A host directory to share: the host path (relative to a working directory) and the guest path. */
export interface VolumeSpec {
  hostPath: string;
  guestPath: string;
  readOnly: boolean;
}

/**
 * A guest path as the mount point it names, as the guest resolves it:
 * normalized, without a trailing slash (`/x/`, `/x/.` and `/a/../x` are
 * `/x`; `//` and `/x/..` are `/`).
 */
export function guestMountPoint(path: string): string {
  return posix.normalize(path).replace(/(.)\/+$/, "$1");
}

/**
 * Guest paths no volume may be mounted on: the kernel's file systems the
 * guest's init mounts there (a share over one hides it and breaks the
 * guest). Below them is the user's choice (`/dev/shm`, `/dev/hugepages`).
 */
export const RESERVED_GUEST_PATHS: readonly string[] = ["/proc", "/sys", "/dev"];

/**
 * Checks a volume and makes its {@link Share} (tag `vol<index>`): the guest
 * path must be absolute, not `/` and none of {@link RESERVED_GUEST_PATHS};
 * the host path an existing directory.
 * `what` names the volume in errors (e.g. `--volume a:/b`).
 */
export function volumeShare(v: VolumeSpec, index: number, cwd: string, what: string): Share {
  const hostPath = resolve(cwd, v.hostPath);
  const guestPath = v.guestPath;
  if (!isAbsolute(guestPath)) {
    throw new ConfigError(`${what}: the guest path '${guestPath}' must be absolute`);
  }
  const normal = guestMountPoint(guestPath); // "/x/..", "//" and "/." are the root too
  if (normal === "/") {
    throw new ConfigError(`${what}: cannot mount over the guest's root`);
  }
  if (RESERVED_GUEST_PATHS.includes(normal)) {
    throw new ConfigError(`${what}: cannot mount over the guest's ${normal}`);
  }
  checkShareDir(hostPath, what);
  return { tag: `vol${index}`, hostPath, guestPath, readOnly: v.readOnly };
}

/**
 * Checks before boot that a share's host path is an existing directory;
 * throws a {@link ConfigError} that starts with `what`.
 */
export function checkShareDir(hostPath: string, what: string): void {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(hostPath);
  } catch {
    throw new ConfigError(`${what}: host path ${hostPath} does not exist`);
  }
  if (!st.isDirectory) {
    throw new ConfigError(`${what}: host path ${hostPath} is not a directory`);
  }
}
