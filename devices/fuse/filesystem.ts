/**
 * The `FileSystem` a {@link FuseServer} dispatches to (after crosvm's `fuse`
 * crate): one method per FUSE operation, each defaulting to ENOSYS. Methods
 * are synchronous, take decoded arguments and return decoded results; they
 * signal failure by throwing {@link FuseError} with an errno. Names are raw
 * bytes (Linux file names need not be UTF-8) without a trailing NUL.
 *
 * LOOKUP, GETXATTR and LISTXATTR fail as part of normal operation (a new
 * file's name is looked up before it is created; the kernel asks for
 * `security.capability` before the first write to each file), so those may
 * also *return* the {@link FuseError}: a throw makes V8 walk the stack, and a
 * method that always ends in a throw is never optimized (measured: a failing
 * GETXATTR cost 7 µs of CPU thrown, 1 µs returned).
 *
 * @module
 */

import { Errno, errnoName } from "../../kvm_ffi/errno.ts";

/** A failure to report to the FUSE client as `-errno`. */
export class FuseError extends Error {
  /** Positive errno value, e.g. 2 for ENOENT. */
  readonly errno: number;

  static #cache = new Map<number, FuseError>();
  /**
   * A shared instance for `errno` without detail: throwing it costs no allocation,
   * for hot paths such as negative lookups. Do not mutate it.
   */
  static of(errno: number): FuseError {
    let e = FuseError.#cache.get(errno);
    if (!e) {
      e = new FuseError(errno);
      FuseError.#cache.set(errno, e);
    }
    return e;
  }
  constructor(errno: number, detail = "") {
    // These are replies, not bugs: skip the stack capture (several µs each, and a
    // hostile client can make every request fail).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(detail ? `${errnoName(errno)}: ${detail}` : errnoName(errno));
    Error.stackTraceLimit = limit;
    this.name = "FuseError";
    this.errno = errno;
  }
}

/** Who sent a request (from `fuse_in_header`). */
export interface Context {
  /** Caller's fsuid in the client's namespace. */
  uid: number;
  /** Caller's fsgid. */
  gid: number;
  /** Caller's pid (0 for kernel-internal requests). */
  pid: number;
}

/** File attributes (`struct fuse_attr`). Times are seconds + nanoseconds. */
export interface Attr {
  ino: bigint;
  size: bigint;
  blocks: bigint;
  atime: bigint;
  atimensec: number;
  mtime: bigint;
  mtimensec: number;
  ctime: bigint;
  ctimensec: number;
  /** Type and permission bits (S_IFMT | 07777). */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number in the kernel's `new_encode_dev` form. */
  rdev: number;
  blksize: number;
}

/** Attributes plus how long the client may cache them, in seconds. */
export interface AttrReply {
  attr: Attr;
  /** Attribute cache timeout in seconds (fractions allowed). */
  timeout: number;
}

/** A looked-up node (`struct fuse_entry_out`). Each returned Entry counts one lookup. */
export interface Entry {
  /** Node id; valid until the client forgets as many lookups as were returned. */
  nodeid: number;
  generation: number;
  attr: Attr;
  /** Name cache timeout in seconds. */
  entryTimeout: number;
  /** Attribute cache timeout in seconds. */
  attrTimeout: number;
}

/** Result of OPEN / OPENDIR. */
export interface Opened {
  /** Handle the client passes back with READ/WRITE/RELEASE etc. */
  fh: number;
  /** `FOPEN_*` bits. */
  openFlags: number;
  /** With FOPEN_PASSTHROUGH: the backing file's id ({@link BackingFiles.open}). */
  backingId?: number;
}

/**
 * The transport's backing-file registry (FUSE_PASSTHROUGH, `/dev/fuse` only:
 * FUSE_DEV_IOC_BACKING_OPEN/CLOSE). The client then reads and writes an open
 * file through the backing file itself, without READ/WRITE requests.
 */
export interface BackingFiles {
  /** Registers host fd `fd` (the kernel takes its own reference); returns its id (> 0) or -errno. */
  open(fd: number): number;
  /** Drops id `id`. */
  close(id: number): void;
}

/** Result of CREATE: the new node and its open handle. */
export interface Created extends Opened {
  entry: Entry;
}

