/**
 * The agent protocol's constants and binary layouts (version 1), shared by
 * the guest program (`program.ts`) and the host encoder (`wire.ts`). The
 * prose is in `AGENT.md` beside this file.
 *
 * A request is a {@link REQ_HDR} header followed by a relocatable payload in
 * the command-record style (`init/RECORD.md`: the same 24-byte common part —
 * magic `SKIFFREC`, version, size, relocation count and table offset — so
 * the init's `relocate` routine applies), whose kind-specific fields start at
 * offset {@link PAYLOAD_COMMON_SIZE}. Replies are text lines.
 *
 * @module
 */

/** The vsock port the agent listens on (guest side). */
export const AGENT_PORT = 1024;

/** Protocol version: in the request header and in the payload's common part. */
export const AGENT_PROTOCOL_VERSION = 1;

/**
 * Written on a line of its own to /dev/console (the serial console on both
 * engines) once the agent listens. Kernel messages may interleave with the
 * console at any byte, so a host looks for this text, not for a whole line.
 */
export const AGENT_READY_MARKER = "skiff-agent: READY 1";

/**
 * What a boot failure (before READY) writes to the console, followed by
 * `STEP: ERRNO` and a newline; then the guest powers off.
 */
export const AGENT_BOOT_ERROR_PREFIX = "skiff-agent: error ";

/** The vsock CID of the host (`VMADDR_CID_HOST`, include/uapi/linux/vm_sockets.h). */
export const HOST_CID = 2;
/** The guest's vsock CID on both engines. */
export const GUEST_CID = 3;

/** Request header magic: "SKAG" as a little-endian u32. */
export const REQUEST_MAGIC = 0x47414b53;

/** Request header fields (16 bytes, little-endian). */
export const REQ_HDR = {
  /** u32 {@link REQUEST_MAGIC}. */
  MAGIC: 0,
  /** u16 {@link AGENT_PROTOCOL_VERSION}. */
  VERSION: 4,
  /** u16 {@link KIND}. */
  KIND: 6,
  /** u32 payload length in bytes (the payload's own size field must agree). */
  LENGTH: 8,
  /** u32 reserved, 0. */
  RESERVED: 12,
  SIZE: 16,
} as const;

/** Request kinds. */
export const KIND = {
  SETUP: 1,
  EXEC: 2,
  KILL: 3,
  WRITE_FILE: 4,
  READ_FILE: 5,
  POWEROFF: 6,
} as const;

/** A request kind's name. */
export type RequestKind = keyof typeof KIND;

/** Limits of version 1 (see AGENT.md, "Limits"). */
export const LIMITS = {
  /**
   * Largest payload (argv, environment, paths, mount table together). Below
   * Linux's default `ARG_MAX` (a quarter of the 8 MiB stack limit), so a
   * command that fits is never refused by execve for its size.
   */
  MAX_PAYLOAD: 1 << 20,
  /** Longest path, in bytes without the NUL (`PATH_MAX` - 1, include/uapi/linux/limits.h). */
  MAX_PATH: 4095,
  /** Longest host name (`__NEW_UTS_LEN`, include/uapi/linux/utsname.h). */
  MAX_HOSTNAME: 64,
  /** Longest interface name (`IFNAMSIZ` - 1, include/uapi/linux/if.h). */
  MAX_IFNAME: 15,
  /** Longest reply line the host accepts, newline included. */
  MAX_LINE: 16384,
  /** Longest wait for a hot-plugged device or interface (ms). */
  MAX_WAIT_MS: 600_000,
  /** Most supplementary groups an EXEC carries (Linux NGROUPS_MAX is 65536; images need a few). */
  MAX_GROUPS: 256,
} as const;

/** Size of the payload's common part (magic, version, size, relocation count, table offset). */
export const PAYLOAD_COMMON_SIZE = 24;

