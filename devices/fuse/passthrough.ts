/**
 * A passthrough {@link FileSystem} over a host directory, hardened against a
 * hostile client.
 *
 * How escapes are prevented:
 * - Every node is reached from the share's root fd by `openat2` with
 *   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS and
 *   `O_PATH | O_NOFOLLOW`: no `..` out of the share, no symlink followed by
 *   the server, ever (including ones just created), no `/proc` magic links.
 * - Names from the client are one component: empty, `.`, `..`, or
 *   containing `/` is EINVAL (NUL cannot occur: names are NUL-terminated).
 *   Each name is copied once into a private buffer and only the copy is
 *   checked and used (also for the hidden-path and xattr-namespace checks),
 *   so the check always holds for what reaches the host.
 * - Operations on a node use its O_PATH fd with `*at(fd, "", AT_EMPTY_PATH |
 *   AT_SYMLINK_NOFOLLOW)`, or the fd of one of its open handles; only where
 *   the kernel has no fd form (chmod, truncate, xattrs, reopening an O_PATH
 *   fd for I/O) the server uses `/proc/self/fd/N` of its own fd, which names
 *   exactly that inode. A node without an fd is stat'ed by its name in its
 *   parent (one validated component, no follow) and the result accepted only
 *   if it is still the same inode (dev, ino) and file type.
 * - OPEN and CREATE only ever open regular files (never FIFOs or devices,
 *   which could block the server or reach host devices); MKNOD of device
 *   nodes is EPERM unless `allowDevices`.
 * - LINK takes a node (already inside the share), never a path.
 * - Setting `trusted.*` / `security.capability` xattrs is refused (EPERM)
 *   so a guest cannot grant host file capabilities.
 *
 * Node fds are cached in an LRU (RLIMIT_NOFILE is finite and a client may
 * keep 100 000s of nodes); an evicted node is reopened by its path (parent
 * chain of names, kept up to date by RENAME/UNLINK through this server) and
 * its (dev, ino) checked; a node whose file was moved by someone else gives
 * ESTALE. Unlinked-but-referenced nodes keep their fd pinned.
 *
 * Threads: the state (nodes, handles, the LRU) lives in a {@link NodeTable}
 * of SharedArrayBuffers. {@link PassthroughFs.share} gives what another
 * thread needs to build its own instance over the same state
 * ({@link PassthroughFs.attach}), so several `/dev/fuse` readers serve one
 * connection. Each request runs under the table's lock, host calls
 * included — a node's fd is only ever closed by the lock holder — except the
 * data calls on an open handle (READ, WRITE, FSYNC, FALLOCATE, LSEEK,
 * COPY_FILE_RANGE), which hold a reference on the handle instead, so a
 * RELEASE meanwhile defers the close to the last of them.
 *
 * Snapshot state ({@link PassthroughFs.save}): every node's id, parent id,
 * name, (dev, ino) and lookup count, and every open handle's node, flags
 * and kind. {@link PassthroughFs.restore} reopens nodes by their path
 * relative to the share and checks (dev, ino); a node that no longer
 * matches becomes stale (ESTALE), a handle whose node is stale gives EBADF.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { O } from "../../kvm_ffi/libc.ts";
import {
  type Attr,
  type AttrReply,
  type BackingFiles,
  type Context,
  type Created,
  type DirSink,
  type Entry,
  FileSystem,
  FuseError,
  type Opened,
  type SetattrIn,
  type StatFs,
} from "./filesystem.ts";
import { NF, NodeTable, type NodeTableBuffers } from "./node_table.ts";
import { FATTR, FOPEN } from "./protocol.ts";
import {
  AT,
  cpath,
  EMPTY,
  openat2,
  procFd,
  r,
  raiseNofile,
  RESOLVE_SAFE,
  S,
  setThreadCreds,
  STATFS_OFF,
  STATX,
  STATX_OFF,
  sys,
} from "./sys.ts";

/** Options of a {@link PassthroughFs}. */
export interface PassthroughOptions {
  /** Every mutation fails with EROFS. Default false. */
  readOnly?: boolean;
  /**
   * Whether other mounts under the root are served. With false, a directory
   * that is a mount point shows as empty and other files on another mount
   * do not exist. Default true.
   */
  crossMounts?: boolean;
  /** Paths relative to the root that do not exist for the client (e.g. `["home", "root"]`). */
  hide?: readonly string[];
  /**
   * Serve with this user's rights: every host call runs with this
   * fsuid/fsgid/groups. Default: the server's own (as root: new files are
   * owned by the calling client uid/gid).
   */
  credentials?: { uid: number; gid: number; groups?: readonly number[] };
  /** Seconds the client may cache names; default 1. */
  entryTimeout?: number;
  /** Seconds the client may cache attributes; default 1. */
  attrTimeout?: number;
  /** Allow MKNOD of character and block devices. Default false. */
  allowDevices?: boolean;
  /** How many node fds to keep open at most; default half of RLIMIT_NOFILE. */
  maxCachedFds?: number;
}

/**
 * What another thread needs to serve the same share ({@link PassthroughFs.attach}):
 * structured-cloneable, the buffers shared. The fds are the process's own.
 */
export interface PassthroughShare {
  root: string;
  options: PassthroughOptions;
  table: NodeTableBuffers;
  rootFd: number;
  rootMnt: string;
  maxFds: number;
  /** Hidden inodes as `dev index:ino lo:ino hi`, and their inode numbers. */
  hidden: string[];
  hiddenIno: string[];
}

/** Saved node (see module docs). */
export interface SavedNode {
  id: number;
  parent: number | null;
  /** Name bytes as base64. */
  name: string;
  key: string;
  lookups: number;
  detached: boolean;
}

/** Saved open handle. */
export interface SavedHandle {
  fh: number;
  node: number;
  kind: "file" | "dir";
  flags: number;
  off: string;
}

/** What {@link PassthroughFs.save} returns. */
export interface PassthroughState {
  version: 1;
  nextId: number;
  nextFh: number;
  nodes: SavedNode[];
  handles: SavedHandle[];
}

/** This thread's getdents buffer of a directory handle (the fd position is shared). */
interface DirBuf {
  fh: number;
  /** The handle's position count when this thread last left it (see NodeTable.hPos). */
  seq: number;
  buf: Uint8Array<ArrayBuffer>;
  dv: DataView;
  len: number;
  pos: number;
  /** The offset after the last entry consumed (stored in the table when the READDIR ends). */
  off: bigint;
}

/** The root's slot (node id 1, FUSE_ROOT_ID). */
const ROOT = 1;
const DOT = 0x2e;
const SLASH = 0x2f;
const UTIME_NOW = (1 << 30) - 1;
const UTIME_OMIT = (1 << 30) - 2;
/** open(2) flags a client may pass through to the host on OPEN/CREATE. */
const OPEN_PASS = 3 | O.APPEND | O.TRUNC | 0o4010000 /* O_SYNC */ | 0o10000 /* O_DSYNC */ |
  0o1000000 /* O_NOATIME */ | 0o100000 /* O_LARGEFILE */;
const XATTR_MAX = 65536;
/** O_SYNC, O_DSYNC, O_NOATIME: flags a backing file would impose on every open sharing it. */
const BACKING_UNFIT = 0o4010000 | 0o10000 | 0o1000000;
/**
 * Open flags of every file handle. FOPEN_NOFLUSH (7.35): FLUSH would be a
 * no-op here — writes reach the host with pwrite before WRITE is answered
 * and POSIX locks are not offered — so the client skips the round trip on
 * each close (a shell's `echo x > f` closes twice). Older clients ignore it.
 */
const FILE_OPEN_FLAGS = FOPEN.NOFLUSH;
/**
 * Open flags of a file handle on a read-only share: also FOPEN_KEEP_CACHE, so
 * the client keeps the file's page cache across opens instead of dropping it
 * on each one (every exec in a guest whose root is this share re-read its
 * binary and libraries). Host-side changes still reach the client: the server
 * negotiates FUSE_AUTO_INVAL_DATA, so the client drops a file's pages when a
 * later attribute reply (at most attrTimeout old) shows another mtime or size.
 * A read-write share keeps close-to-open consistency (no KEEP_CACHE): the
 * host may change its files between the guest's opens and tests expect the
 * next open to see that at once.
 */
const RO_FILE_OPEN_FLAGS = FILE_OPEN_FLAGS | FOPEN.KEEP_CACHE;
/** Directory getdents buffers a thread keeps for handles it may serve again. */
const DIR_BUFS_KEPT = 64;

/** "." as a C string, for reopening a directory's O_PATH fd for reading. */
const DOT_PATH = cpath(".");

/** Inode numbers below this share a number key with their dev's index ({@link hiddenKey}). */
const INO_SPAN = 2 ** 45;
const TWO32 = 2 ** 32;

/** A number (or, for huge values, text) naming inode (dev index, lo, hi), for sets. */
function hiddenKey(dev: number, lo: number, hi: number): number | string {
  return dev < 256 && hi < 0x2000 ? dev * INO_SPAN + hi * TWO32 + lo : `${dev}:${lo}:${hi}`;
}

