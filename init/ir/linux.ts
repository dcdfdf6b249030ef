/**
 * Linux x86-64 constants the init uses: syscall numbers
 * (`arch/x86/entry/syscalls/syscall_64.tbl`), flags from the uapi headers.
 *
 * @module
 */

/** x86-64 syscall numbers (`arch/x86/entry/syscalls/syscall_64.tbl`). */
export const SYS = {
  read: 0,
  write: 1,
  open: 2,
  close: 3,
  fstat: 5,
  poll: 7,
  lseek: 8,
  mmap: 9,
  munmap: 11,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  ioctl: 16,
  nanosleep: 35,
  dup: 32,
  dup2: 33,
  getpid: 39,
  socket: 41,
  connect: 42,
  shutdown: 48,
  bind: 49,
  listen: 50,
  setsockopt: 54,
  fork: 57,
  execve: 59,
  exit: 60,
  wait4: 61,
  kill: 62,
  fsync: 74,
  chdir: 80,
  mkdir: 83,
  unlink: 87,
  symlink: 88,
  chmod: 90,
  fchmod: 91,
  fchown: 93,
  umask: 95,
  setuid: 105,
  setgid: 106,
  getppid: 110,
  setsid: 112,
  setgroups: 116,
  mknod: 133,
  chroot: 161,
  sync: 162,
  mount: 165,
  umount2: 166,
  reboot: 169,
  sethostname: 170,
  getdents64: 217,
  clock_settime: 227,
  exit_group: 231,
  openat: 257,
  accept4: 288,
  finit_module: 313,
  pidfd_open: 434,
} as const;

/** open(2) flags (`include/uapi/asm-generic/fcntl.h`). */
export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  CREAT: 0o100,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DIRECTORY: 0o200000,
  CLOEXEC: 0o2000000,
  SYNC: 0o4010000,
} as const;

/** mount(2) flags (`include/uapi/linux/mount.h`). */
export const MS = {
  RDONLY: 1,
  NOSUID: 2,
  NODEV: 4,
  NOEXEC: 8,
  REMOUNT: 32,
  BIND: 4096,
  MOVE: 8192,
  REC: 16384,
  PRIVATE: 1 << 18,
} as const;

/** reboot(2) magic numbers and commands (`include/uapi/linux/reboot.h`). */
export const REBOOT = {
  MAGIC1: 0xfee1dead,
  MAGIC2: 672274793,
  CMD_POWER_OFF: 0x4321fedc,
  CMD_RESTART: 0x01234567,
} as const;

/** Network ioctls (`include/uapi/linux/sockios.h`) and interface flags (`if.h`). */
export const NET = {
  AF_INET: 2,
  SOCK_DGRAM: 2,
  SOCK_CLOEXEC: 0o2000000,
  SIOCADDRT: 0x890b,
  SIOCGIFFLAGS: 0x8913,
  SIOCSIFFLAGS: 0x8914,
  SIOCSIFADDR: 0x8916,
  SIOCSIFNETMASK: 0x891c,
  IFF_UP: 0x1,
  IFF_RUNNING: 0x40,
  RTF_UP: 0x1,
  RTF_GATEWAY: 0x2,
  /** sizeof(struct ifreq) */
  IFREQ_SIZE: 40,
  /** sizeof(struct rtentry) on x86-64 */
  RTENTRY_SIZE: 120,
} as const;

/** errno values used by the init (`include/uapi/asm-generic/errno-base.h`). */
export const E = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENOEXEC: 8,
  ECHILD: 10,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENXIO: 6,
  E2BIG: 7,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  EMFILE: 24,
  EFBIG: 27,
  ENOSPC: 28,
  EPIPE: 32,
  ENAMETOOLONG: 36,
  EPROTO: 71,
  EMSGSIZE: 90,
  EPROTONOSUPPORT: 93,
} as const;

/** Signal numbers (`arch/x86/include/uapi/asm/signal.h`) and `rt_sigaction` values. */
export const SIG = {
  HUP: 1,
  INT: 2,
  KILL: 9,
  PIPE: 13,
  TERM: 15,
  CHLD: 17,
  STOP: 19,
  /** Highest signal number (`_NSIG` = 64). */
  MAX: 64,
  /** `SIG_DFL` / `SIG_IGN` handler values. */
  DFL: 0,
  IGN: 1,
  /** `SIG_SETMASK` for `rt_sigprocmask`. */
  SETMASK: 2,
  /** sizeof(struct sigaction) as the kernel takes it on x86-64: handler, flags, restorer, mask. */
  SIGACTION_SIZE: 32,
  /** sizeof(sigset_t) the kernel expects (`_NSIG / 8`). */
  SIGSET_SIZE: 8,
} as const;

/** Sockets: families (`include/linux/socket.h`), vsock addresses (`include/uapi/linux/vm_sockets.h`), poll bits (`include/uapi/asm-generic/poll.h`). */
export const SOCK = {
  AF_UNIX: 1,
  AF_VSOCK: 40,
  SOCK_STREAM: 1,
  SOCK_CLOEXEC: 0o2000000,
  /** `shutdown(2)` how: stop writing. */
  SHUT_WR: 1,
  /** sizeof(struct sockaddr_vm): family u16, reserved u16, port u32, cid u32, flags u8, zero[3]. */
  SOCKADDR_VM_SIZE: 16,
  /** sizeof(struct sockaddr_un): family u16 + 108 path bytes. */
  SOCKADDR_UN_SIZE: 110,
  VMADDR_CID_ANY: 0xffffffff,
  VMADDR_CID_HOST: 2,
  POLLIN: 0x1,
  /** sizeof(struct pollfd): fd i32, events i16, revents i16. */
  POLLFD_SIZE: 8,
} as const;

/** Names of errno 1–40 (index = errno), for the init's error messages. */
export const ERRNO_NAMES = [
  "",
  "EPERM",
  "ENOENT",
  "ESRCH",
  "EINTR",
  "EIO",
  "ENXIO",
  "E2BIG",
  "ENOEXEC",
  "EBADF",
  "ECHILD",
  "EAGAIN",
  "ENOMEM",
  "EACCES",
  "EFAULT",
  "ENOTBLK",
  "EBUSY",
  "EEXIST",
  "EXDEV",
  "ENODEV",
  "ENOTDIR",
  "EISDIR",
  "EINVAL",
  "ENFILE",
  "EMFILE",
  "ENOTTY",
  "ETXTBSY",
  "EFBIG",
  "ENOSPC",
  "ESPIPE",
  "EROFS",
  "EMLINK",
  "EPIPE",
  "EDOM",
  "ERANGE",
  "EDEADLK",
  "ENAMETOOLONG",
  "ENOLCK",
  "ENOSYS",
  "ENOTEMPTY",
  "ELOOP",
] as const;