/** SETUP payload fields (after the common part). */
export const SETUP = {
  /** u64 {@link SETUP_FLAGS}. */
  FLAGS: 24,
  /** ptr: host name (with {@link SETUP_FLAGS.HOSTNAME}). */
  HOSTNAME: 32,
  /** ptr: array of {@link MOUNT} entries, run in order. */
  MOUNTS: 40,
  /** u64: number of mount entries. */
  NMOUNTS: 48,
  /** u32 ×3: IPv4 address, netmask, gateway (network byte order in memory; gateway 0 = no route). */
  NET_ADDRESS: 56,
  NET_NETMASK: 60,
  NET_GATEWAY: 64,
  /** u32: how long to wait for the interface to appear (ms). */
  NET_WAIT_MS: 68,
  /** ptr: interface name (e.g. eth0). */
  NET_IFNAME: 72,
  /** u64 ×2: wall-clock time to set (CLOCK_REALTIME seconds, nanoseconds), with {@link SETUP_FLAGS.CLOCK}. */
  CLOCK_SEC: 80,
  CLOCK_NSEC: 88,
  /** ptr: directory to chroot into for the files; "" = the agent's own root. */
  FILES_ROOT: 96,
  /** ptr: array of {@link SETUP_FILE} entries, written in order before the {@link FILES_AT}th mount entry. */
  FILES: 104,
  /** u64: number of file entries. */
  NFILES: 112,
  /**
   * u64: the files are written when this many mount entries are done (at most
   * NMOUNTS; NMOUNTS = after all of them). Less than NMOUNTS only with an
   * empty FILES_ROOT: the later mounts must not run inside its chroot.
   */
  FILES_AT: 120,
  SIZE: 128,
} as const;

/**
 * A SETUP file entry (32 bytes): a small file written as WRITE_FILE writes
 * one (owner unchanged), from bytes inside the request — the session's
 * `/etc/hosts` and `/etc/resolv.conf` without a connection each.
 */
export const SETUP_FILE = {
  /** ptr: path (inside the files' root). */
  PATH: 0,
  /** ptr: the bytes. */
  DATA: 8,
  /** u64: how many. */
  LENGTH: 16,
  /** u32: permission bits, applied exactly (fchmod after open). */
  MODE: 24,
  /** u32: {@link WRITE_FLAGS} (REPLACE: unlink first). */
  FLAGS: 28,
  SIZE: 32,
} as const;

/** SETUP flag bits. */
export const SETUP_FLAGS = {
  /** Set the host name. */
  HOSTNAME: 1,
  /** Configure the interface (wait, address, netmask, up, default route). */
  NET: 2,
  /**
   * Set the wall clock first: a VM restored from a snapshot wakes with the
   * time of its capture (its monotonic clock carries on; CLOCK_REALTIME does not).
   */
  CLOCK: 4,
} as const;

/** A SETUP mount entry (48 bytes). */
export const MOUNT = {
  /** ptr: source, or 0 = NULL. */
  SOURCE: 0,
  /** ptr: target (made with `mkdir -p` first). */
  TARGET: 8,
  /** ptr: file system type, or 0 = NULL (bind, move). */
  FSTYPE: 16,
  /** u64: mount(2) flags (`MS_*`, include/uapi/linux/mount.h). */
  FLAGS: 24,
  /** ptr: data (options), or 0 = NULL. */
  DATA: 32,
  /** u32: {@link MOUNT_OP} bits. */
  OP: 40,
  /** u32: with {@link MOUNT_OP.WAIT}, how long to retry (ms). */
  WAIT_MS: 44,
  SIZE: 48,
} as const;

/** Mount entry operation bits. */
export const MOUNT_OP = {
  /**
   * Retry ENOENT, ENODEV, ENXIO and EINVAL (a hot-plugged device not there
   * yet) for WAIT_MS. EINVAL because virtio-fs reports an unknown tag so
   * (fs/fuse/virtio_fs.c `virtio_fs_get_tree`; checked with the Debian 6.1
   * kernel): bad options then fail only after WAIT_MS.
   */
  WAIT: 1,
  /** Only make the target directory (e.g. an overlay's upper and work directories). */
  MKDIR_ONLY: 2,
  /**
   * Detach the mount at the target and everything under it
   * (`umount2(MNT_DETACH)`, as `umount -l`); a target that is not mounted
   * (EINVAL) or absent (ENOENT) is fine. Used before a snapshot of a running
   * VM, whose hot-plugged file-system device must go.
   */
  UMOUNT: 4,
} as const;

/** `umount2` flag: lazy unmount (linux/fs.h MNT_DETACH). */
export const MNT_DETACH = 2;