/** The passthrough backend. Construct once per share; serve it with a {@link FuseServer}. */
export class PassthroughFs extends FileSystem {
  /** The host directory shared. */
  readonly root: string;
  #options: PassthroughOptions;
  #ro: boolean;
  #crossMounts: boolean;
  #creds: PassthroughOptions["credentials"];
  #entryTimeout: number;
  #attrTimeout: number;
  #allowDevices: boolean;
  #rootFd: number;
  #rootMnt = 0n;
  #t: NodeTable;
  /** Whether this instance created the table (and owns the root fd). */
  #primary: boolean;
  #maxFds: number;
  #hidden = new Set<number | string>();
  #hiddenIno = new Set<bigint>();
  #stx = new Uint8Array(STATX_OFF.size_of);
  #stxv = new DataView(this.#stx.buffer);
  /** The key of the last statx ({@link #readKey}). */
  #kd = 0;
  #klo = 0;
  #khi = 0;
  #name1 = new Uint8Array(4097);
  #name2 = new Uint8Array(4097);
  #xbuf = new Uint8Array(XATTR_MAX);
  /** An xattr name's private copy (at most 255 bytes and a NUL). */
  #xname1 = new Uint8Array(256);
  /** struct timespec[2] for utimensat. */
  #times = new BigInt64Array(4);
  /** struct iovec[] for preadv (grown as needed). */
  #iov = new BigUint64Array(32);
  #dirBufs: Uint8Array<ArrayBuffer>[] = [];
  /** Handle slot → this thread's getdents buffer for it. */
  #dirCache = new Map<number, DirBuf>();
  #isRoot: boolean;
  #groups: readonly number[] = [];
  /** This thread's backing-file registry once FUSE_PASSTHROUGH is agreed ({@link useBacking}). */
  #backing: BackingFiles | null = null;

  constructor(root: string, options: PassthroughOptions = {}, share?: PassthroughShare) {
    super();
    this.root = root;
    this.#options = options;
    this.#ro = options.readOnly ?? false;
    this.#crossMounts = options.crossMounts ?? true;
    this.#creds = options.credentials;
    if (this.#creds) this.#groups = this.#creds.groups ?? [this.#creds.gid];
    this.#entryTimeout = options.entryTimeout ?? 1;
    this.#attrTimeout = options.attrTimeout ?? 1;
    this.#allowDevices = options.allowDevices ?? false;
    this.#isRoot = Deno.uid() === 0;
    this.#enterCreds();
    if (share) {
      this.#primary = false;
      this.#t = NodeTable.attach(share.table);
      this.#rootFd = share.rootFd;
      this.#rootMnt = BigInt(share.rootMnt);
      this.#maxFds = share.maxFds;
      for (const k of share.hidden) {
        const [d, lo, hi] = k.split(":").map(Number);
        this.#hidden.add(hiddenKey(d, lo, hi));
      }
      for (const i of share.hiddenIno) this.#hiddenIno.add(BigInt(i));
      return;
    }
    this.#primary = true;
    const limit = raiseNofile();
    this.#maxFds = options.maxCachedFds ?? Math.max(64, Math.floor(limit / 2));
    const fd = r(sys.openat(AT.FDCWD, cpath(root), O.PATH | O.DIRECTORY | O.CLOEXEC, 0));
    if (fd < 0) throw new FuseError(-fd, `cannot open share root ${root}`);
    this.#rootFd = fd;
    const st = this.#statFd(fd);
    if (st < 0) {
      sys.close(fd);
      throw new FuseError(-st, `cannot stat share root ${root}`);
    }
    this.#rootMnt = this.#stxv.getBigUint64(STATX_OFF.mnt_id, true);
    const t = this.#t = NodeTable.create();
    t.lock();
    try {
      const s = t.nodeAlloc();
      if (s !== ROOT) throw new Error(`PassthroughFs: root got slot ${s}`);
      this.#readKey();
      t.setKey(ROOT, this.#kd, this.#klo, this.#khi);
      t.setType(ROOT, S.IFDIR);
      t.setFd(ROOT, fd);
      t.setLookups(ROOT, 1);
      t.keyIn(ROOT);
      for (const h of options.hide ?? []) this.#addHidden(h);
    } finally {
      t.unlock();
    }
  }

  /**
   * What another thread needs to serve this share with {@link attach} (same
   * process: the fds are shared; the state is the same {@link NodeTable}).
   */
  share(): PassthroughShare {
    const hidden: string[] = [];
    for (const k of this.#hidden) {
      if (typeof k === "string") hidden.push(k);
      else {
        const d = Math.floor(k / INO_SPAN);
        const ino = k - d * INO_SPAN;
        hidden.push(`${d}:${ino % TWO32}:${Math.floor(ino / TWO32)}`);
      }
    }
    return {
      root: this.root,
      options: this.#options,
      table: this.#t.buffers,
      rootFd: this.#rootFd,
      rootMnt: String(this.#rootMnt),
      maxFds: this.#maxFds,
      hidden,
      hiddenIno: [...this.#hiddenIno].map(String),
    };
  }

  /** Another thread's instance over the state of {@link share}'s result. */
  static attach(share: PassthroughShare): PassthroughFs {
    return new PassthroughFs(share.root, share.options, share);
  }

  /** Number of nodes currently known (for tests and diagnostics). */
  get nodeCount(): number {
    return this.#locked(() => this.#t.nodeCount);
  }

  /** Number of open handles. */
  get handleCount(): number {
    return this.#locked(() => this.#t.handleCount);
  }

  /** Number of node fds currently open (LRU + pinned + root). */
  get openNodeFds(): number {
    return this.#locked(() => this.#t.liveNodes().filter((s) => this.#t.fd(s) >= 0).length);
  }

  // ---- helpers -------------------------------------------------------------

  #locked<T>(fn: () => T): T {
    this.#t.lock();
    try {
      return fn();
    } finally {
      this.#t.unlock();
    }
  }

  #enterCreds(): void {
    const c = this.#creds;
    if (c) setThreadCreds(c.uid, c.gid, this.#groups);
    else if (this.#isRoot) setThreadCreds(0, 0);
  }

  /** Runs `fn` with the caller's fsuid/fsgid when serving as root without fixed credentials. */
  #asCaller<T>(ctx: Context, fn: () => T): T {
    if (this.#creds || !this.#isRoot || (ctx.uid === 0 && ctx.gid === 0)) return fn();
    setThreadCreds(ctx.uid, ctx.gid);
    try {
      return fn();
    } finally {
      setThreadCreds(0, 0);
    }
  }

  #addHidden(rel: string): void {
    const clean = rel.replace(/^\/+/, "");
    if (clean === "") return;
    const fd = openat2(
      this.#rootFd,
      cpath(clean),
      O.PATH | O.NOFOLLOW | O.CLOEXEC,
      0,
      RESOLVE_SAFE,
    );
    if (fd < 0) return;
    if (this.#statFd(fd) >= 0) {
      this.#readKey();
      this.#hidden.add(hiddenKey(this.#kd, this.#klo, this.#khi));
      this.#hiddenIno.add(this.#stxv.getBigUint64(STATX_OFF.ino, true));
    }
    sys.close(fd);
  }

  #statFd(fd: number): number {
    return r(
      sys.statx(
        fd,
        EMPTY,
        AT.EMPTY_PATH | AT.SYMLINK_NOFOLLOW,
        STATX.BASIC_STATS | STATX.MNT_ID,
        this.#stx,
      ),
    );
  }

  /** Takes (dev index, ino lo, ino hi) of the last statx into #kd/#klo/#khi. */
  #readKey(): void {
    const v = this.#stxv;
    this.#kd = this.#t.devIndex(
      v.getUint32(STATX_OFF.dev_major, true),
      v.getUint32(STATX_OFF.dev_minor, true),
    );
    this.#klo = v.getUint32(STATX_OFF.ino, true);
    this.#khi = v.getUint32(STATX_OFF.ino + 4, true);
  }

  /** Whether the last statx is node `n`'s inode and (when known) file type. */
  #isNode(n: number): boolean {
    this.#readKey();
    if (!this.#t.isKey(n, this.#kd, this.#klo, this.#khi)) return false;
    const type = this.#t.type(n);
    return type === 0 || (this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT) === type;
  }

