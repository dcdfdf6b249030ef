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
 *   AT_SYMLINK_NOFOLLOW)`; only where the kernel has no fd form (chmod,
 *   truncate, xattrs, reopening an O_PATH fd for I/O) the server uses
 *   `/proc/self/fd/N` of its own fd, which names exactly that inode.
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
 * A host inode's identity, (dev, ino): one number while the dev's index (in the
 * order devs were first seen) is below 256 and the inode number below 2^45 — the
 * usual case, and a number key costs no string building per lookup — else the
 * text `maj:min:ino`. {@link PassthroughState} always holds the text form.
 */
type NodeKey = number | string;
/** Inode numbers below this share a number key with their dev's index. */
const INO_SPAN = 2 ** 45;
const INO_SPAN_BIG = 2n ** 45n;
const TWO32 = 2 ** 32;

/** One node (inode) the client knows. */
class Node {
  fd = -1;
  lookups = 0;
  kids = 0;
  /** Unlinked through us while referenced: its fd is pinned (never evicted). */
  detached = false;
  /** Reopening by path found another file (restore or host rename). */
  stale = false;
  /**
   * Open handles of this node that hold a real (non-O_PATH) fd, newest last: fd-based
   * calls (fstat, fgetxattr, fchmod, ftruncate) on one of them skip the
   * `/proc/self/fd` walk or the lazy O_PATH open the node's own fd would need.
   */
  open: Handle[] | null = null;
  constructor(
    readonly id: number,
    public parent: Node | null,
    /** The name in `parent`, one byte per char (latin1): a string costs less than bytes to keep. */
    public name: string,
    readonly key: NodeKey,
    public type: number,
    public foreign: boolean,
  ) {}
}

interface FileHandle {
  kind: "file";
  fd: number;
  node: Node;
  flags: number;
}

interface DirHandle {
  kind: "dir";
  fd: number;
  node: Node;
  buf: Uint8Array<ArrayBuffer>;
  dv: DataView;
  len: number;
  pos: number;
  off: bigint;
}

type Handle = FileHandle | DirHandle;

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

const DOT = 0x2e;
const SLASH = 0x2f;
const UTIME_NOW = (1 << 30) - 1;
const UTIME_OMIT = (1 << 30) - 2;
/** open(2) flags a client may pass through to the host on OPEN/CREATE. */
const OPEN_PASS = 3 | O.APPEND | O.TRUNC | 0o4010000 /* O_SYNC */ | 0o10000 /* O_DSYNC */ |
  0o1000000 /* O_NOATIME */ | 0o100000 /* O_LARGEFILE */;
const XATTR_MAX = 65536;
/**
 * Open flags of every file handle. FOPEN_NOFLUSH (7.35): FLUSH would be a
 * no-op here — writes reach the host with pwrite before WRITE is answered
 * and POSIX locks are not offered — so the client skips the round trip on
 * each close (a shell's `echo x > f` closes twice). Older clients ignore it.
 */
const FILE_OPEN_FLAGS = FOPEN.NOFLUSH;

/** "." as a C string, for reopening a directory's O_PATH fd for reading. */
const DOT_PATH = cpath(".");

/** The passthrough backend. Construct once per share; serve it with a {@link FuseServer}. */
export class PassthroughFs extends FileSystem {
  /** The host directory shared. */
  readonly root: string;
  #ro: boolean;
  #crossMounts: boolean;
  #creds: PassthroughOptions["credentials"];
  #entryTimeout: number;
  #attrTimeout: number;
  #allowDevices: boolean;
  #rootFd: number;
  #rootNode: Node;
  #rootMnt = 0n;
  #byId = new Map<number, Node>();
  #byKey = new Map<NodeKey, Node>();
  /** Dev numbers (maj * 2^20 + min) → index, and back ({@link NodeKey}). */
  #devs = new Map<number, number>();
  #devList: [number, number][] = [];
  #lru = new Map<Node, true>();
  #maxFds: number;
  #handles = new Map<number, Handle>();
  #nextId = 2;
  #nextFh = 1;
  #hidden = new Set<NodeKey>();
  #hiddenIno = new Set<bigint>();
  #stx = new Uint8Array(STATX_OFF.size_of);
  #stxv = new DataView(this.#stx.buffer);
  #name1 = new Uint8Array(4097);
  #name2 = new Uint8Array(4097);
  #xbuf = new Uint8Array(XATTR_MAX);
  #dirBufs: Uint8Array<ArrayBuffer>[] = [];
  #isRoot: boolean;
  #groups: readonly number[] = [];

  constructor(root: string, options: PassthroughOptions = {}) {
    super();
    this.root = root;
    this.#ro = options.readOnly ?? false;
    this.#crossMounts = options.crossMounts ?? true;
    this.#creds = options.credentials;
    if (this.#creds) this.#groups = this.#creds.groups ?? [this.#creds.gid];
    this.#entryTimeout = options.entryTimeout ?? 1;
    this.#attrTimeout = options.attrTimeout ?? 1;
    this.#allowDevices = options.allowDevices ?? false;
    this.#isRoot = Deno.uid() === 0;
    const limit = raiseNofile();
    this.#maxFds = options.maxCachedFds ?? Math.max(64, Math.floor(limit / 2));
    this.#enterCreds();
    const fd = r(sys.openat(AT.FDCWD, cpath(root), O.PATH | O.DIRECTORY | O.CLOEXEC, 0));
    if (fd < 0) throw new FuseError(-fd, `cannot open share root ${root}`);
    this.#rootFd = fd;
    const st = this.#statFd(fd);
    if (st < 0) throw new FuseError(-st, `cannot stat share root ${root}`);
    this.#rootMnt = this.#stxv.getBigUint64(STATX_OFF.mnt_id, true);
    this.#rootNode = new Node(1, null, "", this.#key(), S.IFDIR, false);
    this.#rootNode.fd = fd;
    this.#rootNode.lookups = 1;
    this.#byId.set(1, this.#rootNode);
    this.#byKey.set(this.#rootNode.key, this.#rootNode);
    for (const h of options.hide ?? []) this.#addHidden(h);
  }

  /** Number of nodes currently known (for tests and diagnostics). */
  get nodeCount(): number {
    return this.#byId.size;
  }

  /** Number of open handles. */
  get handleCount(): number {
    return this.#handles.size;
  }

  /** Number of node fds currently open (LRU + pinned + root). */
  get openNodeFds(): number {
    let n = 0;
    for (const node of this.#byId.values()) if (node.fd >= 0) n++;
    return n;
  }

  // ---- helpers -------------------------------------------------------------

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
      this.#hidden.add(this.#key());
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

  /** The {@link NodeKey} of the last statx. */
  #key(): NodeKey {
    const v = this.#stxv;
    return this.#keyOf(
      v.getUint32(STATX_OFF.dev_major, true),
      v.getUint32(STATX_OFF.dev_minor, true),
      v.getUint32(STATX_OFF.ino, true),
      v.getUint32(STATX_OFF.ino + 4, true),
    );
  }

  /** The {@link NodeKey} of dev `maj:min`, inode `hi * 2^32 + lo`. */
  #keyOf(maj: number, min: number, lo: number, hi: number): NodeKey {
    // Linux dev numbers are 12 + 20 bits (MINORBITS): maj * 2^20 + min is exact.
    const dev = maj * 0x100000 + min;
    let d = this.#devs.get(dev);
    if (d === undefined) {
      d = this.#devList.length;
      this.#devs.set(dev, d);
      this.#devList.push([maj, min]);
    }
    if (d < 256 && hi < 0x2000) return d * INO_SPAN + hi * TWO32 + lo;
    return `${maj}:${min}:${(BigInt(hi) << 32n) | BigInt(lo)}`;
  }

  /** The key of inode `ino` on the same dev as `dir`. */
  #childKey(dir: Node, ino: bigint): NodeKey {
    const k = dir.key;
    if (typeof k === "number" && ino < INO_SPAN_BIG) {
      return Math.floor(k / INO_SPAN) * INO_SPAN + Number(ino);
    }
    const [maj, min] = this.#devOf(k);
    return this.#keyOf(maj, min, Number(ino & 0xffffffffn), Number(ino >> 32n));
  }

  #devOf(k: NodeKey): [number, number] {
    if (typeof k === "number") return this.#devList[Math.floor(k / INO_SPAN)];
    const [maj, min] = k.split(":");
    return [Number(maj), Number(min)];
  }

  /** A key as text, `maj:min:ino` (the saved form). */
  #keyText(k: NodeKey): string {
    if (typeof k === "string") return k;
    const d = Math.floor(k / INO_SPAN);
    const [maj, min] = this.#devList[d];
    return `${maj}:${min}:${k - d * INO_SPAN}`;
  }

  /** The key of saved text `maj:min:ino`. */
  #keyFromText(t: string): NodeKey {
    const parts = t.split(":");
    if (parts.length !== 3 || !/^\d+$/.test(parts[2])) {
      throw new Error(`PassthroughFs.restore: bad node key ${JSON.stringify(t)}`);
    }
    const ino = BigInt(parts[2]);
    return this.#keyOf(
      Number(parts[0]),
      Number(parts[1]),
      Number(ino & 0xffffffffn),
      Number((ino >> 32n) & 0xffffffffn),
    );
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

  #node(id: number): Node {
    const n = this.#byId.get(id);
    if (!n) throw new FuseError(Errno.ENOENT, `unknown node id ${id}`);
    if (n.stale) throw new FuseError(Errno.ESTALE, `node ${id}`);
    return n;
  }

  #dir(id: number): Node {
    const n = this.#node(id);
    if (n.type !== S.IFDIR) throw new FuseError(Errno.ENOTDIR, `node ${id}`);
    return n;
  }

  /** A directory the client may create in / remove from. */
  #mutableDir(id: number): Node {
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const n = this.#dir(id);
    if (n.foreign) throw new FuseError(Errno.EACCES, "directory on another mount");
    return n;
  }

  /** The O_PATH fd of `node`, reopening it by path if it was evicted. */
  #fd(node: Node): number {
    if (node.fd >= 0) {
      if (node !== this.#rootNode && !node.detached) {
        this.#lru.delete(node);
        this.#lru.set(node, true);
      }
      return node.fd;
    }
    if (node.stale || node.detached) throw new FuseError(Errno.ESTALE, `node ${node.id}`);
    // Walk up to the nearest ancestor with an open fd, collecting names.
    const names: string[] = [];
    let a: Node = node;
    while (a.fd < 0) {
      if (!a.parent) throw new FuseError(Errno.ESTALE, `node ${node.id} has no path`);
      names.push(a.name);
      a = a.parent;
    }
    let len = 0;
    for (const n of names) len += n.length + 1;
    const path = new Uint8Array(len);
    let p = 0;
    for (let i = names.length - 1; i >= 0; i--) {
      const n = names[i];
      for (let j = 0; j < n.length; j++) path[p++] = n.charCodeAt(j);
      path[p++] = i === 0 ? 0 : SLASH;
    }
    const fd = openat2(a.fd, path, O.PATH | O.NOFOLLOW | O.CLOEXEC, 0, RESOLVE_SAFE);
    if (fd < 0) throw new FuseError(fd === -Errno.ENOENT ? Errno.ESTALE : -fd, "reopen node");
    // dev:ino alone can match a different object once the node holds no fd (the inode
    // number of a removed file is reused, e.g. by a symlink put in its place): the
    // file type must match too (0 = not known yet, during restore).
    if (
      this.#statFd(fd) < 0 || this.#key() !== node.key ||
      (node.type !== 0 && (this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT) !== node.type)
    ) {
      sys.close(fd);
      throw new FuseError(Errno.ESTALE, `node ${node.id} was replaced`);
    }
    node.fd = fd;
    this.#cache(node);
    return fd;
  }

  #cache(node: Node): void {
    if (node === this.#rootNode || node.detached) return;
    this.#lru.set(node, true);
    while (this.#lru.size > this.#maxFds) {
      const victim = this.#lru.keys().next().value!;
      this.#lru.delete(victim);
      if (victim.fd >= 0) sys.close(victim.fd);
      victim.fd = -1;
    }
  }

  #setParent(node: Node, parent: Node, name: Uint8Array): void {
    if (node.parent !== parent) {
      parent.kids++;
      const old = node.parent;
      node.parent = parent;
      if (old) {
        old.kids--;
        this.#maybeDrop(old);
      }
    }
    node.name = latin1(name);
  }

  #maybeDrop(node: Node): void {
    while (node !== this.#rootNode && node.lookups <= 0 && node.kids <= 0) {
      if (this.#byId.get(node.id) === node) this.#byId.delete(node.id);
      if (this.#byKey.get(node.key) === node) this.#byKey.delete(node.key);
      this.#lru.delete(node);
      if (node.fd >= 0) sys.close(node.fd);
      node.fd = -1;
      const parent = node.parent;
      node.parent = null;
      if (!parent) return;
      parent.kids--;
      node = parent;
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

  /** {@link #cname} of a stored (latin1) node name. */
  #cnameOf(name: string, buf: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    const n = name.length;
    if (n === 0 || n > 4096) throw new FuseError(n ? Errno.ENAMETOOLONG : Errno.EINVAL, "name");
    for (let i = 0; i < n; i++) buf[i] = name.charCodeAt(i);
    return this.#checkName(buf, n);
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
  #lookupIn(parent: Node, name: Uint8Array): Entry {
    this.#lookable(parent);
    return this.#lookupC(parent, this.#cname(name, this.#name1));
  }

  #lookable(parent: Node): void {
    if (parent.type !== S.IFDIR) throw new FuseError(Errno.ENOTDIR);
    if (parent.foreign) throw FuseError.of(Errno.ENOENT);
  }

  /** {@link #lookupIn} of a name already validated by {@link #cname} (NUL-terminated `c`). */
  #lookupC(parent: Node, c: Uint8Array<ArrayBuffer>): Entry {
    const e = this.#tryLookupC(parent, c);
    if (e instanceof FuseError) throw e;
    return e;
  }

  /**
   * {@link #lookupC} that returns rather than throws the host's answer when the name
   * does not resolve: a negative LOOKUP is a hot path (every new file's open looks
   * its name up first), and a throw costs V8 a stack walk.
   */
  #tryLookupC(parent: Node, c: Uint8Array<ArrayBuffer>): Entry | FuseError {
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
    return this.#adopt(parent, bare(c), -1);
  }

  /**
   * Registers the entry whose statx is in scratch as a node under `parent`, with
   * `fd` (an O_PATH fd of it, owned from now on) or -1 (opened lazily by #fd).
   */
  #adopt(parent: Node, name: Uint8Array, fd: number): Entry {
    const key = this.#key();
    if (this.#hidden.has(key)) {
      if (fd >= 0) sys.close(fd);
      throw FuseError.of(Errno.ENOENT);
    }
    let node = this.#byKey.get(key);
    if (
      node?.detached &&
      (node.fd < 0 || (this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT) !== node.type)
    ) {
      // A node unlinked through us without a pinned fd had lost its last link, and one of
      // another type is another file: this is a new file reusing the inode number (tar
      // replaces its placeholder file by a symlink that way). The old node keeps its id
      // until the client forgets it.
      this.#byKey.delete(key);
      node = undefined;
    }
    if (node) {
      if (fd < 0) {
        // keep whatever fd the node has
      } else if (node.fd < 0 && !node.stale) {
        node.fd = fd;
        this.#cache(node);
      } else {
        sys.close(fd);
      }
      if (node.detached || node.stale) {
        // Found again under a live name: re-attach.
        if (node.detached) {
          node.detached = false;
          if (node.fd >= 0) this.#cache(node);
        }
        this.#setParent(node, parent, name);
      }
    } else {
      const type = this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT;
      const foreign = !this.#crossMounts &&
        this.#stxv.getBigUint64(STATX_OFF.mnt_id, true) !== this.#rootMnt;
      if (foreign && type !== S.IFDIR) {
        if (fd >= 0) sys.close(fd);
        throw FuseError.of(Errno.ENOENT);
      }
      node = new Node(this.#nextId++, parent, latin1(name), key, type, foreign);
      parent.kids++;
      node.fd = fd;
      this.#byId.set(node.id, node);
      this.#byKey.set(key, node);
      if (fd >= 0) this.#cache(node);
    }
    node.lookups++;
    return this.#entry(node);
  }

  #entry(node: Node): Entry {
    return {
      nodeid: node.id,
      generation: 0,
      attr: this.#attr(),
      entryTimeout: this.#entryTimeout,
      attrTimeout: this.#attrTimeout,
    };
  }

  #getattr(node: Node): Attr {
    this.#statNode(node);
    return this.#attr();
  }

  /**
   * statx of `node` into scratch by the cheapest route: its own fd, an open handle's
   * fd, or — with neither — its name in its parent (one validated component, no
   * follow), accepted only if it is still the same file (dev:ino and type, as #fd's
   * reopen checks). Only when that fails does the node get its O_PATH fd (#fd).
   */
  #statNode(node: Node): void {
    let fd = node.fd >= 0 ? node.fd : this.#openFd(node);
    if (fd < 0 && node.parent && !node.detached) {
      const parent = node.parent;
      const c = this.#cnameOf(node.name, this.#name2);
      const st = r(
        sys.statx(
          this.#fd(parent),
          c,
          AT.SYMLINK_NOFOLLOW,
          STATX.BASIC_STATS | STATX.MNT_ID,
          this.#stx,
        ),
      );
      if (
        st >= 0 && this.#key() === node.key &&
        (this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT) === node.type
      ) {
        return;
      }
    }
    if (fd < 0) fd = this.#fd(node);
    const st = this.#statFd(fd);
    if (st < 0) throw FuseError.of(-st);
  }

  /** The fd of one of `node`'s open handles (newest), or -1. */
  #openFd(node: Node): number {
    const o = node.open;
    return o !== null && o.length > 0 ? o[o.length - 1].fd : -1;
  }

  /** The fd of one of `node`'s file handles open for writing, or -1. */
  #writableFd(node: Node): number {
    const o = node.open;
    if (o === null) return -1;
    for (let i = o.length - 1; i >= 0; i--) {
      const h = o[i];
      if (h.kind === "file" && (h.flags & 3) !== 0) return h.fd;
    }
    return -1;
  }

  /** Forgets handle `fh` (and its place in its node's open list). */
  #dropHandle(fh: number, h: Handle): void {
    this.#handles.delete(fh);
    const o = h.node.open;
    if (o === null) return;
    const i = o.lastIndexOf(h);
    if (i >= 0) o.splice(i, 1);
  }

  #handle(fh: number, kind: "file" | "dir"): Handle {
    const h = this.#handles.get(fh);
    if (!h || h.kind !== kind) throw new FuseError(Errno.EBADF, `no ${kind} handle ${fh}`);
    return h;
  }

  #file(fh: number): FileHandle {
    return this.#handle(fh, "file") as FileHandle;
  }

  /** Before removing `name` from `dir`: detach (pin) the node it names, if we know it. */
  #detachChild(dir: Node, cname: Uint8Array<ArrayBuffer>): Node | null {
    const st = r(
      sys.statx(this.#fd(dir), cname, AT.SYMLINK_NOFOLLOW, STATX.BASIC_STATS, this.#stx),
    );
    if (st < 0) return null;
    const node = this.#byKey.get(this.#key());
    if (!node || node.parent !== dir) return null;
    if (!sameName(node.name, cname, cname.length - 1)) return null;
    return node;
  }

  #pin(node: Node): void {
    const ofd = node.fd < 0 ? this.#openFd(node) : -1;
    if (ofd >= 0) {
      // An open handle names exactly this inode: its O_PATH twin needs no path walk.
      const fd = r(sys.openat(AT.FDCWD, procFd(ofd), O.PATH | O.CLOEXEC, 0));
      if (fd >= 0) node.fd = fd;
    }
    try {
      this.#fd(node);
    } catch {
      return;
    }
    node.detached = true;
    this.#lru.delete(node);
  }

  /** Opens a regular-file node for I/O through its O_PATH fd. */
  #reopen(node: Node, flags: number): number {
    if (node.type === S.IFDIR) throw new FuseError(Errno.EISDIR);
    if (node.type !== S.IFREG) throw new FuseError(Errno.EACCES, "not a regular file");
    const fd = r(sys.openat(AT.FDCWD, procFd(this.#fd(node)), (flags & OPEN_PASS) | O.CLOEXEC, 0));
    if (fd < 0) throw FuseError.of(-fd);
    return fd;
  }

  #newHandle(h: Handle): number {
    const fh = this.#nextFh++;
    this.#putHandle(fh, h);
    return fh;
  }

  #putHandle(fh: number, h: Handle): void {
    this.#handles.set(fh, h);
    if (h.fd >= 0) (h.node.open ??= []).push(h);
  }

  // ---- FileSystem ------------------------------------------------------------

  override init(_ctx: Context): void {
    this.#enterCreds();
  }

  override destroy(): void {
    for (const h of this.#handles.values()) {
      if (h.fd >= 0) sys.close(h.fd);
      h.node.open = null;
    }
    this.#handles.clear();
    for (const n of this.#byId.values()) {
      if (n !== this.#rootNode && n.fd >= 0) sys.close(n.fd);
      n.fd = n === this.#rootNode ? n.fd : -1;
    }
    this.#byId.clear();
    this.#byKey.clear();
    this.#lru.clear();
    this.#rootNode.kids = 0;
    this.#byId.set(1, this.#rootNode);
    this.#byKey.set(this.#rootNode.key, this.#rootNode);
  }

  /** Closes every fd, including the root's. The instance is unusable afterwards. */
  close(): void {
    this.destroy();
    sys.close(this.#rootFd);
  }

  override lookup(_ctx: Context, parent: number, name: Uint8Array): Entry | FuseError {
    this.#enterCreds();
    const dir = this.#dir(parent);
    this.#lookable(dir);
    return this.#tryLookupC(dir, this.#cname(name, this.#name1));
  }

  override forget(nodeid: number, nlookup: number): void {
    const n = this.#byId.get(nodeid);
    if (!n || n === this.#rootNode) return;
    n.lookups -= nlookup;
    if (n.lookups < 0) n.lookups = 0;
    this.#maybeDrop(n);
  }

  override getattr(_ctx: Context, nodeid: number, _fh: number | null): AttrReply {
    this.#enterCreds();
    return { attr: this.#getattr(this.#node(nodeid)), timeout: this.#attrTimeout };
  }

  override setattr(_ctx: Context, nodeid: number, s: SetattrIn): AttrReply {
    this.#enterCreds();
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const node = this.#node(nodeid);
    if (node.foreign) throw new FuseError(Errno.EACCES);
    const hfd = s.valid & FATTR.FH ? this.#file(s.fh).fd : -1;
    // Any real fd of the node (the client's handle, or another open handle) serves the
    // fd forms (fchmod, ftruncate, *at with AT_EMPTY_PATH) without a /proc walk or an
    // O_PATH open; the node's own fd is the fallback.
    const ofd = hfd >= 0 ? hfd : this.#openFd(node);
    if (s.valid & FATTR.MODE) {
      if (node.type === S.IFLNK) throw new FuseError(Errno.ENOTSUP);
      const mode = s.mode & 0o7777;
      const rc = ofd >= 0
        ? sys.fchmod(ofd, mode)
        : sys.fchmodat(AT.FDCWD, procFd(this.#fd(node)), mode, 0);
      if (rc < 0) throw new FuseError(-r(rc));
    }
    if (s.valid & (FATTR.UID | FATTR.GID)) {
      const uid = s.valid & FATTR.UID ? s.uid : 0xffffffff;
      const gid = s.valid & FATTR.GID ? s.gid : 0xffffffff;
      const fd = ofd >= 0 ? ofd : this.#fd(node);
      const rc = r(sys.fchownat(fd, EMPTY, uid, gid, AT.EMPTY_PATH | AT.SYMLINK_NOFOLLOW));
      if (rc < 0) throw FuseError.of(-rc);
    }
    if (s.valid & FATTR.SIZE) {
      if (node.type === S.IFDIR) throw new FuseError(Errno.EISDIR);
      if (node.type !== S.IFREG) throw new FuseError(Errno.EINVAL);
      // A handle opened for writing already carries the right to truncate.
      const wfd = hfd >= 0 ? hfd : this.#writableFd(node);
      const rc = r(
        wfd >= 0
          ? sys.ftruncate(wfd, BigInt(s.size))
          : sys.truncate(procFd(this.#fd(node)), BigInt(s.size)),
      );
      if (rc < 0) throw FuseError.of(-rc);
    }
    if (s.valid & (FATTR.ATIME | FATTR.MTIME)) {
      const ts = new BigInt64Array(4);
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
      const fd = ofd >= 0 ? ofd : this.#fd(node);
      const rc = r(sys.utimensat(fd, EMPTY, b, AT.EMPTY_PATH | AT.SYMLINK_NOFOLLOW));
      if (rc < 0) throw FuseError.of(-rc);
    }
    return { attr: this.#getattr(node), timeout: this.#attrTimeout };
  }

  override readlink(_ctx: Context, nodeid: number): Uint8Array {
    this.#enterCreds();
    const node = this.#node(nodeid);
    if (node.type !== S.IFLNK) throw new FuseError(Errno.EINVAL);
    const buf = this.#xbuf;
    const n = r(sys.readlinkat(this.#fd(node), EMPTY, buf, BigInt(4096)));
    if (n < 0) throw FuseError.of(-n);
    return buf.slice(0, n);
  }

  override symlink(ctx: Context, parent: number, name: Uint8Array, target: Uint8Array): Entry {
    this.#enterCreds();
    const dir = this.#mutableDir(parent);
    const c = this.#cname(name, this.#name1);
    if (target.length === 0 || target.length > 4095) throw new FuseError(Errno.EINVAL, "target");
    const t = cpath(target);
    const rc = this.#asCaller(ctx, () => r(sys.symlinkat(t, this.#fd(dir), c)));
    if (rc < 0) throw FuseError.of(-rc);
    return this.#lookupC(dir, c);
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
  }

  override mkdir(ctx: Context, parent: number, name: Uint8Array, mode: number, _u: number): Entry {
    this.#enterCreds();
    const dir = this.#mutableDir(parent);
    const c = this.#cname(name, this.#name1);
    const rc = this.#asCaller(ctx, () => r(sys.mkdirat(this.#fd(dir), c, mode & 0o7777)));
    if (rc < 0) throw FuseError.of(-rc);
    return this.#lookupC(dir, c);
  }

  #remove(parent: number, name: Uint8Array, flags: number): void {
    this.#enterCreds();
    const dir = this.#mutableDir(parent);
    const c = this.#cname(name, this.#name1);
    this.#refuseHidden(dir, c, Errno.ENOENT);
    const victim = this.#detachChild(dir, c);
    if (victim) {
      // A regular file with one link and no open handle is gone once unlinked: nothing
      // can reach it again, so it needs no pinned fd (which would cost an O_PATH open
      // by path and a statx when it has none). It is still marked detached, so a stray
      // request for it is ESTALE and a lookup that finds its inode number reused
      // re-attaches it.
      const nlink = this.#stxv.getUint32(STATX_OFF.nlink, true);
      if (
        victim.fd >= 0 || victim.type !== S.IFREG || nlink > 1 || this.#openFd(victim) >= 0
      ) {
        this.#pin(victim);
      } else {
        victim.detached = true;
        this.#lru.delete(victim);
      }
    }
    const rc = r(sys.unlinkat(this.#fd(dir), c, flags));
    if (rc < 0) {
      if (victim) this.#unpin(victim);
      throw FuseError.of(-rc);
    }
  }

  #unpin(node: Node): void {
    if (!node.detached) return;
    node.detached = false;
    if (node.fd >= 0) this.#cache(node);
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
    if (replaced && !exchange) this.#pin(replaced);
    const rc = r(sys.renameat2(this.#fd(from), c1, this.#fd(to), c2, flags));
    if (rc < 0) {
      if (replaced && !exchange) this.#unpin(replaced);
      throw FuseError.of(-rc);
    }
    if (moving) this.#setParent(moving, to, bare(c2));
    if (replaced && exchange) this.#setParent(replaced, from, bare(c1));
  }

  override link(_ctx: Context, nodeid: number, newparent: number, newname: Uint8Array): Entry {
    this.#enterCreds();
    const dir = this.#mutableDir(newparent);
    const node = this.#node(nodeid);
    if (node.type === S.IFDIR) throw new FuseError(Errno.EPERM, "hard link to a directory");
    if (node.foreign) throw new FuseError(Errno.EXDEV);
    const c = this.#cname(newname, this.#name1);
    const fd = this.#fd(node);
    const dfd = this.#fd(dir);
    let rc = r(sys.linkat(fd, EMPTY, dfd, c, AT.EMPTY_PATH));
    if (rc === -Errno.ENOENT && node.type !== S.IFLNK) {
      // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd/N names the same inode.
      rc = r(sys.linkat(AT.FDCWD, procFd(fd), dfd, c, AT.SYMLINK_FOLLOW));
    }
    if (rc < 0) throw FuseError.of(-rc);
    return this.#lookupC(dir, c);
  }

  override open(_ctx: Context, nodeid: number, flags: number): Opened {
    this.#enterCreds();
    if (this.#ro && ((flags & 3) !== 0 || (flags & O.TRUNC))) throw new FuseError(Errno.EROFS);
    const node = this.#node(nodeid);
    const fd = this.#reopen(node, flags);
    return { fh: this.#newHandle({ kind: "file", fd, node, flags }), openFlags: FILE_OPEN_FLAGS };
  }

  override read(_ctx: Context, _nodeid: number, fh: number, offset: bigint, dst: Uint8Array[]) {
    const h = this.#file(fh);
    if (dst.length === 1) {
      const buf = dst[0];
      let done = 0;
      while (done < buf.length) {
        const n = r(
          sys.pread(
            h.fd,
            done ? buf.subarray(done) as Uint8Array<ArrayBuffer> : buf as Uint8Array<ArrayBuffer>,
            BigInt(buf.length - done),
            offset + BigInt(done),
          ),
        );
        if (n < 0) throw FuseError.of(-n);
        if (n === 0) break;
        done += n;
      }
      return done;
    }
    const iov = new BigUint64Array(dst.length * 2);
    let total = 0;
    for (let i = 0; i < dst.length; i++) {
      iov[2 * i] = BigInt(
        Deno.UnsafePointer.value(Deno.UnsafePointer.of(dst[i] as Uint8Array<ArrayBuffer>)),
      );
      iov[2 * i + 1] = BigInt(dst[i].length);
      total += dst[i].length;
    }
    const n = r(sys.preadv(h.fd, new Uint8Array(iov.buffer), dst.length, offset));
    if (n < 0) throw FuseError.of(-n);
    return Math.min(n, total);
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
    const h = this.#file(fh);
    let done = 0;
    while (done < data.length) {
      const n = r(
        sys.pwrite(
          h.fd,
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
  }

  override statfs(_ctx: Context, nodeid: number): StatFs {
    this.#enterCreds();
    const b = new Uint8Array(STATFS_OFF.size_of);
    const rc = r(sys.fstatfs(this.#fd(this.#node(nodeid)), b));
    if (rc < 0) throw FuseError.of(-rc);
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
    const h = this.#file(fh);
    sys.close(h.fd);
    this.#dropHandle(fh, h);
  }

  override fsync(_ctx: Context, _nodeid: number, fh: number, datasync: boolean): void {
    const h = this.#file(fh);
    const rc = r(datasync ? sys.fdatasync(h.fd) : sys.fsync(h.fd));
    if (rc < 0) throw FuseError.of(-rc);
  }

  /** A NUL-terminated copy of an xattr name (the copy is what is checked and used). */
  #xname(name: Uint8Array): Uint8Array<ArrayBuffer> {
    if (name.length === 0 || name.length > 255) throw new FuseError(Errno.ERANGE, "xattr name");
    const n = cpath(name);
    if (n.indexOf(0) !== n.length - 1) throw new FuseError(Errno.EINVAL, "xattr name with NUL");
    return n;
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
    const node = this.#node(nodeid);
    const n = this.#changeableXname(name, "setting");
    if (node.type === S.IFLNK) throw new FuseError(Errno.EPERM);
    const ofd = this.#openFd(node);
    const v = value.slice();
    const rc = r(
      ofd >= 0
        ? sys.fsetxattr(ofd, n, v, BigInt(v.length), flags & 3)
        : sys.setxattr(procFd(this.#fd(node)), n, v, BigInt(v.length), flags & 3),
    );
    if (rc < 0) throw FuseError.of(-rc);
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
    const node = this.#node(nodeid);
    const n = this.#xname(name);
    if (node.type === S.IFLNK) return FuseError.of(Errno.ENODATA);
    const want = Math.min(size, XATTR_MAX);
    const buf = want > 0 ? this.#xbuf.subarray(0, want) : null;
    const ofd = this.#openFd(node);
    const got = r(
      ofd >= 0
        ? sys.fgetxattr(ofd, n, buf, BigInt(want))
        : sys.getxattr(procFd(this.#fd(node)), n, buf, BigInt(want)),
    );
    // Returned, not thrown: ENODATA is the usual answer (see FileSystem.getxattr).
    if (got < 0) return FuseError.of(-got);
    return want > 0 ? this.#xbuf.slice(0, got) : got;
  }

  /** As {@link getxattr}: through an open handle when there is one, at most `size` bytes. */
  override listxattr(
    _ctx: Context,
    nodeid: number,
    size = XATTR_MAX,
  ): Uint8Array | number | FuseError {
    this.#enterCreds();
    const node = this.#node(nodeid);
    if (node.type === S.IFLNK) return new Uint8Array(0);
    const want = Math.min(size, XATTR_MAX);
    const buf = want > 0 ? this.#xbuf.subarray(0, want) : null;
    const ofd = this.#openFd(node);
    const got = r(
      ofd >= 0
        ? sys.flistxattr(ofd, buf, BigInt(want))
        : sys.listxattr(procFd(this.#fd(node)), buf, BigInt(want)),
    );
    if (got < 0) return FuseError.of(-got);
    return want > 0 ? this.#xbuf.slice(0, got) : got;
  }

  override removexattr(_ctx: Context, nodeid: number, name: Uint8Array): void {
    this.#enterCreds();
    if (this.#ro) throw new FuseError(Errno.EROFS);
    const node = this.#node(nodeid);
    const n = this.#changeableXname(name, "removing");
    if (node.type === S.IFLNK) throw new FuseError(Errno.ENODATA);
    const ofd = this.#openFd(node);
    const rc = r(
      ofd >= 0 ? sys.fremovexattr(ofd, n) : sys.removexattr(procFd(this.#fd(node)), n),
    );
    if (rc < 0) throw FuseError.of(-rc);
  }

  override flush(_ctx: Context, _nodeid: number, fh: number): void {
    this.#file(fh);
  }

  override opendir(_ctx: Context, nodeid: number, _flags: number): Opened {
    this.#enterCreds();
    const node = this.#dir(nodeid);
    let fd = -1;
    if (!node.foreign) {
      fd = r(sys.openat(this.#fd(node), DOT_PATH, O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0));
      if (fd < 0) throw FuseError.of(-fd);
    }
    // Reuse getdents buffers of released handles: a tree walk opens one directory
    // after another, and a fresh 32 KiB buffer per OPENDIR showed in the profile.
    const buf = this.#dirBufs.pop() ?? new Uint8Array(32768);
    const h: DirHandle = {
      kind: "dir",
      fd,
      node,
      buf,
      dv: new DataView(buf.buffer),
      len: 0,
      pos: 0,
      off: 0n,
    };
    return { fh: this.#newHandle(h), openFlags: 0 };
  }

  override readdir(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    sink: DirSink,
  ): void {
    this.#enterCreds();
    const h = this.#handle(fh, "dir") as DirHandle;
    if (h.fd < 0) {
      // A directory on another mount (crossMounts: false) reads as empty but for . and ..
      const names = [new Uint8Array([DOT]), new Uint8Array([DOT, DOT])];
      for (let i = Number(offset); i < 2; i++) {
        if (!sink.fits(names[i].length)) break;
        sink.add(names[i], 0n, 4, BigInt(i + 1), null);
      }
      return;
    }
    if (offset !== h.off) {
      const rc = r(sys.lseek(h.fd, offset, 0));
      if (rc < 0) throw FuseError.of(-rc);
      h.len = h.pos = 0;
      h.off = offset;
    }
    const dir = h.node;
    for (;;) {
      if (h.pos >= h.len) {
        const n = r(sys.getdents64(h.fd, h.buf, BigInt(h.buf.length)));
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
  #knownEntry(dir: Node, ino: bigint): Entry | null {
    const node = this.#byKey.get(this.#childKey(dir, ino));
    if (!node || node.fd < 0 || node.stale || node.detached) return null;
    if (this.#statFd(node.fd) < 0 || this.#key() !== node.key) return null;
    this.#lru.delete(node);
    this.#lru.set(node, true);
    node.lookups++;
    return this.#entry(node);
  }

  /**
   * Throws `errno` when `c` (a name validated by {@link #cname}) in `dir` is a
   * hidden path: it does not exist for the client, so it must not be removed
   * or renamed over either.
   */
  #refuseHidden(dir: Node, c: Uint8Array<ArrayBuffer>, errno: number): void {
    if (this.#hidden.size > 0 && this.#isHiddenC(dir, c)) {
      throw new FuseError(errno, "hidden path");
    }
  }

  /** Whether directory entry `name` of `dir` is hidden. Uses the `#name2` buffer. */
  #isHiddenName(dir: Node, name: Uint8Array): boolean {
    return this.#isHiddenC(dir, this.#cname(name, this.#name2));
  }

  #isHiddenC(dir: Node, c: Uint8Array<ArrayBuffer>): boolean {
    const st = r(sys.statx(this.#fd(dir), c, AT.SYMLINK_NOFOLLOW, STATX.BASIC_STATS, this.#stx));
    return st >= 0 && this.#hidden.has(this.#key());
  }

  override releasedir(_ctx: Context, _nodeid: number, fh: number): void {
    const h = this.#handle(fh, "dir") as DirHandle;
    if (h.fd >= 0) sys.close(h.fd);
    this.#dropHandle(fh, h);
    if (this.#dirBufs.length < 16) this.#dirBufs.push(h.buf);
  }

  override fsyncdir(_ctx: Context, _nodeid: number, fh: number, datasync: boolean): void {
    const h = this.#handle(fh, "dir");
    if (h.fd < 0) return;
    const rc = r(datasync ? sys.fdatasync(h.fd) : sys.fsync(h.fd));
    if (rc < 0) throw FuseError.of(-rc);
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    this.#enterCreds();
    const a = this.#getattr(this.#node(nodeid));
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
    const dir = this.#mutableDir(parent);
    const c = this.#cname(name, this.#name1);
    const pass = flags & OPEN_PASS;
    const fd = this.#asCaller(ctx, () =>
      openat2(
        this.#fd(dir),
        c,
        pass | O.CREAT | O.EXCL | O.NOFOLLOW | O.CLOEXEC,
        mode & 0o7777,
        RESOLVE_SAFE,
      ));
    if (fd === -Errno.EEXIST && !(flags & O.EXCL)) {
      // Lost a race with another creator: open what is there, if it is a regular file.
      const entry = this.#lookupC(dir, c);
      const node = this.#byId.get(entry.nodeid)!;
      try {
        const ofd = this.#reopen(node, pass);
        return {
          entry,
          fh: this.#newHandle({ kind: "file", fd: ofd, node, flags }),
          openFlags: FILE_OPEN_FLAGS,
        };
      } catch (e) {
        this.forget(node.id, 1);
        throw e;
      }
    }
    if (fd < 0) throw FuseError.of(-fd);
    // The entry is the opened file itself (statx of its fd: no second path walk that could
    // race). The node gets its O_PATH fd only if ever needed (#fd, which checks dev:ino
    // and type); until then its open handle's fd serves stat, xattr and setattr calls.
    let entry: Entry;
    try {
      if (this.#statFd(fd) < 0) throw new FuseError(Errno.EIO, "cannot stat the created file");
      entry = this.#adopt(dir, bare(c), -1);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
    const node = this.#byId.get(entry.nodeid)!;
    return {
      entry,
      fh: this.#newHandle({ kind: "file", fd, node, flags }),
      openFlags: FILE_OPEN_FLAGS,
    };
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
    const h = this.#file(fh);
    const rc = r(sys.fallocate(h.fd, mode, offset, length));
    if (rc < 0) throw FuseError.of(-rc);
  }

  override lseek(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    whence: number,
  ): bigint {
    const h = this.#file(fh);
    if (whence > 4) throw new FuseError(Errno.EINVAL, `whence ${whence}`);
    const rc = sys.lseek(h.fd, BigInt.asIntN(64, offset), whence);
    if (rc < 0n) throw new FuseError(-r(rc));
    return BigInt(rc);
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
    const a = this.#file(fhIn);
    const b = this.#file(fhOut);
    const oi = new BigInt64Array([BigInt.asIntN(64, offIn)]);
    const oo = new BigInt64Array([BigInt.asIntN(64, offOut)]);
    const max = 1n << 30n;
    const n = r(
      sys.copy_file_range(
        a.fd,
        new Uint8Array(oi.buffer),
        b.fd,
        new Uint8Array(oo.buffer),
        len > max ? max : len,
        flags,
      ),
    );
    if (n < 0) throw FuseError.of(-n);
    return n;
  }

  // ---- snapshots -------------------------------------------------------------

  override save(): PassthroughState {
    const nodes: SavedNode[] = [];
    for (const n of this.#byId.values()) {
      if (n === this.#rootNode) continue;
      nodes.push({
        id: n.id,
        parent: n.parent ? n.parent.id : null,
        name: btoa(n.name),
        key: this.#keyText(n.key),
        lookups: n.lookups,
        detached: n.detached,
      });
    }
    const handles: SavedHandle[] = [];
    for (const [fh, h] of this.#handles) {
      handles.push({
        fh,
        node: h.node.id,
        kind: h.kind,
        flags: h.kind === "file" ? h.flags : 0,
        off: h.kind === "dir" ? String(h.off) : "0",
      });
    }
    return { version: 1, nextId: this.#nextId, nextFh: this.#nextFh, nodes, handles };
  }

  override restore(state: unknown): void {
    const s = state as PassthroughState;
    if (s?.version !== 1) throw new Error("PassthroughFs.restore: unknown state version");
    this.destroy();
    this.#nextId = s.nextId;
    this.#nextFh = s.nextFh;
    const made = new Map<number, Node>([[1, this.#rootNode]]);
    const byId = new Map(s.nodes.map((n) => [n.id, n]));
    const make = (id: number): Node => {
      const have = made.get(id);
      if (have) return have;
      const sn = byId.get(id);
      if (!sn) throw new Error(`PassthroughFs.restore: node ${id} missing from state`);
      const parent = sn.parent === null ? null : make(sn.parent);
      const type = 0;
      const node = new Node(sn.id, parent, atob(sn.name), this.#keyFromText(sn.key), type, false);
      if (parent) parent.kids++;
      node.lookups = sn.lookups;
      made.set(id, node);
      return node;
    };
    for (const sn of s.nodes) make(sn.id);
    for (const n of made.values()) {
      this.#byId.set(n.id, n);
      this.#byKey.set(n.key, n);
    }
    // Reopen each node by path (parents first: #fd walks up) and take its type and mount.
    for (const node of made.values()) {
      if (node === this.#rootNode) continue;
      try {
        if (byId.get(node.id)!.detached || !node.parent) throw new FuseError(Errno.ESTALE);
        this.#fd(node);
        node.type = this.#stxv.getUint16(STATX_OFF.mode, true) & S.IFMT;
        node.foreign = !this.#crossMounts &&
          this.#stxv.getBigUint64(STATX_OFF.mnt_id, true) !== this.#rootMnt;
      } catch {
        node.stale = true;
        this.#byKey.delete(node.key);
      }
    }
    for (const sh of s.handles) {
      const node = made.get(sh.node);
      if (!node || node.stale) continue;
      try {
        if (sh.kind === "file") {
          const fd = this.#reopen(node, sh.flags & ~O.TRUNC);
          this.#putHandle(sh.fh, { kind: "file", fd, node, flags: sh.flags });
        } else {
          const fd = node.foreign
            ? -1
            : r(sys.openat(this.#fd(node), cpath("."), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0));
          if (fd < -1) continue;
          const buf = new Uint8Array(32768);
          // off = -1 forces an lseek to the client's offset on the next READDIR.
          this.#putHandle(sh.fh, {
            kind: "dir",
            fd,
            node,
            buf,
            dv: new DataView(buf.buffer),
            len: 0,
            pos: 0,
            off: -1n,
          });
        }
      } catch {
        // Leave the handle out: the client gets EBADF.
      }
    }
  }
}

/** Bytes as a string of one char per byte (names are at most 4096 bytes). */
function latin1(b: Uint8Array): string {
  return String.fromCharCode.apply(null, b as unknown as number[]);
}

/** Whether latin1 `name` equals `b[0..n)`. */
function sameName(name: string, b: Uint8Array, n: number): boolean {
  if (name.length !== n) return false;
  for (let i = 0; i < n; i++) if (name.charCodeAt(i) !== b[i]) return false;
  return true;
}

/** A NUL-terminated name without its NUL (a view of the same private copy). */
function bare(c: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  return c.subarray(0, c.length - 1);
}
