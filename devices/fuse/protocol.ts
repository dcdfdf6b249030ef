/**
 * FUSE wire protocol: opcodes, flags and struct layouts, from
 * `/usr/include/linux/fuse.h` (kernel protocol 7.38). All structs are
 * little-endian on x86-64 and naturally aligned; {@link STRUCTS} lists each
 * one field by field and `protocol_test.ts` compares every offset and size
 * with what gcc computes from the header itself.
 *
 * @module
 */

/** The protocol major version this server implements (`FUSE_KERNEL_VERSION`). */
export const FUSE_KERNEL_VERSION = 7;
/** The newest minor version this server implements (`FUSE_KERNEL_MINOR_VERSION` of the header). */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** The oldest minor version accepted: 7.12 is where the in-struct layouts used here settle. */
export const FUSE_MIN_MINOR_VERSION = 12;
/** Node id of the mount root (`FUSE_ROOT_ID`). */
export const FUSE_ROOT_ID = 1;
/** Smallest read buffer the kernel accepts on /dev/fuse (`FUSE_MIN_READ_BUFFER`). */
export const FUSE_MIN_READ_BUFFER = 8192;

/** Request opcodes (`enum fuse_opcode`). */
export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
} as const;

/** `fuse_init_in.flags` / `flags2` bits as one 64-bit set (flags2 is bits 32–63). */
export const InitFlag = {
  ASYNC_READ: 1n << 0n,
  POSIX_LOCKS: 1n << 1n,
  FILE_OPS: 1n << 2n,
  ATOMIC_O_TRUNC: 1n << 3n,
  EXPORT_SUPPORT: 1n << 4n,
  BIG_WRITES: 1n << 5n,
  DONT_MASK: 1n << 6n,
  SPLICE_WRITE: 1n << 7n,
  SPLICE_MOVE: 1n << 8n,
  SPLICE_READ: 1n << 9n,
  FLOCK_LOCKS: 1n << 10n,
  HAS_IOCTL_DIR: 1n << 11n,
  AUTO_INVAL_DATA: 1n << 12n,
  DO_READDIRPLUS: 1n << 13n,
  READDIRPLUS_AUTO: 1n << 14n,
  ASYNC_DIO: 1n << 15n,
  WRITEBACK_CACHE: 1n << 16n,
  NO_OPEN_SUPPORT: 1n << 17n,
  PARALLEL_DIROPS: 1n << 18n,
  HANDLE_KILLPRIV: 1n << 19n,
  POSIX_ACL: 1n << 20n,
  ABORT_ERROR: 1n << 21n,
  MAX_PAGES: 1n << 22n,
  CACHE_SYMLINKS: 1n << 23n,
  NO_OPENDIR_SUPPORT: 1n << 24n,
  EXPLICIT_INVAL_DATA: 1n << 25n,
  MAP_ALIGNMENT: 1n << 26n,
  SUBMOUNTS: 1n << 27n,
  HANDLE_KILLPRIV_V2: 1n << 28n,
  SETXATTR_EXT: 1n << 29n,
  /** 7.36: flags2 in init_in/init_out is valid. */
  INIT_EXT: 1n << 30n,
  INIT_RESERVED: 1n << 31n,
  SECURITY_CTX: 1n << 32n,
  HAS_INODE_DAX: 1n << 33n,
  CREATE_SUPP_GROUP: 1n << 34n,
  HAS_EXPIRE_ONLY: 1n << 35n,
  DIRECT_IO_ALLOW_MMAP: 1n << 36n,
  /** 7.40: OPEN/CREATE may name a backing file the client reads and writes itself. */
  PASSTHROUGH: 1n << 37n,
} as const;

/** `fuse_setattr_in.valid` bits. */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** `fuse_open_out.open_flags` bits. */
export const FOPEN = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
  /** 7.40: `fuse_open_out.backing_id` names the file's backing file (FUSE_PASSTHROUGH). */
  PASSTHROUGH: 1 << 7,
} as const;

