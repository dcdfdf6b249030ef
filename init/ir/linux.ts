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
  lseek: 8,
  mmap: 9,
  munmap: 11,
  ioctl: 16,
  nanosleep: 35,
  dup2: 33,
  getpid: 39,
  socket: 41,
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
  umask: 95,
  setuid: 105,
  setgid: 106,
  setgroups: 116,
  setsid: 112,
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
  finit_module: 313,
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
  ENOTDIR: 20,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  ENAMETOOLONG: 36,
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