/** Filesystem statistics (`struct fuse_kstatfs`). */
export interface StatFs {
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
  files: bigint;
  ffree: bigint;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** SETATTR request (`struct fuse_setattr_in`); `valid` holds `FATTR_*` bits. */
export interface SetattrIn {
  valid: number;
  fh: number;
  size: bigint;
  atime: bigint;
  atimensec: number;
  mtime: bigint;
  mtimensec: number;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * Where READDIR / READDIRPLUS entries go. A backend checks {@link fits}
 * before doing the work for an entry (for READDIRPLUS, before counting a
 * lookup), then calls {@link add}.
 */
export interface DirSink {
  /** True for READDIRPLUS: entries carry an {@link Entry}. */
  readonly plus: boolean;
  /** Whether an entry with a name of `nameLen` bytes still fits in the reply. */
  fits(nameLen: number): boolean;
  /**
   * Appends an entry. `off` is the offset of the NEXT entry (what a later
   * READDIR passes to continue after this one). `entry` is required for
   * READDIRPLUS except for "." and ".." (pass null: no lookup is counted).
   */
  add(name: Uint8Array, ino: bigint, type: number, off: bigint, entry: Entry | null): void;
}

/**
 * A filesystem served over FUSE. Every method throws ENOSYS unless
 * overridden; `nodeid`s and `fh`s are the values the backend returned.
 */
export class FileSystem {
  /** Called once the protocol version is agreed. */
  init(_ctx: Context): void {}
  /** Unmount (FUSE_DESTROY): release everything. */
  destroy(): void {}
  /**
   * FUSE_PASSTHROUGH was agreed (`backing`) or ended (null): a backend that can may
   * answer OPEN/CREATE of regular files with {@link Opened.backingId}. Default: ignored.
   */
  useBacking(_backing: BackingFiles | null): void {}
  /** LOOKUP `name` in directory `parent` (a failure may be returned, see above). */
  lookup(_ctx: Context, _parent: number, _name: Uint8Array): Entry | FuseError {
    throw enosys();
  }
  /** FORGET: the client drops `nlookup` references to `nodeid`. */
  forget(_nodeid: number, _nlookup: number): void {}
  /** GETATTR (`fh` is set when the client passed FUSE_GETATTR_FH). */
  getattr(_ctx: Context, _nodeid: number, _fh: number | null): AttrReply {
    throw enosys();
  }
  /** SETATTR. */
  setattr(_ctx: Context, _nodeid: number, _in: SetattrIn): AttrReply {
    throw enosys();
  }
  /** READLINK: the link's target bytes. */
  readlink(_ctx: Context, _nodeid: number): Uint8Array {
    throw enosys();
  }
  /** SYMLINK `name` → `target` in `parent`. */
  symlink(_ctx: Context, _parent: number, _name: Uint8Array, _target: Uint8Array): Entry {
    throw enosys();
  }
  /** MKNOD (regular files, FIFOs, sockets, devices). */
  mknod(
    _ctx: Context,
    _parent: number,
    _name: Uint8Array,
    _mode: number,
    _rdev: number,
    _umask: number,
  ): Entry {
    throw enosys();
  }
  /** MKDIR. */
  mkdir(_ctx: Context, _parent: number, _name: Uint8Array, _mode: number, _umask: number): Entry {
    throw enosys();
  }
  /** UNLINK. */
  unlink(_ctx: Context, _parent: number, _name: Uint8Array): void {
    throw enosys();
  }
  /** RMDIR. */
  rmdir(_ctx: Context, _parent: number, _name: Uint8Array): void {
    throw enosys();
  }
  /** RENAME / RENAME2 (`flags`: RENAME_NOREPLACE 1, RENAME_EXCHANGE 2). */
  rename(
    _ctx: Context,
    _olddir: number,
    _oldname: Uint8Array,
    _newdir: number,
    _newname: Uint8Array,
    _flags: number,
  ): void {
    throw enosys();
  }
  /** LINK: a new name for `nodeid`. */
  link(_ctx: Context, _nodeid: number, _newparent: number, _newname: Uint8Array): Entry {
    throw enosys();
  }
  /** OPEN (`flags` are the open(2) flags). */
  open(_ctx: Context, _nodeid: number, _flags: number): Opened {
    throw enosys();
  }
  /**
   * READ up to the total length of `dst` bytes at `offset` into the segments
   * `dst` (in order); returns the byte count (short only at end of file).
   */
  read(_ctx: Context, _nodeid: number, _fh: number, _offset: bigint, _dst: Uint8Array[]): number {
    throw enosys();
  }
  /**
   * Runs `use` with the host file descriptor behind open file `fh` (kept open
   * until it returns) and returns its result, or null when this back-end has
   * none: for a transport that moves READ data itself (`dev_fuse_splice.ts`).
   */
  withReadFd(
    _ctx: Context,
    _nodeid: number,
    _fh: number,
    _use: (fd: number) => number,
  ): number | null {
    return null;
  }
  /** WRITE `data` at `offset`; returns the byte count written. */
  write(
    _ctx: Context,
    _nodeid: number,
    _fh: number,
    _offset: bigint,
    _data: Uint8Array,
    _writeFlags: number,
  ): number {
    throw enosys();
  }
  /** STATFS. */
  statfs(_ctx: Context, _nodeid: number): StatFs {
    throw enosys();
  }
  /** RELEASE an OPEN handle. */
  release(_ctx: Context, _nodeid: number, _fh: number): void {}
  /** FSYNC. */
  fsync(_ctx: Context, _nodeid: number, _fh: number, _datasync: boolean): void {
    throw enosys();
  }
  /** SETXATTR (`flags`: XATTR_CREATE 1 / XATTR_REPLACE 2). */
  setxattr(
    _ctx: Context,
    _nodeid: number,
    _name: Uint8Array,
    _value: Uint8Array,
    _flags: number,
  ): void {
    throw enosys();
  }
  /**
   * GETXATTR: the value. `size` is the most bytes the client accepts; with 0 it asks
   * only for the length, which a backend may then return as a number instead of the
   * value. The server turns a value longer than `size` into ERANGE. A failure
   * may be returned (see above). The value may be a view of the back-end's own
   * buffer: the server copies it before the next call.
   */
  getxattr(
    _ctx: Context,
    _nodeid: number,
    _name: Uint8Array,
    _size?: number,
  ): Uint8Array | number | FuseError {
    throw enosys();
  }
  /** LISTXATTR: NUL-separated names (`size` as for {@link getxattr}). */
  listxattr(_ctx: Context, _nodeid: number, _size?: number): Uint8Array | number | FuseError {
    throw enosys();
  }
  /** REMOVEXATTR. */
  removexattr(_ctx: Context, _nodeid: number, _name: Uint8Array): void {
    throw enosys();
  }
  /** FLUSH (close(2) of one file descriptor of an open handle). */
  flush(_ctx: Context, _nodeid: number, _fh: number): void {}
  /** OPENDIR. */
  opendir(_ctx: Context, _nodeid: number, _flags: number): Opened {
    throw enosys();
  }
  /** READDIR / READDIRPLUS from `offset` (0 or an `off` given to a previous {@link DirSink.add}). */
  readdir(_ctx: Context, _nodeid: number, _fh: number, _offset: bigint, _sink: DirSink): void {
    throw enosys();
  }
  /** RELEASEDIR. */
  releasedir(_ctx: Context, _nodeid: number, _fh: number): void {}
  /** FSYNCDIR. */
  fsyncdir(_ctx: Context, _nodeid: number, _fh: number, _datasync: boolean): void {
    throw enosys();
  }
  /** ACCESS (`mask`: R_OK 4, W_OK 2, X_OK 1, F_OK 0). */
  access(_ctx: Context, _nodeid: number, _mask: number): void {
    throw enosys();
  }
  /** CREATE and open a regular file. */
  create(
    _ctx: Context,
    _parent: number,
    _name: Uint8Array,
    _mode: number,
    _flags: number,
    _umask: number,
  ): Created {
    throw enosys();
  }
  /** FALLOCATE (`mode` as fallocate(2)). */
  fallocate(
    _ctx: Context,
    _nodeid: number,
    _fh: number,
    _offset: bigint,
    _length: bigint,
    _mode: number,
  ): void {
    throw enosys();
  }
  /** LSEEK (SEEK_DATA / SEEK_HOLE); returns the new offset. */
  lseek(_ctx: Context, _nodeid: number, _fh: number, _offset: bigint, _whence: number): bigint {
    throw enosys();
  }
  /** COPY_FILE_RANGE; returns bytes copied. */
  copyFileRange(
    _ctx: Context,
    _nodeIn: number,
    _fhIn: number,
    _offIn: bigint,
    _nodeOut: number,
    _fhOut: number,
    _offOut: bigint,
    _len: bigint,
    _flags: number,
  ): number {
    throw enosys();
  }
  /** Serialisable state for snapshots (see {@link restore}). */
  save(): unknown {
    return null;
  }
  /** Restores what {@link save} returned (into a freshly constructed backend). */
  restore(_state: unknown): void {}
}

function enosys(): FuseError {
  return new FuseError(Errno.ENOSYS);
}