/** `fuse_getattr_in.getattr_flags`: `fh` is valid. */
export const FUSE_GETATTR_FH = 1;
/** `fuse_fsync_in.fsync_flags`: only data (fdatasync). */
export const FUSE_FSYNC_FDATASYNC = 1;
/** `fuse_release_in.release_flags`: flush before release. */
export const FUSE_RELEASE_FLUSH = 1;

/** A struct: `[field, bytes]` in declaration order (`u8[]` arrays as one field). */
export type StructFields = ReadonlyArray<readonly [string, number]>;

/**
 * Every struct the server reads or writes, field by field as in fuse.h.
 * Checked against gcc in `protocol_test.ts`.
 */
export const STRUCTS = {
  fuse_in_header: [
    ["len", 4],
    ["opcode", 4],
    ["unique", 8],
    ["nodeid", 8],
    ["uid", 4],
    ["gid", 4],
    ["pid", 4],
    ["total_extlen", 2],
    ["padding", 2],
  ],
  fuse_out_header: [["len", 4], ["error", 4], ["unique", 8]],
  fuse_attr: [
    ["ino", 8],
    ["size", 8],
    ["blocks", 8],
    ["atime", 8],
    ["mtime", 8],
    ["ctime", 8],
    ["atimensec", 4],
    ["mtimensec", 4],
    ["ctimensec", 4],
    ["mode", 4],
    ["nlink", 4],
    ["uid", 4],
    ["gid", 4],
    ["rdev", 4],
    ["blksize", 4],
    ["flags", 4],
  ],
  fuse_entry_out: [
    ["nodeid", 8],
    ["generation", 8],
    ["entry_valid", 8],
    ["attr_valid", 8],
    ["entry_valid_nsec", 4],
    ["attr_valid_nsec", 4],
    ["attr", 88],
  ],
  fuse_forget_in: [["nlookup", 8]],
  fuse_forget_one: [["nodeid", 8], ["nlookup", 8]],
  fuse_batch_forget_in: [["count", 4], ["dummy", 4]],
  fuse_getattr_in: [["getattr_flags", 4], ["dummy", 4], ["fh", 8]],
  fuse_attr_out: [["attr_valid", 8], ["attr_valid_nsec", 4], ["dummy", 4], ["attr", 88]],
  fuse_mknod_in: [["mode", 4], ["rdev", 4], ["umask", 4], ["padding", 4]],
  fuse_mkdir_in: [["mode", 4], ["umask", 4]],
  fuse_rename_in: [["newdir", 8]],
  fuse_rename2_in: [["newdir", 8], ["flags", 4], ["padding", 4]],
  fuse_link_in: [["oldnodeid", 8]],
  fuse_setattr_in: [
    ["valid", 4],
    ["padding", 4],
    ["fh", 8],
    ["size", 8],
    ["lock_owner", 8],
    ["atime", 8],
    ["mtime", 8],
    ["ctime", 8],
    ["atimensec", 4],
    ["mtimensec", 4],
    ["ctimensec", 4],
    ["mode", 4],
    ["unused4", 4],
    ["uid", 4],
    ["gid", 4],
    ["unused5", 4],
  ],
  fuse_open_in: [["flags", 4], ["open_flags", 4]],
  fuse_create_in: [["flags", 4], ["mode", 4], ["umask", 4], ["open_flags", 4]],
  fuse_open_out: [["fh", 8], ["open_flags", 4], ["padding", 4]],
  fuse_release_in: [["fh", 8], ["flags", 4], ["release_flags", 4], ["lock_owner", 8]],
  fuse_flush_in: [["fh", 8], ["unused", 4], ["padding", 4], ["lock_owner", 8]],
  fuse_read_in: [
    ["fh", 8],
    ["offset", 8],
    ["size", 4],
    ["read_flags", 4],
    ["lock_owner", 8],
    ["flags", 4],
    ["padding", 4],
  ],
  fuse_write_in: [
    ["fh", 8],
    ["offset", 8],
    ["size", 4],
    ["write_flags", 4],
    ["lock_owner", 8],
    ["flags", 4],
    ["padding", 4],
  ],
  fuse_write_out: [["size", 4], ["padding", 4]],
  fuse_kstatfs: [
    ["blocks", 8],
    ["bfree", 8],
    ["bavail", 8],
    ["files", 8],
    ["ffree", 8],
    ["bsize", 4],
    ["namelen", 4],
    ["frsize", 4],
    ["padding", 4],
    ["spare", 24],
  ],
  fuse_fsync_in: [["fh", 8], ["fsync_flags", 4], ["padding", 4]],
  fuse_setxattr_in: [["size", 4], ["flags", 4], ["setxattr_flags", 4], ["padding", 4]],
  fuse_getxattr_in: [["size", 4], ["padding", 4]],
  fuse_getxattr_out: [["size", 4], ["padding", 4]],
  fuse_access_in: [["mask", 4], ["padding", 4]],
  fuse_init_in: [
    ["major", 4],
    ["minor", 4],
    ["max_readahead", 4],
    ["flags", 4],
    ["flags2", 4],
    ["unused", 44],
  ],
  fuse_init_out: [
    ["major", 4],
    ["minor", 4],
    ["max_readahead", 4],
    ["flags", 4],
    ["max_background", 2],
    ["congestion_threshold", 2],
    ["max_write", 4],
    ["time_gran", 4],
    ["max_pages", 2],
    ["map_alignment", 2],
    ["flags2", 4],
    ["unused", 28],
  ],
  fuse_interrupt_in: [["unique", 8]],
  fuse_dirent: [["ino", 8], ["off", 8], ["namelen", 4], ["type", 4]],
  fuse_direntplus: [["entry_out", 128], ["dirent", 24]],
  fuse_fallocate_in: [["fh", 8], ["offset", 8], ["length", 8], ["mode", 4], ["padding", 4]],
  fuse_lseek_in: [["fh", 8], ["offset", 8], ["whence", 4], ["padding", 4]],
  fuse_lseek_out: [["offset", 8]],
  fuse_copy_file_range_in: [
    ["fh_in", 8],
    ["off_in", 8],
    ["nodeid_out", 8],
    ["fh_out", 8],
    ["off_out", 8],
    ["len", 8],
    ["flags", 8],
  ],
} as const satisfies Record<string, StructFields>;

