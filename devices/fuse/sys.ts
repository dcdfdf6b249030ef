/**
 * fd-relative, no-follow system calls for the passthrough backend and the
 * `/dev/fuse` transport, through libc FFI. Wrappers return the raw result
 * or `-errno` (never throw) so hot paths can turn failures straight into
 * FUSE error replies.
 *
 * Each isolate (main thread, each Worker) opens its own libc handle.
 *
 * @module
 */

import { lazyDlopen } from "../../kvm_ffi/lazy_dlopen.ts";

const SYMBOLS = {
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" },
  /** syscall(SYS_openat2, dirfd, path, &how, sizeof how). */
  openat2: {
    name: "syscall",
    parameters: ["i64", "i64", "buffer", "buffer", "u64"],
    result: "i64",
  },
  /** syscall(SYS_setgroups, n, list): per-thread, unlike glibc's setgroups. */
  setgroups_thread: { name: "syscall", parameters: ["i64", "i64", "buffer"], result: "i64" },
  close: { parameters: ["i32"], result: "i32" },
  statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
  getdents64: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  mkdirat: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  mknodat: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  renameat2: { parameters: ["i32", "buffer", "i32", "buffer", "u32"], result: "i32" },
  linkat: { parameters: ["i32", "buffer", "i32", "buffer", "i32"], result: "i32" },
  symlinkat: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
  fchmodat: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  fchmod: { parameters: ["i32", "u32"], result: "i32" },
  fchownat: { parameters: ["i32", "buffer", "u32", "u32", "i32"], result: "i32" },
  utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  truncate: { parameters: ["buffer", "i64"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  getxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  setxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32" },
  listxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  removexattr: { parameters: ["buffer", "buffer"], result: "i32" },
  fgetxattr: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
  fsetxattr: { parameters: ["i32", "buffer", "buffer", "usize", "i32"], result: "i32" },
  flistxattr: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  fremovexattr: { parameters: ["i32", "buffer"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
  },
  fsync: { parameters: ["i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  fstatfs: { parameters: ["i32", "buffer"], result: "i32" },
  pread: { name: "pread64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { name: "pwrite64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  preadv: { name: "preadv64", parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  umount2: { parameters: ["buffer", "i32"], result: "i32" },
  setfsuid: { parameters: ["u32"], result: "i32" },
  setfsgid: { parameters: ["u32"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  /** Gives the CPU to another runnable thread on it, if any (the reply spin). */
  sched_yield: { parameters: [], result: "i32" },
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  /** splice(fd_in, off_in, fd_out, off_out, len, flags); a null offset is the fd's own. */
  splice: { parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"], result: "isize" },
  /** fcntl with an int argument (F_SETPIPE_SZ). */
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Raw symbols, each bound on first use (kvm_ffi/lazy_dlopen.ts: ~0.08 ms per symbol otherwise, at import). */
export const sys = lazyDlopen("libc.so.6", SYMBOLS, []);

/** x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
export const SYS = { openat2: 437n, setgroups: 116n } as const;

/** `AT_*` flags (linux/fcntl.h). */
export const AT = {
  FDCWD: -100,
  SYMLINK_NOFOLLOW: 0x100,
  REMOVEDIR: 0x200,
  SYMLINK_FOLLOW: 0x400,
  EMPTY_PATH: 0x1000,
} as const;

/** `RESOLVE_*` flags for openat2 (linux/openat2.h). */
export const RESOLVE = {
  NO_XDEV: 0x01,
  NO_MAGICLINKS: 0x02,
  NO_SYMLINKS: 0x04,
  BENEATH: 0x08,
  IN_ROOT: 0x10,
} as const;

/** What every guest-driven resolution uses: stay beneath, never follow any link. */
export const RESOLVE_SAFE = RESOLVE.BENEATH | RESOLVE.NO_SYMLINKS | RESOLVE.NO_MAGICLINKS;

/** `STATX_*` mask bits (linux/stat.h). */
export const STATX = { SIZE: 0x200, BASIC_STATS: 0x7ff, MNT_ID: 0x1000 } as const;

/** File type bits (linux/stat.h). */
export const S = {
  IFMT: 0o170000,
  IFSOCK: 0o140000,
  IFLNK: 0o120000,
  IFREG: 0o100000,
  IFBLK: 0o060000,
  IFDIR: 0o040000,
  IFCHR: 0o020000,
  IFIFO: 0o010000,
} as const;

/** Byte offsets in `struct statx` (linux/stat.h), checked by gcc in protocol_test.ts. */
export const STATX_OFF = {
  mask: 0,
  blksize: 4,
  nlink: 16,
  uid: 20,
  gid: 24,
  mode: 28,
  ino: 32,
  size: 40,
  blocks: 48,
  atime: 64,
  btime: 80,
  ctime: 96,
  mtime: 112,
  rdev_major: 128,
  rdev_minor: 132,
  dev_major: 136,
  dev_minor: 140,
  mnt_id: 144,
  size_of: 256,
} as const;

/** Byte offsets in x86-64 `struct statfs` (bits/statfs.h). */
export const STATFS_OFF = {
  type: 0,
  bsize: 8,
  blocks: 16,
  bfree: 24,
  bavail: 32,
  files: 40,
  ffree: 48,
  namelen: 64,
  frsize: 72,
  size_of: 120,
} as const;

/** `FUSE_DEV_IOC_CLONE` = _IOR(229, 0, uint32_t). */
export const FUSE_DEV_IOC_CLONE = 0x8004e500n;
/** `FUSE_DEV_IOC_BACKING_OPEN` = _IOW(229, 1, struct fuse_backing_map) (16 bytes). */
export const FUSE_DEV_IOC_BACKING_OPEN = 0x4010e501n;
/** `FUSE_DEV_IOC_BACKING_CLOSE` = _IOW(229, 2, uint32_t). */
export const FUSE_DEV_IOC_BACKING_CLOSE = 0x4004e502n;

/**
 * This thread's errno (module state is per isolate, so per thread): a view made
 * once instead of one per failed call.
 */
const errnoView = new Deno.UnsafePointerView(sys.__errno_location()!);

/** `ret` when non-negative, else `-errno`. */
export function r(ret: number | bigint): number {
  const n = Number(ret);
  return n < 0 ? -errnoView.getInt32() : n;
}

const enc = new TextEncoder();

/** NUL-terminated copy of `s` (string or bytes). */
export function cpath(s: string | Uint8Array): Uint8Array<ArrayBuffer> {
  const b = typeof s === "string" ? enc.encode(s) : s;
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

/** The empty C string, for `AT_EMPTY_PATH` calls. */
export const EMPTY = new Uint8Array(1);

/** struct open_how (flags, mode, resolve: u64 each) as 32-bit words: no BigInt per call. */
const how = new Uint32Array(6);
const howBytes = new Uint8Array(how.buffer);

/** openat2(2): returns the fd or -errno. */
export function openat2(
  dirfd: number,
  path: Uint8Array<ArrayBuffer>,
  flags: number,
  mode: number,
  resolve: number,
): number {
  how[0] = flags;
  how[2] = mode;
  how[4] = resolve;
  return r(sys.openat2(SYS.openat2, BigInt(dirfd), path, howBytes, 24n));
}

const procPaths = new Map<number, Uint8Array<ArrayBuffer>>();

/** `/proc/self/fd/N` as a C string (cached), for calls that need a path to one of our own fds. */
export function procFd(fd: number): Uint8Array<ArrayBuffer> {
  let p = procPaths.get(fd);
  if (!p) {
    p = cpath(`/proc/self/fd/${fd}`);
    if (procPaths.size < 65536) procPaths.set(fd, p);
  }
  return p;
}

/**
 * Raises this process's RLIMIT_NOFILE soft limit to its hard limit; returns
 * the resulting limit.
 */
export function raiseNofile(): number {
  const lim = new BigUint64Array(2);
  const b = new Uint8Array(lim.buffer);
  if (sys.getrlimit(7, b) < 0) return 1024;
  if (lim[0] < lim[1]) {
    lim[0] = lim[1];
    sys.setrlimit(7, b);
    sys.getrlimit(7, b);
  }
  return Number(lim[0] > 1n << 30n ? 1n << 30n : lim[0]);
}

/** Thread credentials last applied on THIS thread by {@link setThreadCreds} (module state is per isolate = per thread). */
let threadUid = -1;
let threadGid = -1;
/** The supplementary groups last applied on this thread (null: never, or the call failed). */
let threadGroups: number[] | null = null;

function sameGroups(a: readonly number[], b: readonly number[] | null): boolean {
  if (!b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Sets the calling thread's fsuid/fsgid (and, with `groups`, its
 * supplementary groups, via the raw per-thread syscall). setfsuid/setfsgid
 * are per-thread in Linux; other threads keep their rights.
 */
export function setThreadCreds(uid: number, gid: number, groups?: readonly number[]): void {
  // A server with fixed credentials calls this before every request: only a change
  // costs a system call.
  if (groups && !sameGroups(groups, threadGroups)) {
    const list = new Uint32Array(groups);
    const rc = sys.setgroups_thread(
      SYS.setgroups,
      BigInt(list.length),
      new Uint8Array(list.buffer),
    );
    threadGroups = rc < 0n ? null : [...groups];
  }
  if (threadGid !== gid) {
    sys.setfsgid(gid);
    threadGid = gid;
  }
  if (threadUid !== uid) {
    sys.setfsuid(uid);
    threadUid = uid;
  }
}

/** The fsuid this module last set on this thread (-1 if never). */
export function threadCreds(): { uid: number; gid: number } {
  return { uid: threadUid, gid: threadGid };
}
