/**
 * libc through `Deno.dlopen`: the raw symbols, thin checked wrappers, and the
 * error type every failing call turns into (`KVM_CREATE_VCPU failed: EEXIST`).
 *
 * Each isolate (the main thread and every vCPU Worker) that imports this module
 * opens its own handle; FFI handles cannot be shared across isolates. Most
 * symbols are bound on first use (lazy_dlopen.ts): binding all of them cost
 * ~6.5 ms per isolate.
 *
 * Other modules may add symbols to {@link SYMBOLS} (add, never change or remove).
 *
 * @module
 */

import { errnoName } from "./errno.ts";
import { lazyDlopen } from "./lazy_dlopen.ts";

/** The libc symbols skiff calls. Variadic functions are declared with their fixed x86-64 ABI. */
const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { name: "pread64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { name: "pwrite64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  /** ioctl with a pointer argument (struct in a buffer). */
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  /** ioctl with a raw pointer argument (e.g. into an mmap'd region). */
  ioctl_ptr: { name: "ioctl", parameters: ["i32", "u64", "pointer"], result: "i32" },
  /** ioctl with an integer argument. */
  ioctl_val: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  /**
   * ioctl with a struct argument on a thread-pool thread (a Promise), for a
   * slow call the main thread can overlap with other work. errno belongs to
   * that thread: on failure, find out why by repeating the call synchronously.
   */
  ioctl_nb: {
    name: "ioctl",
    parameters: ["i32", "u64", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  fsync: { parameters: ["i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  dup: { parameters: ["i32"], result: "i32" },
  /** Unix sockets for vhost-user (fds arrive as SCM_RIGHTS, which Deno's sockets do not expose). */
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  unlink: { parameters: ["buffer"], result: "i32" },
  /**
   * sendfile(2) on a thread-pool thread (a Promise): a large file copy the
   * main thread overlaps with other work. The offset (an i64 in a buffer) is
   * advanced by the kernel; errno belongs to that thread.
   */
  sendfile_nb: {
    name: "sendfile",
    parameters: ["i32", "i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  /** poll(2) on a thread-pool thread: waits without blocking the event loop. */
  poll_nb: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  getpid: { parameters: [], result: "i32" },
  getuid: { parameters: [], result: "u32" },
  getgid: { parameters: [], result: "u32" },
  geteuid: { parameters: [], result: "u32" },
  /** Generic syscall(2); up to six integer arguments. */
  syscall: {
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
  },
  __errno_location: { parameters: [], result: "pointer" },
  /** sigaction(2) with glibc's `struct sigaction` in a buffer (old action may be null). */
  sigaction: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** dlsym(3) (in libc since glibc 2.34); handle null is RTLD_DEFAULT. */
  dlsym: { parameters: ["pointer", "buffer"], result: "pointer" },
  /** Host sockets of the network stack's poll loop (devices/net). */
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  /**
   * The network loop's hot calls with the low 32 bits of their ssize_t
   * result (its lengths stay below 2 GiB): a number instead of a BigInt,
   * whose conversion costs more than the call itself.
   */
  read_n: { name: "read", parameters: ["i32", "buffer", "usize"], result: "i32" },
  write_n: { name: "write", parameters: ["i32", "buffer", "usize"], result: "i32" },
  send_n: { name: "send", parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  recvfrom_n: {
    name: "recvfrom",
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "i32",
  },
  /** clock_gettime(2) into a `struct timespec` buffer. */
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  /** epoll(7): one wait over every fd of the network stack's loop. */
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * Bound when this module loads (see lazy_dlopen.ts; the others on first use):
 * errno, which must never wait for a `dlopen`, and the calls of a snapshot
 * restore and of a vCPU Worker's loop, so neither pays for binding.
 */
const EAGER = [
  "__errno_location",
  "open",
  "close",
  "lseek",
  "mmap",
  "munmap",
  "ioctl",
  "ioctl_val",
  "syscall",
] as const;

/** Raw libc symbols; prefer the checked wrappers below. */
export const libc = lazyDlopen("libc.so.6", SYMBOLS, EAGER);

/** A failed system or library call: names the call and the errno. */
export class SysError extends Error {
  /** What was called, e.g. `KVM_CREATE_VCPU` or `open(/dev/kvm)`. */
  readonly call: string;
  /** The errno value. */
  readonly errno: number;
  /** The errno name, e.g. `EEXIST`. */
  readonly code: string;

  constructor(call: string, errno: number) {
    const code = errnoName(errno);
    super(`${call} failed: ${code}`);
    this.name = "SysError";
    this.call = call;
    this.errno = errno;
    this.code = code;
  }
}

/** The calling thread's current errno. Read it immediately after the failing call. */
export function errno(): number {
  const p = libc.__errno_location();
  return new Deno.UnsafePointerView(p!).getInt32();
}

/** Throws {@link SysError} for `call` when `ret` is negative; returns `ret` as a number otherwise. */
export function check(call: string, ret: number | bigint): number {
  if (ret < 0) throw new SysError(call, errno());
  return Number(ret);
}

/**
 * Like {@link check} for raw `syscall()` results, which libc already turned into
 * -1 + errno. Returns the non-negative result.
 */
export function checkSyscall(call: string, ret: bigint): number {
  if (ret < 0n) throw new SysError(call, errno());
  return Number(ret);
}

const encoder = new TextEncoder();

/** A NUL-terminated C string. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** open(2) flags (asm-generic/fcntl.h, x86-64 values). */
export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  CLOEXEC: 0o2000000,
  PATH: 0o10000000,
} as const;

/** mmap(2) protections and flags (asm-generic/mman*.h). */
export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
/** mmap(2) flags. */
export const MAP = {
  SHARED: 0x01,
  PRIVATE: 0x02,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  NORESERVE: 0x4000,
  POPULATE: 0x8000,
} as const;
/** memfd_create(2) flags. */
export const MFD = { CLOEXEC: 1, ALLOW_SEALING: 2 } as const;
/** eventfd(2) flags. */
export const EFD = { SEMAPHORE: 1, NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
/** poll(2) events. */
export const POLL = { IN: 0x1, PRI: 0x2, OUT: 0x4, ERR: 0x8, HUP: 0x10, NVAL: 0x20 } as const;

/** open(2), throwing {@link SysError} naming the path. */
export function open(path: string, flags: number, mode = 0): number {
  return check(`open(${path})`, libc.open(cstr(path), flags | O.CLOEXEC, mode));
}

/** close(2). */
export function close(fd: number): void {
  check("close", libc.close(fd));
}

/** read(2) into `buf`; returns bytes read. */
export function read(fd: number, buf: Uint8Array<ArrayBuffer>, call = "read"): number {
  return check(call, libc.read(fd, buf, BigInt(buf.byteLength)));
}

/** write(2) of `buf`; returns bytes written. */
export function write(fd: number, buf: Uint8Array<ArrayBuffer>, call = "write"): number {
  return check(call, libc.write(fd, buf, BigInt(buf.byteLength)));
}

/** pread(2) into `buf` at `offset`. */
export function pread(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number): number {
  return check("pread", libc.pread(fd, buf, BigInt(buf.byteLength), BigInt(offset)));
}

/** pwrite(2) of `buf` at `offset`. */
export function pwrite(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number): number {
  return check("pwrite", libc.pwrite(fd, buf, BigInt(buf.byteLength), BigInt(offset)));
}

/** ioctl(2) with a buffer argument (or none); `name` goes into the error message. */
export function ioctl(
  fd: number,
  request: bigint,
  name: string,
  arg: Uint8Array<ArrayBuffer> | null = null,
): number {
  return check(name, libc.ioctl(fd, request, arg));
}

/** ioctl(2) with an integer argument. */
export function ioctlValue(
  fd: number,
  request: bigint,
  name: string,
  value: bigint | number,
): number {
  return check(name, libc.ioctl_val(fd, request, BigInt(value)));
}

/** mmap(2); throws on MAP_FAILED. */
export function mmap(
  length: number,
  prot: number,
  flags: number,
  fd = -1,
  offset = 0,
  addr: Deno.PointerValue = null,
): Deno.PointerObject {
  const p = libc.mmap(addr, BigInt(length), prot, flags, fd, BigInt(offset));
  if (p === null || Deno.UnsafePointer.value(p) === 0xffffffffffffffffn) {
    throw new SysError(`mmap(length=${length})`, errno());
  }
  return p;
}

/** munmap(2). */
export function munmap(addr: Deno.PointerObject, length: number): void {
  check("munmap", libc.munmap(addr, BigInt(length)));
}

/** memfd_create(2) with MFD_CLOEXEC. */
export function memfdCreate(name: string, flags: number = MFD.CLOEXEC): number {
  return check(`memfd_create(${name})`, libc.memfd_create(cstr(name), flags));
}

/** eventfd(2) with EFD_CLOEXEC. */
export function eventfd(initial = 0, flags: number = EFD.CLOEXEC): number {
  return check("eventfd", libc.eventfd(initial, flags));
}

/** ftruncate(2). */
export function ftruncate(fd: number, length: number): void {
  check("ftruncate", libc.ftruncate(fd, BigInt(length)));
}

/** A zero-copy byte view of `length` bytes at `ptr` (e.g. an mmap'd region). */
export function viewAt(ptr: Deno.PointerObject, length: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, length));
}