/** Name of a struct in {@link STRUCTS}. */
export type StructName = keyof typeof STRUCTS;

/** Byte offset of each field of `name`. */
export function offsets(name: StructName): Record<string, number> {
  const out: Record<string, number> = {};
  let off = 0;
  for (const [field, size] of STRUCTS[name]) {
    out[field] = off;
    off += size;
  }
  return out;
}

/** Size in bytes of struct `name`. */
export function sizeOf(name: StructName): number {
  let n = 0;
  for (const [, size] of STRUCTS[name]) n += size;
  return n;
}

/** `sizeof(struct fuse_in_header)`. */
export const IN_HEADER_SIZE = 40;
/** `sizeof(struct fuse_out_header)`. */
export const OUT_HEADER_SIZE = 16;
/** `sizeof(struct fuse_attr)`. */
export const ATTR_SIZE = 88;
/** `sizeof(struct fuse_entry_out)`. */
export const ENTRY_OUT_SIZE = 128;
/** `sizeof(struct fuse_attr_out)`. */
export const ATTR_OUT_SIZE = 104;
/** `FUSE_NAME_OFFSET`: where a dirent's name starts. */
export const DIRENT_NAME_OFFSET = 24;
/** `FUSE_NAME_OFFSET_DIRENTPLUS`. */
export const DIRENTPLUS_NAME_OFFSET = 152;

/** `FUSE_DIRENT_ALIGN`: records are padded to 8 bytes. */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}

/** Name of an opcode for messages, e.g. `opName(1)` → `"LOOKUP"`. */
export function opName(op: number): string {
  for (const [k, v] of Object.entries(Op)) if (v === op) return k;
  return `opcode ${op}`;
}