/** EXEC payload fields. */
export const EXEC = {
  /** ptr: NULL-terminated argv. */
  ARGV: 24,
  /** ptr: NULL-terminated envp ("K=V"). */
  ENVP: 32,
  /** ptr: working directory (inside the root). */
  CWD: 40,
  /** ptr: directory to chroot into; "" = the agent's own root. */
  ROOT: 48,
  /** ptr: search list for argv[0] (PATH; argv[0] with a '/' is used as is). */
  PATH: 56,
  /** u32: uid and gid to switch to, {@link NO_ID} = keep (root). */
  UID: 64,
  GID: 68,
  /** u32 ×3: host vsock ports for stdin, stdout, stderr; 0 = /dev/null. */
  STDIN: 72,
  STDOUT: 76,
  STDERR: 80,
  /** u32 reserved, 0. */
  FLAGS: 84,
  /** ptr: u32 supplementary group ids (with a gid; none: the command gets no supplementary groups). */
  GROUPS: 88,
  /** u64: number of supplementary groups (≤ {@link LIMITS.MAX_GROUPS}). */
  NGROUPS: 96,
  SIZE: 104,
} as const;

/** KILL payload fields. */
export const KILL = {
  /** u32: process id (> 1). */
  PID: 24,
  /** u32: signal number. */
  SIGNAL: 28,
  /** u64: {@link KILL_FLAGS}. */
  FLAGS: 32,
  SIZE: 40,
} as const;

/** KILL flag bits (also in an EXEC signal frame). */
export const KILL_FLAGS = {
  /** Signal the whole process group of `pid`. */
  GROUP: 1,
} as const;

/**
 * A signal frame the host may send on an EXEC control connection (8 bytes:
 * u32 signal, u32 {@link KILL_FLAGS}); the supervisor signals its command
 * only while it has not reaped it, so a reused pid is never hit.
 */
export const SIGNAL_FRAME_SIZE = 8;

/** WRITE_FILE payload fields. */
export const WRITE_FILE = {
  /** ptr: path (inside the root). */
  PATH: 24,
  /** ptr: directory to chroot into; "" = the agent's own root. */
  ROOT: 32,
  /** u32: permission bits, applied exactly (fchmod after open; setuid/setgid/sticky included). */
  MODE: 40,
  /** u32: owner and group, {@link NO_ID} = keep. */
  UID: 44,
  GID: 48,
  /** u32: {@link WRITE_FLAGS}. */
  FLAGS: 52,
  SIZE: 56,
} as const;

/** WRITE_FILE flag bits. */
export const WRITE_FLAGS = {
  /** Unlink the path first: replaces a symlink instead of writing through it. */
  REPLACE: 1,
} as const;

/** READ_FILE payload fields. */
export const READ_FILE = {
  /** ptr: path (inside the root). */
  PATH: 24,
  /** ptr: directory to chroot into; "" = the agent's own root. */
  ROOT: 32,
  SIZE: 40,
} as const;

/** POWEROFF has only the common part. */
export const POWEROFF_SIZE = PAYLOAD_COMMON_SIZE;

/** Smallest payload of each kind. */
export const MIN_PAYLOAD: Record<RequestKind, number> = {
  SETUP: SETUP.SIZE,
  EXEC: EXEC.SIZE,
  KILL: KILL.SIZE,
  WRITE_FILE: WRITE_FILE.SIZE,
  READ_FILE: READ_FILE.SIZE,
  POWEROFF: POWEROFF_SIZE,
};

/** "Keep the current id" for uid/gid fields ((uid_t)-1 as chown(2) takes it). */
export const NO_ID = 0xffffffff;

/** Where the agent reads its boot record (the module list) in the initramfs. */
export const AGENT_BOOT_PATH = "/skiff/agent-boot";

/** Boot record fields (relocatable, common part first). */
export const BOOT = {
  /** ptr: NULL-terminated array of module paths, load order. */
  MODULES: 24,
  SIZE: 32,
} as const;

/** Largest boot record the agent reads. */
export const MAX_BOOT_RECORD = 1 << 16;

/** Copy buffer of WRITE_FILE / READ_FILE in the agent. */
export const IO_BUFFER_SIZE = 1 << 20;