  /** `maj:min:ino` of node `n` (the saved form). */
  #keyText(n: number): string {
    const t = this.#t;
    const [maj, min] = t.dev(t.devOf(n));
    return `${maj}:${min}:${(BigInt(t.inoHi(n)) << 32n) | BigInt(t.inoLo(n))}`;
  }

  /** The last statx as FUSE attributes. */
  #attr(): Attr {
    const v = this.#stxv;
    const rmaj = v.getUint32(STATX_OFF.rdev_major, true);
    const rmin = v.getUint32(STATX_OFF.rdev_minor, true);
    return {
      ino: v.getBigUint64(STATX_OFF.ino, true),
      size: v.getBigUint64(STATX_OFF.size, true),
      blocks: v.getBigUint64(STATX_OFF.blocks, true),
      atime: v.getBigInt64(STATX_OFF.atime, true),
      atimensec: v.getUint32(STATX_OFF.atime + 8, true),
      mtime: v.getBigInt64(STATX_OFF.mtime, true),
      mtimensec: v.getUint32(STATX_OFF.mtime + 8, true),
      ctime: v.getBigInt64(STATX_OFF.ctime, true),
      ctimensec: v.getUint32(STATX_OFF.ctime + 8, true),
      mode: v.getUint16(STATX_OFF.mode, true),
      nlink: v.getUint32(STATX_OFF.nlink, true),
      uid: v.getUint32(STATX_OFF.uid, true),
      gid: v.getUint32(STATX_OFF.gid, true),
      // new_encode_dev (include/linux/kdev_t.h)
      rdev: ((rmin & 0xff) | (rmaj << 8) | ((rmin & ~0xff) << 12)) >>> 0,
      blksize: v.getUint32(STATX_OFF.blksize, true),
    };
  }

  /** The slot of node id `id`. */
  #node(id: number): number {
    const n = this.#t.slotOf(id);
    if (n < 0) throw new FuseError(Errno.ENOENT, `unknown node id ${id}`);
    if (this.#t.has(n, NF.STALE)) throw new FuseError(Errno.ESTALE, `node ${id}`);
    return n;
  }

  #dir(id: number): number {
    const n = this.#node(id);
    if (this.#t.type(n) !== S.IFDIR) throw new FuseError(Errno.ENOTDIR, `node ${id}`);
    return n;
  }

  /** A directory the client may create in / remove from. */
  #mutableDir(id: number): number {
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const n = this.#dir(id);
    if (this.#t.has(n, NF.FOREIGN)) throw new FuseError(Errno.EACCES, "directory on another mount");
    return n;
  }

  /** The O_PATH fd of node `n`, reopening it by path if it was evicted. */
  #fd(n: number): number {
    const t = this.#t;
    const have = t.fd(n);
    if (have >= 0) {
      if (n !== ROOT && !t.has(n, NF.DETACHED)) t.lruTouch(n);
      return have;
    }
    if (t.has(n, NF.STALE | NF.DETACHED)) throw new FuseError(Errno.ESTALE, `node ${t.id(n)}`);
    // Walk up to the nearest ancestor with an open fd, collecting the chain.
    const chain: number[] = [];
    let a = n;
    let len = 0;
    while (t.fd(a) < 0) {
      const p = t.parent(a);
      if (p < 0) throw new FuseError(Errno.ESTALE, `node ${t.id(n)} has no path`);
      chain.push(a);
      len += t.nameLen(a) + 1;
      a = p;
    }
    const path = new Uint8Array(len);
    let at = 0;
    for (let i = chain.length - 1; i >= 0; i--) {
      at += t.copyName(chain[i], path, at);
      path[at++] = i === 0 ? 0 : SLASH;
    }
    const fd = openat2(t.fd(a), path, O.PATH | O.NOFOLLOW | O.CLOEXEC, 0, RESOLVE_SAFE);
    if (fd < 0) throw new FuseError(fd === -Errno.ENOENT ? Errno.ESTALE : -fd, "reopen node");
    // dev:ino alone can match a different object once the node holds no fd (the inode
    // number of a removed file is reused, e.g. by a symlink put in its place): the
    // file type must match too (0 = not known yet, during restore).
    if (this.#statFd(fd) < 0 || !this.#isNode(n)) {
      sys.close(fd);
      throw new FuseError(Errno.ESTALE, `node ${t.id(n)} was replaced`);
    }
    t.setFd(n, fd);
    this.#cache(n);
    return fd;
  }

  #cache(n: number): void {
    const t = this.#t;
    if (n === ROOT || t.has(n, NF.DETACHED)) return;
    t.lruTouch(n);
    while (t.lruSize > this.#maxFds) {
      const victim = t.lruOldest();
      t.lruOut(victim);
      const fd = t.fd(victim);
      if (fd >= 0) sys.close(fd);
      t.setFd(victim, -1);
    }
  }

  /** Moves node `n` under `parent` as `name[0..len)`. */
  #setParent(n: number, parent: number, name: Uint8Array, len: number): void {
    const t = this.#t;
    const old = t.parent(n);
    if (old !== parent) {
      t.addKids(parent, 1);
      t.setParent(n, parent);
      if (old >= 0) {
        t.addKids(old, -1);
        this.#maybeDrop(old);
      }
    }
    t.setName(n, name, len);
  }

  #maybeDrop(n: number): void {
    const t = this.#t;
    while (n !== ROOT && t.lookups(n) <= 0 && t.kids(n) <= 0) {
      t.keyOut(n);
      t.lruOut(n);
      const fd = t.fd(n);
      if (fd >= 0) sys.close(fd);
      t.setFd(n, -1);
      const parent = t.parent(n);
      // The client forgets an inode only once no file of it is open, so nothing uses
      // the backing id any more (a RELEASE may still come: FORGETs are read first).
      this.#dropBacking(n);
      // Open handles keep their fds (RELEASE closes them); they just lose their node link.
      t.nodeFree(n);
      if (parent < 0) return;
      t.addKids(parent, -1);
      n = parent;
    }
  }

  /**
   * Copies a client name into `buf`, validates the copy as one path component
   * and returns it NUL-terminated in `buf`. The copy comes first and is all a
   * caller uses afterwards (see {@link bare}): `name` is read exactly once, so
   * even a name in memory someone else can change could not be turned into
   * `..` or `a/b` between the check and the use.
   */
  #cname(name: Uint8Array, buf: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    const n = name.length;
    if (n === 0 || n > 4096) throw new FuseError(n ? Errno.ENAMETOOLONG : Errno.EINVAL, "name");
    buf.set(name);
    return this.#checkName(buf, n);
  }

  /** {@link #cname} of node `n`'s stored name. */
  #cnameOf(n: number, buf: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    const len = this.#t.copyName(n, buf, 0);
    if (len === 0) throw new FuseError(Errno.EINVAL, "name");
    return this.#checkName(buf, len);
  }

  /** Validates the name copied into `buf[0..n)` as one component; NUL-terminates it. */
  #checkName(buf: Uint8Array<ArrayBuffer>, n: number): Uint8Array<ArrayBuffer> {
    buf[n] = 0;
    const c = buf.subarray(0, n);
    if (n <= 2 && c[0] === DOT && (n === 1 || c[1] === DOT)) {
      throw new FuseError(Errno.EINVAL, "name is . or ..");
    }
    if (c.indexOf(SLASH) >= 0 || c.indexOf(0) >= 0) {
      throw new FuseError(Errno.EINVAL, "name contains / or NUL");
    }
    return buf.subarray(0, n + 1);
  }

  /**
   * Looks `name` up in `parent` (fd-relative, no follow) and counts one lookup.
   * The statx of the result is left in the scratch buffer.
   */
  #lookupIn(parent: number, name: Uint8Array): Entry {
    this.#lookable(parent);
    return this.#lookupC(parent, this.#cname(name, this.#name1));
  }

  #lookable(parent: number): void {
    if (this.#t.type(parent) !== S.IFDIR) throw new FuseError(Errno.ENOTDIR);
    if (this.#t.has(parent, NF.FOREIGN)) throw FuseError.of(Errno.ENOENT);
  }

  /** {@link #lookupIn} of a name already validated by {@link #cname} (NUL-terminated `c`). */
  #lookupC(parent: number, c: Uint8Array<ArrayBuffer>): Entry {
    const e = this.#tryLookupC(parent, c);
    if (e instanceof FuseError) throw e;
    return e;
  }

  /**
   * {@link #lookupC} that returns rather than throws the host's answer when the name
   * does not resolve: a negative LOOKUP is a hot path (every new file's open looks
   * its name up first), and a throw costs V8 a stack walk.
   */
  #tryLookupC(parent: number, c: Uint8Array<ArrayBuffer>): Entry | FuseError {
    this.#lookable(parent);
    // One statx of a single validated component (no '/', not . or ..) with
    // AT_SYMLINK_NOFOLLOW cannot leave `parent`, and is all a lookup needs: the node
    // gets its O_PATH fd lazily (#fd: openat2 RESOLVE_BENEATH|NO_SYMLINKS from the
    // nearest open ancestor, checked against this dev:ino). Opening an fd per entry
    // cost an openat2 now and a close at LRU eviction, for nodes (READDIRPLUS of a
    // large tree) that are mostly never opened.
    const st = r(
      sys.statx(
        this.#fd(parent),
        c,
        AT.SYMLINK_NOFOLLOW,
        STATX.BASIC_STATS | STATX.MNT_ID,
        this.#stx,
      ),
    );
    if (st < 0) return FuseError.of(-st);
    return this.#adopt(parent, c, c.length - 1, -1);
  }

  /**
   * Registers the entry whose statx is in scratch as a node under `parent` named
   * `name[0..len)`, with `fd` (an O_PATH fd of it, owned from now on) or -1
   * (opened lazily by #fd).
   */
  #adopt(parent: number, name: Uint8Array, len: number, fd: number): Entry {
    const t = this.#t;
    this.#readKey();
    if (this.#hidden.size > 0 && this.#hidden.has(hiddenKey(this.#kd, this.#klo, this.#khi))) {
      if (fd >= 0) sys.close(fd);
      throw FuseError.of(Errno.ENOENT);
    }
    const type = this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT;
    let n = t.find(this.#kd, this.#klo, this.#khi);
    if (n >= 0 && t.has(n, NF.DETACHED) && (t.fd(n) < 0 || type !== t.type(n))) {
      // A node unlinked through us without a pinned fd had lost its last link, and one of
      // another type is another file: this is a new file reusing the inode number (tar
      // replaces its placeholder file by a symlink that way). The old node keeps its id
      // until the client forgets it.
      t.keyOut(n);
      n = -1;
    }
    if (
      n >= 0 && t.fd(n) < 0 && !t.has(n, NF.STALE | NF.DETACHED) &&
      !(t.parent(n) === parent && t.nameIs(n, name, len)) && !this.#stillNamed(n)
    ) {
      // Known under another name and holding no fd, so nothing pinned its inode: that
      // name no longer leads to it, so the file was removed on the host and the inode
      // number reused by this new file. The old node is stale; this is a new node.
      t.keyOut(n);
      t.set(n, NF.STALE, true);
      n = -1;
    }
    if (n >= 0) {
      if (fd < 0) {
        // keep whatever fd the node has
      } else if (t.fd(n) < 0 && !t.has(n, NF.STALE)) {
        t.setFd(n, fd);
        this.#cache(n);
      } else {
        sys.close(fd);
      }
      if (t.has(n, NF.DETACHED | NF.STALE)) {
        // Found again under a live name: re-attach.
        if (t.has(n, NF.DETACHED)) {
          t.set(n, NF.DETACHED, false);
          if (t.fd(n) >= 0) this.#cache(n);
        }
        this.#setParent(n, parent, name, len);
      }
    } else {
      const foreign = !this.#crossMounts &&
        this.#stxv.getBigUint64(STATX_OFF.mnt_id, true) !== this.#rootMnt;
      if (foreign && type !== S.IFDIR) {
        if (fd >= 0) sys.close(fd);
        throw FuseError.of(Errno.ENOENT);
      }
      try {
        n = t.nodeAlloc();
      } catch (e) {
        if (fd >= 0) sys.close(fd);
        throw e;
      }
      t.setParent(n, parent);
      t.addKids(parent, 1);
      t.setName(n, name, len);
      t.setKey(n, this.#kd, this.#klo, this.#khi);
      t.setType(n, type);
      if (foreign) t.set(n, NF.FOREIGN, true);
      t.setFd(n, fd);
      t.keyIn(n);
      if (fd >= 0) this.#cache(n);
    }
    t.setLookups(n, t.lookups(n) + 1);
    return this.#entry(n);
  }

  /**
   * Whether node `n`'s own name still leads to its inode (reopening it by
   * path, which gives it an fd again); the scratch statx of the entry being
   * adopted is kept.
   */
  #stillNamed(n: number): boolean {
    const saved = this.#stx.slice();
    try {
      this.#fd(n);
      return true;
    } catch (e) {
      // ESTALE: gone or replaced; another error says nothing against it.
      return !(e instanceof FuseError && e.errno === Errno.ESTALE);
    } finally {
      this.#stx.set(saved);
      this.#readKey();
    }
  }

  #entry(n: number): Entry {
    return {
      nodeid: this.#t.id(n),
      generation: 0,
      attr: this.#attr(),
      entryTimeout: this.#entryTimeout,
      attrTimeout: this.#attrTimeout,
    };
  }

  #getattr(n: number): Attr {
    this.#statNode(n);
    return this.#attr();
  }

  /**
   * statx of node `n` into scratch by the cheapest route: its own fd, an open handle's
   * fd, or — with neither — its name in its parent (one validated component, no
   * follow), accepted only if it is still the same file (dev:ino and type, as #fd's
   * reopen checks). Only when that fails does the node get its O_PATH fd (#fd).
   */
  #statNode(n: number): void {
    const t = this.#t;
    let fd = t.fd(n);
    if (fd < 0) fd = t.openFd(n);
    const parent = t.parent(n);
    if (fd < 0 && parent >= 0 && !t.has(n, NF.DETACHED)) {
      const c = this.#cnameOf(n, this.#name2);
      const st = r(
        sys.statx(
          this.#fd(parent),
          c,
          AT.SYMLINK_NOFOLLOW,
          STATX.BASIC_STATS | STATX.MNT_ID,
          this.#stx,
        ),
      );
      if (st >= 0 && this.#isNode(n)) return;
    }
    if (fd < 0) fd = this.#fd(n);
    const st = this.#statFd(fd);
    if (st < 0) throw FuseError.of(-st);
  }

  /** The live handle slot of `fh` (of the given kind), or EBADF. */
  #handle(fh: number, dir: boolean): number {
    const s = this.#t.hSlot(fh, dir);
    if (s < 0) throw new FuseError(Errno.EBADF, `no ${dir ? "dir" : "file"} handle ${fh}`);
    return s;
  }

  /** Before removing `name` from `dir`: the node it names, if we know it. */
  #detachChild(dir: number, cname: Uint8Array<ArrayBuffer>): number {
    const t = this.#t;
    const st = r(
      sys.statx(this.#fd(dir), cname, AT.SYMLINK_NOFOLLOW, STATX.BASIC_STATS, this.#stx),
    );
    if (st < 0) return -1;
    this.#readKey();
    const n = t.find(this.#kd, this.#klo, this.#khi);
    if (n < 0 || t.parent(n) !== dir) return -1;
    if (!t.nameIs(n, cname, cname.length - 1)) return -1;
    return n;
  }

  #pin(n: number): void {
    const t = this.#t;
    const ofd = t.fd(n) < 0 ? t.openFd(n) : -1;
    if (ofd >= 0) {
      // An open handle names exactly this inode: its O_PATH twin needs no path walk.
      const fd = r(sys.openat(AT.FDCWD, procFd(ofd), O.PATH | O.CLOEXEC, 0));
      if (fd >= 0) t.setFd(n, fd);
    }
    try {
      this.#fd(n);
    } catch {
      return;
    }
    t.set(n, NF.DETACHED, true);
    t.lruOut(n);
  }

  /** Opens a regular-file node for I/O through its O_PATH fd. */
  #reopen(n: number, flags: number): number {
    const type = this.#t.type(n);
    if (type === S.IFDIR) throw new FuseError(Errno.EISDIR);
    if (type !== S.IFREG) throw new FuseError(Errno.EACCES, "not a regular file");
    const fd = r(sys.openat(AT.FDCWD, procFd(this.#fd(n)), (flags & OPEN_PASS) | O.CLOEXEC, 0));
    if (fd < 0) throw FuseError.of(-fd);
    return fd;
  }

  /** Closes (now or after the last data call on it) handle slot `s`. */
  #release(s: number): void {
    const t = this.#t;
    const n = t.hNode(s);
    const fd = t.hRelease(s);
    if (fd >= 0) sys.close(fd);
    // The node's last open file is gone (the client released it before sending RELEASE):
    // the backing file is no longer in use.
    if (n >= 0 && t.openFd(n) < 0) this.#dropBacking(n);
  }

  /** Drops node `n`'s backing id, if it has one. */
  #dropBacking(n: number): void {
    const id = this.#t.backing(n);
    if (id <= 0) return;
    this.#t.setBacking(n, 0);
    this.#backing?.close(id);
  }

  /**
   * The backing id for a new open of regular-file node `n` (handle fd `hfd`, open
   * flags `flags`), or 0 to serve it the ordinary way. `hadOpen`: the node had open
   * files before this one; `mode`: the file's mode, or -1 if not known yet.
   *
   * The client keeps one backing file per inode for all its opens and refuses an
   * open that does not use it while it is set, or one that does while the inode is
   * open the ordinary way (fs/fuse/iomode.c: EINVAL, EBUSY, ETXTBSY). So every open
   * file of a node shares one id, made by the first open while none is open, and a
   * node whose open files are served the ordinary way stays so until they are
   * closed. The backing file is opened read-write (on a read-only share: read-only)
   * whatever the first open asked for, so it serves any later open; the client
   * checks each open's own access mode and keeps its O_APPEND per file. Files with
   * an execute bit get none: a file open for writing cannot be executed (ETXTBSY),
   * and a reader here must not stop the host from running a program.
   */
  #backingFor(n: number, hfd: number, flags: number, hadOpen: boolean, mode: number): number {
    const b = this.#backing;
    if (b === null) return 0;
    const t = this.#t;
    const have = t.backing(n);
    if (have > 0) return have;
    if (hadOpen) return 0;
    if (mode < 0) {
      if (this.#statFd(hfd) < 0) return 0;
      mode = this.#stxv.getUint16(STATX_OFF.mode, true);
    }
    if (mode & 0o111) return 0;
    const acc = this.#ro ? O.RDONLY : O.RDWR;
    // The backing file takes the fd's flags: only a plain fd of the right mode will do.
    const plain = (flags & (3 | O.APPEND | BACKING_UNFIT)) === acc;
    // O_NONBLOCK: a host process's read lease on the file fails the open (EWOULDBLOCK)
    // instead of holding this thread for the lease-break time. Regular-file I/O ignores
    // the flag, and the client's reads and writes carry the client file's own flags.
    const bfd = plain ? hfd : r(sys.openat(AT.FDCWD, procFd(hfd), acc | O.NONBLOCK | O.CLOEXEC, 0));
    if (bfd < 0) return 0; // e.g. a swap file in use (ETXTBSY): the ordinary way
    const id = b.open(bfd);
    if (bfd !== hfd) sys.close(bfd);
    if (id <= 0) return 0; // e.g. a host directory on overlayfs (stack depth)
    t.setBacking(n, id);
    return id;
  }

  /** {@link Opened} of a new file handle `fh` of regular-file node `n`. */
  #opened(
    n: number,
    fh: number,
    fd: number,
    flags: number,
    hadOpen: boolean,
    mode = -1,
  ): Opened {
    const id = this.#backingFor(n, fd, flags, hadOpen, mode);
    const base = this.#ro ? RO_FILE_OPEN_FLAGS : FILE_OPEN_FLAGS;
    return id > 0
      ? { fh, openFlags: (base & ~FOPEN.KEEP_CACHE) | FOPEN.PASSTHROUGH, backingId: id }
      : { fh, openFlags: base };
  }

  /**
   * Runs `fn` with handle `fh`'s fd outside the table lock (a data call that may
   * take long must not hold up other readers); a concurrent RELEASE defers its
   * close until `fn` is done.
   */
  #withFile<T>(fh: number, fn: (fd: number) => T): T {
    const t = this.#t;
    const s = t.hRef(fh, false);
    if (s < 0) throw new FuseError(Errno.EBADF, `no file handle ${fh}`);
    try {
      return fn(t.hFd(s));
    } finally {
      const fd = t.hUnref(s);
      if (fd >= 0) sys.close(fd);
    }
  }

  // ---- FileSystem ------------------------------------------------------------

  override init(_ctx: Context): void {
    this.#enterCreds();
  }

  override useBacking(backing: BackingFiles | null): void {
    this.#backing = backing;
  }

  override destroy(): void {
    this.#locked(() => this.#destroy());
  }

  #destroy(): void {
    const t = this.#t;
    for (const s of t.liveHandles()) {
      const fd = t.hFd(s);
      if (fd >= 0) sys.close(fd);
    }
    for (const n of t.liveNodes()) {
      const fd = t.fd(n);
      if (n !== ROOT && fd >= 0) sys.close(fd);
    }
    t.clear(ROOT);
    t.keyIn(ROOT);
    this.#dirCache.clear();
  }

  /**
   * Closes every fd, including the root's (by the instance that created the
   * state; an attached one only drops its own buffers). Unusable afterwards.
   */
  close(): void {
    this.#dirCache.clear();
    if (!this.#primary) return;
    this.destroy();
    sys.close(this.#rootFd);
  }

  override lookup(_ctx: Context, parent: number, name: Uint8Array): Entry | FuseError {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      const dir = this.#dir(parent);
      this.#lookable(dir);
      return this.#tryLookupC(dir, this.#cname(name, this.#name1));
    } finally {
      t.unlock();
    }
  }

  override forget(nodeid: number, nlookup: number): void {
    const t = this.#t;
    t.lock();
    try {
      const n = t.slotOf(nodeid);
      if (n < 0 || n === ROOT) return;
      t.setLookups(n, t.lookups(n) - Math.min(nlookup, 0x7fffffff));
      this.#maybeDrop(n);
    } finally {
      t.unlock();
    }
  }

  override getattr(_ctx: Context, nodeid: number, _fh: number | null): AttrReply {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      return { attr: this.#getattr(this.#node(nodeid)), timeout: this.#attrTimeout };
    } finally {
      t.unlock();
    }
  }

  override setattr(_ctx: Context, nodeid: number, s: SetattrIn): AttrReply {
    this.#enterCreds();
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const t = this.#t;
    t.lock();
    try {
      const n = this.#node(nodeid);
      if (t.has(n, NF.FOREIGN)) throw new FuseError(Errno.EACCES);
      const type = t.type(n);
      const hfd = s.valid & FATTR.FH ? t.hFd(this.#handle(s.fh, false)) : -1;
      // Any real fd of the node (the client's handle, or another open handle) serves the
      // fd forms (fchmod, ftruncate, *at with AT_EMPTY_PATH) without a /proc walk or an
      // O_PATH open; the node's own fd is the fallback.
      const ofd = hfd >= 0 ? hfd : t.openFd(n);
      if (s.valid & FATTR.MODE) {
        if (type === S.IFLNK) throw new FuseError(Errno.ENOTSUP);
        const mode = s.mode & 0o7777;
        const rc = ofd >= 0
          ? sys.fchmod(ofd, mode)
          : sys.fchmodat(AT.FDCWD, procFd(this.#fd(n)), mode, 0);
        if (rc < 0) throw new FuseError(-r(rc));
      }
      if (s.valid & (FATTR.UID | FATTR.GID)) {
        const uid = s.valid & FATTR.UID ? s.uid : 0xffffffff;
        const gid = s.valid & FATTR.GID ? s.gid : 0xffffffff;
        const fd = ofd >= 0 ? ofd : this.#fd(n);
        const rc = r(sys.fchownat(fd, EMPTY, uid, gid, AT.EMPTY_PATH | AT.SYMLINK_NOFOLLOW));
        if (rc < 0) throw FuseError.of(-rc);
      }
      if (s.valid & FATTR.SIZE) {
        if (type === S.IFDIR) throw new FuseError(Errno.EISDIR);
        if (type !== S.IFREG) throw new FuseError(Errno.EINVAL);
        // A handle opened for writing already carries the right to truncate.
        const wfd = hfd >= 0 ? hfd : t.writableFd(n);
        const rc = r(
          wfd >= 0
            ? sys.ftruncate(wfd, BigInt(s.size))
            : sys.truncate(procFd(this.#fd(n)), BigInt(s.size)),
        );
        if (rc < 0) throw FuseError.of(-rc);
      }
      if (s.valid & (FATTR.ATIME | FATTR.MTIME)) {
        const ts = this.#times;
        ts[0] = ts[2] = 0n;
        ts[1] = BigInt(UTIME_OMIT);
        ts[3] = BigInt(UTIME_OMIT);
        if (s.valid & FATTR.ATIME) {
          if (s.valid & FATTR.ATIME_NOW) ts[1] = BigInt(UTIME_NOW);
          else [ts[0], ts[1]] = [BigInt.asIntN(64, s.atime), BigInt(s.atimensec)];
        }
        if (s.valid & FATTR.MTIME) {
          if (s.valid & FATTR.MTIME_NOW) ts[3] = BigInt(UTIME_NOW);
          else [ts[2], ts[3]] = [BigInt.asIntN(64, s.mtime), BigInt(s.mtimensec)];
        }
        const b = new Uint8Array(ts.buffer);
        const fd = ofd >= 0 ? ofd : this.#fd(n);
        const rc = r(sys.utimensat(fd, EMPTY, b, AT.EMPTY_PATH | AT.SYMLINK_NOFOLLOW));
        if (rc < 0) throw FuseError.of(-rc);
      }
      return { attr: this.#getattr(n), timeout: this.#attrTimeout };
    } finally {
      t.unlock();
    }
  }

  override readlink(_ctx: Context, nodeid: number): Uint8Array {
    this.#enterCreds();
    return this.#locked(() => {
      const n = this.#node(nodeid);
      if (this.#t.type(n) !== S.IFLNK) throw new FuseError(Errno.EINVAL);
      const buf = this.#xbuf;
      const got = r(sys.readlinkat(this.#fd(n), EMPTY, buf, BigInt(4096)));
      if (got < 0) throw FuseError.of(-got);
      return buf.slice(0, got);
    });
  }

  override symlink(ctx: Context, parent: number, name: Uint8Array, target: Uint8Array): Entry {
    this.#enterCreds();
    return this.#locked(() => {
      const dir = this.#mutableDir(parent);
      const c = this.#cname(name, this.#name1);
      if (target.length === 0 || target.length > 4095) {
        throw new FuseError(Errno.EINVAL, "target");
      }
      const tgt = cpath(target);
      const rc = this.#asCaller(ctx, () => r(sys.symlinkat(tgt, this.#fd(dir), c)));
      if (rc < 0) throw FuseError.of(-rc);
      return this.#lookupC(dir, c);
    });
  }

  override mknod(
    ctx: Context,
    parent: number,
    name: Uint8Array,
    mode: number,
    rdev: number,
    _umask: number,
  ): Entry {
    this.#enterCreds();
    return this.#locked(() => {
      const dir = this.#mutableDir(parent);
      const type = mode & S.IFMT;
      if (type === S.IFCHR || type === S.IFBLK) {
        if (!this.#allowDevices) throw new FuseError(Errno.EPERM, "device nodes are not allowed");
      } else if (type !== S.IFREG && type !== S.IFIFO && type !== S.IFSOCK && type !== 0) {
        throw new FuseError(Errno.EINVAL, `mknod type 0o${type.toString(8)}`);
      }
      const c = this.#cname(name, this.#name1);
      // new_decode_dev
      const major = (rdev & 0xfff00) >>> 8;
      const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
      const dev = (BigInt(major & 0xfff) << 8n) | BigInt(minor & 0xff) |
        (BigInt(minor >>> 8) << 20n) |
        (BigInt(major >>> 12) << 32n);
      const rc = this.#asCaller(ctx, () => r(sys.mknodat(this.#fd(dir), c, mode, dev)));
      if (rc < 0) throw FuseError.of(-rc);
      return this.#lookupC(dir, c);
    });
  }

  override mkdir(ctx: Context, parent: number, name: Uint8Array, mode: number, _u: number): Entry {
    this.#enterCreds();
    return this.#locked(() => {
      const dir = this.#mutableDir(parent);
      const c = this.#cname(name, this.#name1);
      const rc = this.#asCaller(ctx, () => r(sys.mkdirat(this.#fd(dir), c, mode & 0o7777)));
      if (rc < 0) throw FuseError.of(-rc);
      return this.#lookupC(dir, c);
    });
  }

  #remove(parent: number, name: Uint8Array, flags: number): void {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      const dir = this.#mutableDir(parent);
      const c = this.#cname(name, this.#name1);
      this.#refuseHidden(dir, c, Errno.ENOENT);
      const victim = this.#detachChild(dir, c);
      if (victim >= 0) {
        // A regular file with one link and no open handle is gone once unlinked:
        // nothing can reach it again, so it needs no pinned fd (which would cost an
        // O_PATH open by path and a statx when it has none). It is still marked
        // detached: a stray request for it is ESTALE, and a lookup that finds its
        // inode number reused makes a new node (#adopt).
        const nlink = this.#stxv.getUint32(STATX_OFF.nlink, true);
        if (
          t.fd(victim) >= 0 || t.type(victim) !== S.IFREG || nlink > 1 ||
          t.openFd(victim) >= 0
        ) {
          this.#pin(victim);
        } else {
          t.set(victim, NF.DETACHED, true);
          t.lruOut(victim);
        }
      }
      const rc = r(sys.unlinkat(this.#fd(dir), c, flags));
      if (rc < 0) {
        if (victim >= 0) this.#unpin(victim);
        throw FuseError.of(-rc);
      }
    } finally {
      t.unlock();
    }
  }

  #unpin(n: number): void {
    const t = this.#t;
    if (!t.has(n, NF.DETACHED)) return;
    t.set(n, NF.DETACHED, false);
    if (t.fd(n) >= 0) this.#cache(n);
  }

  override unlink(_ctx: Context, parent: number, name: Uint8Array): void {
    this.#remove(parent, name, 0);
  }

  override rmdir(_ctx: Context, parent: number, name: Uint8Array): void {
    this.#remove(parent, name, AT.REMOVEDIR);
  }

  override rename(
    _ctx: Context,
    olddir: number,
    oldname: Uint8Array,
    newdir: number,
    newname: Uint8Array,
    flags: number,
  ): void {
    this.#enterCreds();
    if (flags & ~3) throw new FuseError(Errno.EINVAL, `rename flags ${flags}`);
    this.#locked(() => {
      const from = this.#mutableDir(olddir);
      const to = this.#mutableDir(newdir);
      const c1 = this.#cname(oldname, this.#name1);
      const c2 = this.#cname(newname, this.#name2);
      // A hidden entry can neither be moved out nor replaced (nor exchanged) by another.
      this.#refuseHidden(from, c1, Errno.ENOENT);
      this.#refuseHidden(to, c2, Errno.EACCES);
      const moving = this.#detachChild(from, c1);
      const replaced = this.#detachChild(to, c2);
      const exchange = (flags & 2) !== 0;
      if (replaced >= 0 && !exchange) this.#pin(replaced);
      const rc = r(sys.renameat2(this.#fd(from), c1, this.#fd(to), c2, flags));
      if (rc < 0) {
        if (replaced >= 0 && !exchange) this.#unpin(replaced);
        throw FuseError.of(-rc);
      }
      if (moving >= 0) this.#setParent(moving, to, c2, c2.length - 1);
      if (replaced >= 0 && exchange) this.#setParent(replaced, from, c1, c1.length - 1);
    });
  }

  override link(_ctx: Context, nodeid: number, newparent: number, newname: Uint8Array): Entry {
    this.#enterCreds();
    return this.#locked(() => {
      const t = this.#t;
      const dir = this.#mutableDir(newparent);
      const n = this.#node(nodeid);
      const type = t.type(n);
      if (type === S.IFDIR) throw new FuseError(Errno.EPERM, "hard link to a directory");
      if (t.has(n, NF.FOREIGN)) throw new FuseError(Errno.EXDEV);
      const c = this.#cname(newname, this.#name1);
      const fd = this.#fd(n);
      const dfd = this.#fd(dir);
      let rc = r(sys.linkat(fd, EMPTY, dfd, c, AT.EMPTY_PATH));
      if (rc === -Errno.ENOENT && type !== S.IFLNK) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd/N names the same inode.
        rc = r(sys.linkat(AT.FDCWD, procFd(fd), dfd, c, AT.SYMLINK_FOLLOW));
      }
      if (rc < 0) throw FuseError.of(-rc);
      return this.#lookupC(dir, c);
    });
  }

  override open(_ctx: Context, nodeid: number, flags: number): Opened {
    this.#enterCreds();
    if (this.#ro && ((flags & 3) !== 0 || (flags & O.TRUNC))) throw new FuseError(Errno.EROFS);
    return this.#locked(() => {
      const n = this.#node(nodeid);
      const fd = this.#reopen(n, flags);
      const hadOpen = this.#t.openFd(n) >= 0;
      return this.#opened(n, this.#t.hAlloc(false, fd, n, flags), fd, flags, hadOpen);
    });
  }

  override read(_ctx: Context, _nodeid: number, fh: number, offset: bigint, dst: Uint8Array[]) {
    return this.#withFile(fh, (fd) => {
      if (dst.length === 1) {
        const buf = dst[0];
        let done = 0;
        while (done < buf.length) {
          const n = r(
            sys.pread(
              fd,
              done ? buf.subarray(done) as Uint8Array<ArrayBuffer> : buf as Uint8Array<ArrayBuffer>,
              BigInt(buf.length - done),
              done ? offset + BigInt(done) : offset,
            ),
          );
          if (n < 0) throw FuseError.of(-n);
          if (n === 0) break;
          done += n;
        }
        return done;
      }
      if (this.#iov.length < dst.length * 2) this.#iov = new BigUint64Array(dst.length * 2);
      const iov = this.#iov;
      let total = 0;
      for (let i = 0; i < dst.length; i++) {
        iov[2 * i] = BigInt(
          Deno.UnsafePointer.value(Deno.UnsafePointer.of(dst[i] as Uint8Array<ArrayBuffer>)),
        );
        iov[2 * i + 1] = BigInt(dst[i].length);
        total += dst[i].length;
      }
      const n = r(
        sys.preadv(fd, new Uint8Array(iov.buffer, 0, dst.length * 16), dst.length, offset),
      );
      if (n < 0) throw FuseError.of(-n);
      return Math.min(n, total);
    });
  }

  override withReadFd(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    use: (fd: number) => number,
  ): number {
    return this.#withFile(fh, use);
  }

  override write(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    data: Uint8Array,
    _flags: number,
  ): number {
    if (this.#ro) throw new FuseError(Errno.EROFS);
    return this.#withFile(fh, (fd) => {
      let done = 0;
      while (done < data.length) {
        const n = r(
          sys.pwrite(
            fd,
            data.subarray(done) as Uint8Array<ArrayBuffer>,
            BigInt(data.length - done),
            offset + BigInt(done),
          ),
        );
        if (n < 0) {
          if (done > 0) break;
          throw FuseError.of(-n);
        }
        if (n === 0) break;
        done += n;
      }
      return done;
    });
  }

  override statfs(_ctx: Context, nodeid: number): StatFs {
    this.#enterCreds();
    const b = new Uint8Array(STATFS_OFF.size_of);
    this.#locked(() => {
      const rc = r(sys.fstatfs(this.#fd(this.#node(nodeid)), b));
      if (rc < 0) throw FuseError.of(-rc);
    });
    const v = new DataView(b.buffer);
    return {
      blocks: v.getBigUint64(STATFS_OFF.blocks, true),
      bfree: v.getBigUint64(STATFS_OFF.bfree, true),
      bavail: v.getBigUint64(STATFS_OFF.bavail, true),
      files: v.getBigUint64(STATFS_OFF.files, true),
      ffree: v.getBigUint64(STATFS_OFF.ffree, true),
      bsize: Number(v.getBigUint64(STATFS_OFF.bsize, true)),
      namelen: Number(v.getBigUint64(STATFS_OFF.namelen, true)),
      frsize: Number(v.getBigUint64(STATFS_OFF.frsize, true)),
    };
  }

  override release(_ctx: Context, _nodeid: number, fh: number): void {
    const t = this.#t;
    t.lock();
    try {
      this.#release(this.#handle(fh, false));
    } finally {
      t.unlock();
    }
  }

  override fsync(_ctx: Context, _nodeid: number, fh: number, datasync: boolean): void {
    this.#withFile(fh, (fd) => {
      const rc = r(datasync ? sys.fdatasync(fd) : sys.fsync(fd));
      if (rc < 0) throw FuseError.of(-rc);
    });
  }

  /**
   * A NUL-terminated copy of an xattr name (the copy is what is checked and used), in
   * a buffer of this instance: valid until the next call.
   */
  #xname(name: Uint8Array): Uint8Array<ArrayBuffer> {
    const len = name.length;
    if (len === 0 || len > 255) throw new FuseError(Errno.ERANGE, "xattr name");
    const n = this.#xname1;
    n.set(name);
    n[len] = 0;
    if (n.indexOf(0) !== len) throw new FuseError(Errno.EINVAL, "xattr name with NUL");
    return n.subarray(0, len + 1);
  }

  /**
   * {@link #xname}, refusing the names a guest must not change: `trusted.*`
   * and `security.capability` (host file capabilities). Checked on the copy.
   */
  #changeableXname(name: Uint8Array, verb: string): Uint8Array<ArrayBuffer> {
    const n = this.#xname(name);
    const s = new TextDecoder().decode(bare(n));
    if (s.startsWith("trusted.") || s === "security.capability") {
      throw new FuseError(Errno.EPERM, `${verb} ${s} is not allowed`);
    }
    return n;
  }

  override setxattr(
    _ctx: Context,
    nodeid: number,
    name: Uint8Array,
    value: Uint8Array,
    flags: number,
  ): void {
    this.#enterCreds();
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const n = this.#changeableXname(name, "setting");
    const v = value.slice();
    this.#locked(() => {
      const node = this.#node(nodeid);
      if (this.#t.type(node) === S.IFLNK) throw new FuseError(Errno.EPERM);
      const ofd = this.#t.openFd(node);
      const rc = r(
        ofd >= 0
          ? sys.fsetxattr(ofd, n, v, BigInt(v.length), flags & 3)
          : sys.setxattr(procFd(this.#fd(node)), n, v, BigInt(v.length), flags & 3),
      );
      if (rc < 0) throw FuseError.of(-rc);
    });
  }

  /**
   * Xattr reads go through an open handle's fd when the node has one (fgetxattr: no
   * `/proc/self/fd` walk — the kernel asks for `security.capability` before the first
   * write to every file) and ask the host for at most `size` bytes: the kernel
   * allocates a buffer of the size passed, so the 64 KiB maximum cost more than the
   * call itself. Size 0 asks only for the length.
   */
  override getxattr(
    _ctx: Context,
    nodeid: number,
    name: Uint8Array,
    size = XATTR_MAX,
  ): Uint8Array | number | FuseError {
    this.#enterCreds();
    const n = this.#xname(name);
    const t = this.#t;
    t.lock();
    try {
      const node = this.#node(nodeid);
      if (t.type(node) === S.IFLNK) return FuseError.of(Errno.ENODATA);
      const want = Math.min(size, XATTR_MAX);
      const buf = want > 0 ? this.#xbuf.subarray(0, want) : null;
      const ofd = t.openFd(node);
      const got = r(
        ofd >= 0
          ? sys.fgetxattr(ofd, n, buf, BigInt(want))
          : sys.getxattr(procFd(this.#fd(node)), n, buf, BigInt(want)),
      );
      // Returned, not thrown: ENODATA is the usual answer (see FileSystem.getxattr).
      if (got < 0) return FuseError.of(-got);
      return want > 0 ? this.#xbuf.subarray(0, got) : got;
    } finally {
      t.unlock();
    }
  }

  /** As {@link getxattr}: through an open handle when there is one, at most `size` bytes. */
  override listxattr(
    _ctx: Context,
    nodeid: number,
    size = XATTR_MAX,
  ): Uint8Array | number | FuseError {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      const node = this.#node(nodeid);
      if (t.type(node) === S.IFLNK) return new Uint8Array(0);
      const want = Math.min(size, XATTR_MAX);
      const buf = want > 0 ? this.#xbuf.subarray(0, want) : null;
      const ofd = t.openFd(node);
      const got = r(
        ofd >= 0
          ? sys.flistxattr(ofd, buf, BigInt(want))
          : sys.listxattr(procFd(this.#fd(node)), buf, BigInt(want)),
      );
      if (got < 0) return FuseError.of(-got);
      return want > 0 ? this.#xbuf.subarray(0, got) : got;
    } finally {
      t.unlock();
    }
  }

  override removexattr(_ctx: Context, nodeid: number, name: Uint8Array): void {
    this.#enterCreds();
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const n = this.#changeableXname(name, "removing");
    this.#locked(() => {
      const node = this.#node(nodeid);
      if (this.#t.type(node) === S.IFLNK) throw new FuseError(Errno.ENODATA);
      const ofd = this.#t.openFd(node);
      const rc = r(
        ofd >= 0 ? sys.fremovexattr(ofd, n) : sys.removexattr(procFd(this.#fd(node)), n),
      );
      if (rc < 0) throw FuseError.of(-rc);
    });
  }

  override flush(_ctx: Context, _nodeid: number, fh: number): void {
    this.#locked(() => this.#handle(fh, false));
  }

  override opendir(_ctx: Context, nodeid: number, _flags: number): Opened {
    this.#enterCreds();
    return this.#locked(() => {
      const n = this.#dir(nodeid);
      let fd = -1;
      if (!this.#t.has(n, NF.FOREIGN)) {
        fd = r(sys.openat(this.#fd(n), DOT_PATH, O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0));
        if (fd < 0) throw FuseError.of(-fd);
      }
      return { fh: this.#t.hAlloc(true, fd, n, 0), openFlags: 0 };
    });
  }

  /**
   * This thread's getdents buffer for directory handle slot `s`, valid when this
   * thread was the last to move the handle's fd and the client continues where it
   * left off; else a fresh one with the fd moved to `offset`.
   */
  #dirBuf(s: number, fd: number, offset: bigint): DirBuf {
    const t = this.#t;
    const fh = t.fh(s);
    const [owner, seq] = t.hPos(s);
    let b = this.#dirCache.get(s);
    const off = t.hOff(s);
    if (b && b.fh === fh && owner === t.token && seq === b.seq && offset === off) return b;
    // A fresh handle's fd is at 0 already; anything else is moved where the client asks.
    if (!(owner === -1 && offset === 0n && off === 0n)) {
      const rc = r(sys.lseek(fd, offset, 0));
      if (rc < 0) throw FuseError.of(-rc);
    }
    if (!b || b.fh !== fh) {
      if (b) this.#dirCache.delete(s);
      if (this.#dirCache.size >= DIR_BUFS_KEPT) {
        for (const old of this.#dirCache.values()) this.#dirBufs.push(old.buf);
        this.#dirCache.clear();
      }
      // Reuse getdents buffers: a tree walk opens one directory after another, and a
      // fresh 32 KiB buffer per OPENDIR showed in the profile.
      const buf = this.#dirBufs.pop() ?? new Uint8Array(32768);
      b = { fh, seq: 0, buf, dv: new DataView(buf.buffer), len: 0, pos: 0, off: 0n };
      this.#dirCache.set(s, b);
    }
    b.len = b.pos = 0;
    b.off = offset;
    return b;
  }

  override readdir(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    sink: DirSink,
  ): void {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      const s = this.#handle(fh, true);
      const fd = t.hFd(s);
      if (fd < 0) {
        // A directory on another mount (crossMounts: false) reads as empty but for . and ..
        const names = [new Uint8Array([DOT]), new Uint8Array([DOT, DOT])];
        for (let i = Number(offset); i < 2; i++) {
          if (!sink.fits(names[i].length)) break;
          sink.add(names[i], 0n, 4, BigInt(i + 1), null);
        }
        return;
      }
      const h = this.#dirBuf(s, fd, offset);
      const dir = t.hNode(s);
      if (dir < 0) throw new FuseError(Errno.ESTALE, "directory forgotten while open");
      try {
        this.#fill(dir, fd, h, sink);
      } finally {
        // This thread moved the fd last: remember it, so a READDIR that continues
        // here keeps the buffer; another thread's next READDIR seeks instead.
        t.hSetOff(s, h.off);
        h.seq = t.hPos(s)[1] + 1;
        t.hSetPos(s, t.token, h.seq);
      }
    } finally {
      t.unlock();
    }
  }

  #fill(dir: number, fd: number, h: DirBuf, sink: DirSink): void {
    for (;;) {
      if (h.pos >= h.len) {
        const n = r(sys.getdents64(fd, h.buf, BigInt(h.buf.length)));
        if (n < 0) throw FuseError.of(-n);
        if (n === 0) return;
        h.len = n;
        h.pos = 0;
      }
      const p = h.pos;
      const v = h.dv;
      const ino = v.getBigUint64(p, true);
      const off = v.getBigInt64(p + 8, true);
      const reclen = v.getUint16(p + 16, true);
      const type = h.buf[p + 18];
      let end = h.buf.indexOf(0, p + 19);
      if (end < 0 || end > p + reclen) end = p + reclen;
      const name = h.buf.subarray(p + 19, end);
      const dots = name.length <= 2 && name[0] === DOT && (name.length === 1 || name[1] === DOT);
      if (!dots && this.#hiddenIno.has(ino) && this.#isHiddenName(dir, name)) {
        h.pos += reclen;
        h.off = off;
        continue;
      }
      if (!sink.fits(name.length)) return;
      let entry: Entry | null = null;
      if (sink.plus && !dots) {
        try {
          entry = this.#knownEntry(dir, ino) ?? this.#lookupIn(dir, name);
        } catch {
          // Vanished, hidden or on another mount: leave it out.
          h.pos += reclen;
          h.off = off;
          continue;
        }
      }
      sink.add(name, entry ? entry.attr.ino : ino, type, BigInt.asUintN(64, off), entry);
      h.pos += reclen;
      h.off = off;
    }
  }

  /**
   * READDIRPLUS fast path: an entry whose (dev of `dir`, d_ino) is a node with an
   * open fd needs one statx of that fd instead of a walk. Null when unknown.
   */
  #knownEntry(dir: number, ino: bigint): Entry | null {
    const t = this.#t;
    const n = t.find(t.devOf(dir), Number(ino & 0xffffffffn), Number(ino >> 32n));
    if (n < 0 || t.fd(n) < 0 || t.has(n, NF.STALE | NF.DETACHED)) return null;
    if (this.#statFd(t.fd(n)) < 0 || !this.#isNode(n)) return null;
    t.lruTouch(n);
    t.setLookups(n, t.lookups(n) + 1);
    return this.#entry(n);
  }

  /**
   * Throws `errno` when `c` (a name validated by {@link #cname}) in `dir` is a
   * hidden path: it does not exist for the client, so it must not be removed
   * or renamed over either.
   */
  #refuseHidden(dir: number, c: Uint8Array<ArrayBuffer>, errno: number): void {
    if (this.#hidden.size > 0 && this.#isHiddenC(dir, c)) {
      throw new FuseError(errno, "hidden path");
    }
  }

  /** Whether directory entry `name` of `dir` is hidden. Uses the `#name2` buffer. */
  #isHiddenName(dir: number, name: Uint8Array): boolean {
    return this.#isHiddenC(dir, this.#cname(name, this.#name2));
  }

  #isHiddenC(dir: number, c: Uint8Array<ArrayBuffer>): boolean {
    const st = r(sys.statx(this.#fd(dir), c, AT.SYMLINK_NOFOLLOW, STATX.BASIC_STATS, this.#stx));
    if (st < 0) return false;
    this.#readKey();
    return this.#hidden.has(hiddenKey(this.#kd, this.#klo, this.#khi));
  }

  override releasedir(_ctx: Context, _nodeid: number, fh: number): void {
    const t = this.#t;
    t.lock();
    try {
      const s = this.#handle(fh, true);
      const b = this.#dirCache.get(s);
      if (b) {
        this.#dirCache.delete(s);
        if (this.#dirBufs.length < 16) this.#dirBufs.push(b.buf);
      }
      this.#release(s);
    } finally {
      t.unlock();
    }
  }

  override fsyncdir(_ctx: Context, _nodeid: number, fh: number, datasync: boolean): void {
    this.#locked(() => {
      const fd = this.#t.hFd(this.#handle(fh, true));
      if (fd < 0) return;
      const rc = r(datasync ? sys.fdatasync(fd) : sys.fsync(fd));
      if (rc < 0) throw FuseError.of(-rc);
    });
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    this.#enterCreds();
    const a = this.#locked(() => this.#getattr(this.#node(nodeid)));
    if (mask === 0) return;
    if ((mask & 2) && this.#ro) throw new FuseError(Errno.EROFS);
    const uid = this.#creds?.uid ?? ctx.uid;
    const gid = this.#creds?.gid ?? ctx.gid;
    let bits: number;
    if (uid === 0) {
      // Root may read and write anything; execute needs some x bit unless a directory.
      bits = 6 | ((a.mode & S.IFMT) === S.IFDIR || (a.mode & 0o111) ? 1 : 0);
    } else if (a.uid === uid) bits = (a.mode >> 6) & 7;
    else if (a.gid === gid) bits = (a.mode >> 3) & 7;
    else bits = a.mode & 7;
    if ((mask & 7 & ~bits) !== 0) throw new FuseError(Errno.EACCES);
  }

  override create(
    ctx: Context,
    parent: number,
    name: Uint8Array,
    mode: number,
    flags: number,
    _umask: number,
  ): Created {
    this.#enterCreds();
    const t = this.#t;
    t.lock();
    try {
      const dir = this.#mutableDir(parent);
      const c = this.#cname(name, this.#name1);
      const pass = flags & OPEN_PASS;
      // With passthrough a new file (without execute bits, see #backingFor) is opened
      // read-write whatever the client asked for (a file created is open to its creator
      // in any mode): one fd is the handle's and the backing file's. The client enforces
      // the mode it opened with.
      const mine = this.#backing && !(mode & 0o111) ? (pass & ~3) | O.RDWR : pass;
      const fd = this.#asCaller(ctx, () =>
        openat2(
          this.#fd(dir),
          c,
          mine | O.CREAT | O.EXCL | O.NOFOLLOW | O.CLOEXEC,
          mode & 0o7777,
          RESOLVE_SAFE,
        ));
      if (fd === -Errno.EEXIST && !(flags & O.EXCL)) {
        // Lost a race with another creator: open what is there, if it is a regular file.
        const entry = this.#lookupC(dir, c);
        const n = t.slotOf(entry.nodeid);
        try {
          const ofd = this.#reopen(n, pass);
          const hadOpen = t.openFd(n) >= 0;
          return { entry, ...this.#opened(n, t.hAlloc(false, ofd, n, flags), ofd, pass, hadOpen) };
        } catch (e) {
          this.forget(entry.nodeid, 1);
          throw e;
        }
      }
      if (fd < 0) throw FuseError.of(-fd);
      // The entry is the opened file itself (statx of its fd: no second path walk that
      // could race). The node gets its O_PATH fd only if ever needed (#fd, which checks
      // dev:ino and type); until then its open handle's fd serves stat, xattr and
      // setattr calls.
      let entry: Entry;
      let fh: number;
      let n: number;
      let hadOpen: boolean;
      try {
        if (this.#statFd(fd) < 0) throw new FuseError(Errno.EIO, "cannot stat the created file");
        entry = this.#adopt(dir, c, c.length - 1, -1);
        n = t.slotOf(entry.nodeid);
        hadOpen = t.openFd(n) >= 0;
        fh = t.hAlloc(false, fd, n, flags);
      } catch (e) {
        sys.close(fd);
        throw e;
      }
      return { entry, ...this.#opened(n, fh, fd, mine, hadOpen, entry.attr.mode) };
    } finally {
      t.unlock();
    }
  }

  override fallocate(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    length: bigint,
    mode: number,
  ): void {
    if (this.#ro) throw new FuseError(Errno.EROFS);
    this.#withFile(fh, (fd) => {
      const rc = r(sys.fallocate(fd, mode, offset, length));
      if (rc < 0) throw FuseError.of(-rc);
    });
  }

  override lseek(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    whence: number,
  ): bigint {
    return this.#withFile(fh, (fd) => {
      if (whence > 4) throw new FuseError(Errno.EINVAL, `whence ${whence}`);
      const rc = sys.lseek(fd, BigInt.asIntN(64, offset), whence);
      if (rc < 0n) throw new FuseError(-r(rc));
      return BigInt(rc);
    });
  }

  override copyFileRange(
    _ctx: Context,
    _nodeIn: number,
    fhIn: number,
    offIn: bigint,
    _nodeOut: number,
    fhOut: number,
    offOut: bigint,
    len: bigint,
    flags: number,
  ): number {
    if (this.#ro) throw new FuseError(Errno.EROFS);
    return this.#withFile(fhIn, (a) =>
      this.#withFile(fhOut, (b) => {
        const oi = new BigInt64Array([BigInt.asIntN(64, offIn)]);
        const oo = new BigInt64Array([BigInt.asIntN(64, offOut)]);
        const max = 1n << 30n;
        const n = r(
          sys.copy_file_range(
            a,
            new Uint8Array(oi.buffer),
            b,
            new Uint8Array(oo.buffer),
            len > max ? max : len,
            flags,
          ),
        );
        if (n < 0) throw FuseError.of(-n);
        return n;
      }));
  }

  // ---- snapshots -------------------------------------------------------------

  override save(): PassthroughState {
    return this.#locked(() => {
      const t = this.#t;
      const nodes: SavedNode[] = [];
      let nextId = 2;
      for (const n of t.liveNodes()) {
        if (n === ROOT) continue;
        const id = t.id(n);
        nextId = Math.max(nextId, id + 1);
        const p = t.parent(n);
        nodes.push({
          id,
          parent: p >= 0 ? t.id(p) : null,
          name: btoa(t.nameString(n)),
          key: this.#keyText(n),
          lookups: t.lookups(n),
          detached: t.has(n, NF.DETACHED),
        });
      }
      const handles: SavedHandle[] = [];
      let nextFh = 1;
      for (const s of t.liveHandles()) {
        const fh = t.fh(s);
        nextFh = Math.max(nextFh, fh + 1);
        const dir = t.hIsDir(s);
        handles.push({
          fh,
          node: t.hNodeId(s),
          kind: dir ? "dir" : "file",
          flags: dir ? 0 : t.hFlags(s),
          off: dir ? String(t.hOff(s)) : "0",
        });
      }
      return { version: 1, nextId, nextFh, nodes, handles };
    });
  }

  override restore(state: unknown): void {
    const s = state as PassthroughState;
    if (s?.version !== 1) throw new Error("PassthroughFs.restore: unknown state version");
    this.#locked(() => this.#restore(s));
  }

  #restore(s: PassthroughState): void {
    const t = this.#t;
    this.#destroy();
    const made = new Map<number, number>([[1, ROOT]]);
    /** Nodes that could not be placed (their subtree is dropped: the client gets ENOENT). */
    const lost = new Set<number>();
    const byId = new Map(s.nodes.map((n) => [n.id, n]));
    const make = (id: number, depth: number): number => {
      const have = made.get(id);
      if (have !== undefined) return have;
      if (lost.has(id) || depth > 4096) return -1;
      const sn = byId.get(id);
      if (!sn) throw new Error(`PassthroughFs.restore: node ${id} missing from state`);
      const parent = sn.parent === null ? -1 : make(sn.parent, depth + 1);
      const n = sn.parent !== null && parent < 0 ? -1 : t.nodeAllocAt(id);
      if (n < 0) {
        lost.add(id);
        return -1;
      }
      const name = atob(sn.name);
      const bytes = new Uint8Array(name.length);
      for (let i = 0; i < name.length; i++) bytes[i] = name.charCodeAt(i);
      t.setName(n, bytes, bytes.length);
      const [maj, min, ino] = parseKey(sn.key);
      t.setKey(n, t.devIndex(maj, min), Number(ino & 0xffffffffn), Number(ino >> 32n));
      t.setParent(n, parent);
      if (parent >= 0) t.addKids(parent, 1);
      t.setLookups(n, sn.lookups);
      t.keyIn(n);
      made.set(id, n);
      return n;
    };
    for (const sn of s.nodes) make(sn.id, 0);
    // Reopen each node by path (parents first: #fd walks up) and take its type and mount.
    for (const [id, n] of made) {
      if (n === ROOT) continue;
      try {
        if (byId.get(id)!.detached || t.parent(n) < 0) throw new FuseError(Errno.ESTALE);
        this.#fd(n);
        t.setType(n, this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT);
        t.set(
          n,
          NF.FOREIGN,
          !this.#crossMounts &&
            this.#stxv.getBigUint64(STATX_OFF.mnt_id, true) !== this.#rootMnt,
        );
      } catch {
        t.set(n, NF.STALE, true);
        t.keyOut(n);
      }
    }
    for (const sh of s.handles) {
      const n = made.get(sh.node);
      if (n === undefined || t.has(n, NF.STALE)) continue;
      try {
        if (sh.kind === "file") {
          const fd = this.#reopen(n, sh.flags & ~O.TRUNC);
          if (!t.hAllocAt(sh.fh, false, fd, n, sh.flags)) sys.close(fd);
        } else {
          const fd = t.has(n, NF.FOREIGN)
            ? -1
            : r(sys.openat(this.#fd(n), DOT_PATH, O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0));
          if (fd < 0 && !t.has(n, NF.FOREIGN)) continue;
          if (!t.hAllocAt(sh.fh, true, fd, n, 0)) {
            if (fd >= 0) sys.close(fd);
            continue;
          }
          // An offset no READDIR continues from: the next one seeks to the client's.
          t.hSetOff(t.hSlot(sh.fh, true), -1n);
        }
      } catch {
        // Leave the handle out: the client gets EBADF.
      }
    }
  }
}

/** `maj:min:ino` → its parts. */
function parseKey(key: string): [number, number, bigint] {
  const m = /^(\d+):(\d+):(\d+)$/.exec(key);
  if (!m) throw new Error(`PassthroughFs.restore: bad node key ${JSON.stringify(key)}`);
  return [Number(m[1]), Number(m[2]), BigInt(m[3]) & 0xffffffffffffffffn];
}

/** A NUL-terminated name without its NUL (a view of the same private copy). */
function bare(c: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  return c.subarray(0, c.length - 1);
}
