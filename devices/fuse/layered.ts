/**
 * A read-only {@link FileSystem} that merges unpacked image layers (see
 * `layer_index.ts` for their on-disk form) as the OCI image spec applies
 * changesets (image-spec `layer.md`): layers bottom to top, each entry
 * replacing what a lower layer had at its path (a directory over a directory
 * merges), `.wh.NAME` whiteouts removing NAME of lower layers and
 * `.wh..wh..opq` making a directory hide its lower contents — both apply to
 * lower layers only, wherever they sit in their own layer's tar.
 *
 * The merged tree is built in memory once, from the layers' indexes, so
 * LOOKUP, GETATTR, READDIR(PLUS) and READLINK never touch the host. Types,
 * modes (with setuid bits), owners, times, symlink targets, device numbers,
 * hard-link counts and xattrs all come from the indexes. Only OPEN touches
 * the host: it opens the regular file's content in its layer's `root/` with
 * `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, O_NOFOLLOW and
 * O_NONBLOCK, and checks that it is a regular file of the indexed size — a
 * symlink on the host is never followed and nothing outside the layer
 * directories is reachable. Every change is EROFS.
 *
 * Node ids are the merge order's inode numbers (1 is the root), identical for
 * the same layers, so {@link LayeredFs.save} only carries the open handles.
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
import { FOPEN } from "./protocol.ts";
import { AT, cpath, EMPTY, openat2, r, RESOLVE_SAFE, S, STATX, STATX_OFF, sys } from "./sys.ts";
import { LAYER_ROOT, type LayerEntry, readLayerIndex } from "./layer_index.ts";

/** Options of a {@link LayeredFs}. */
export interface LayeredOptions {
  /** Layer directories, bottom layer first. */
  layers: readonly string[];
  /** Seconds the client may cache names and attributes; default 3600 (nothing changes). */
  timeout?: number;
  /** Called with one line for each entry that cannot be applied (a dangling hard link). */
  warn?: (line: string) => void;
}

/** One merged node. */
class Node {
  nlink = 1;
  /** Directory children by name (binary string), for directories. */
  children: Map<string, Node> | null = null;
  /** Sorted [name, node] pairs for READDIR, built on the first OPENDIR. */
  listing: [Uint8Array, Node][] | null = null;
  /** Layer index and path (binary string) of a regular file's content. */
  layer = -1;
  content = "";
  /** Symlink target bytes. */
  target: Uint8Array | null = null;
  xattrs: Map<string, Uint8Array> | null = null;
  constructor(
    readonly id: number,
    public type: number,
    public mode: number,
    public uid: number,
    public gid: number,
    public size: number,
    public mtime: number,
    public mtimeNsec: number,
    public rdev: number,
    public parent: Node | null,
  ) {}
}

const TYPE: Partial<Record<LayerEntry["kind"], number>> = {
  file: S.IFREG,
  dir: S.IFDIR,
  "implicit-dir": S.IFDIR,
  symlink: S.IFLNK,
  char: S.IFCHR,
  block: S.IFBLK,
  fifo: S.IFIFO,
};

/** d_type values for READDIR (`DT_*`, the file type >> 12). */
function dtype(mode: number): number {
  return (mode & S.IFMT) >>> 12;
}

interface FileHandle {
  node: Node;
  fd: number;
}

/** What {@link LayeredFs.save} returns. */
export interface LayeredState {
  version: 1;
  nextFh: number;
  nodes: number;
  handles: { fh: number; node: number; kind: "file" | "dir" }[];
}

const enc = new TextEncoder();
const DOT = 0x2e;
/** The bytes a `Uint8Array` name is keyed by. */
function key(name: Uint8Array): string {
  return name.length < 64
    ? String.fromCharCode.apply(null, name as unknown as number[])
    : String.fromCharCode(...name);
}
function bytesOf(s: string): Uint8Array {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}

/** The layered backend; see the module documentation. */
export class LayeredFs extends FileSystem {
  #nodes: Node[] = [];
  #root: Node;
  #layerFds: number[] = [];
  #files = new Map<number, FileHandle>();
  #dirs = new Map<number, Node>();
  #nextFh = 1;
  #timeout: number;
  #totalBytes = 0;
  #stx = new Uint8Array(STATX_OFF.size_of);
  #stxv = new DataView(this.#stx.buffer);
  #closed = false;

  constructor(options: LayeredOptions) {
    super();
    this.#timeout = options.timeout ?? 3600;
    this.#nodes.push(null as unknown as Node); // ids start at 1 (FUSE_ROOT_ID)
    this.#root = this.#newNode(S.IFDIR, 0o755, 0, 0, 0, 0, 0, 0, null);
    this.#root.children = new Map();
    try {
      options.layers.forEach((dir, i) => {
        const fd = r(
          sys.openat(AT.FDCWD, cpath(`${dir}/${LAYER_ROOT}`), O.PATH | O.DIRECTORY | O.CLOEXEC, 0),
        );
        if (fd < 0) throw new FuseError(-fd, `cannot open layer ${dir}/${LAYER_ROOT}`);
        this.#layerFds.push(fd);
        this.#apply(i, readLayerIndex(dir), options.warn ?? (() => {}), dir);
      });
    } catch (e) {
      this.close();
      throw e;
    }
    this.#finish(this.#root);
  }

  /** Number of merged nodes (for tests). */
  get nodeCount(): number {
    return this.#nodes.length - 1;
  }

  /** Number of open handles. */
  get handleCount(): number {
    return this.#files.size + this.#dirs.size;
  }

  #newNode(
    type: number,
    mode: number,
    uid: number,
    gid: number,
    size: number,
    mtime: number,
    nsec: number,
    rdev: number,
    parent: Node | null,
  ): Node {
    const n = new Node(this.#nodes.length, type, mode, uid, gid, size, mtime, nsec, rdev, parent);
    this.#nodes.push(n);
    return n;
  }

  /** The node at a cleaned path, through directories only; null when absent. */
  #find(path: string): Node | null {
    let n: Node | null = this.#root;
    if (path === "") return n;
    for (const c of path.split("/")) {
      n = n.children?.get(c) ?? null;
      if (!n) return null;
    }
    return n;
  }

  #detach(n: Node): void {
    n.nlink--;
  }

  /** Applies one layer's entries on the merged tree (OCI layer.md changeset semantics). */
  #apply(layer: number, entries: LayerEntry[], warn: (l: string) => void, dir: string): void {
    // Whiteouts and opaque markers hide lower layers only: apply them first.
    for (const e of entries) {
      if (e.kind === "opaque") {
        const d = this.#find(e.path);
        if (d?.children) {
          for (const c of d.children.values()) this.#detach(c);
          d.children.clear();
        }
      } else if (e.kind === "whiteout") {
        const slash = e.path.lastIndexOf("/");
        const d = this.#find(slash < 0 ? "" : e.path.slice(0, slash));
        const name = e.path.slice(slash + 1);
        const victim = d?.children?.get(name);
        if (victim) {
          this.#detach(victim);
          d!.children!.delete(name);
        }
      }
    }
    for (const e of entries) {
      if (e.kind === "opaque" || e.kind === "whiteout") continue;
      if (e.path === "") {
        if (e.kind === "dir") this.#setMeta(this.#root, e);
        continue;
      }
      const slash = e.path.lastIndexOf("/");
      const parent = this.#find(slash < 0 ? "" : e.path.slice(0, slash));
      if (!parent?.children) {
        // The unpacker puts every parent first; a corrupt index ends up here.
        warn(`${dir}: ${e.path}: its parent is not a directory; entry skipped`);
        continue;
      }
      const name = e.path.slice(slash + 1);
      const old = parent.children.get(name);
      if (e.kind === "dir" || e.kind === "implicit-dir") {
        if (old?.children) {
          // A directory over a directory merges; an implied one keeps the lower metadata.
          if (e.kind === "dir") this.#setMeta(old, e);
          continue;
        }
        const d = this.#newNode(S.IFDIR, e.mode, e.uid, e.gid, 0, e.mtime, e.mtimeNsec, 0, parent);
        d.children = new Map();
        this.#setXattrs(d, e);
        if (old) this.#detach(old);
        parent.children.set(name, d);
        continue;
      }
      if (e.kind === "hardlink") {
        const target = this.#find(e.link);
        if (!target || target.children) {
          warn(
            `${dir}: ${e.path}: hard link to ${
              target ? "a directory" : "a missing path"
            } ${e.link}; entry skipped`,
          );
          continue;
        }
        if (old === target) continue;
        if (old) this.#detach(old);
        target.nlink++;
        parent.children.set(name, target);
        continue;
      }
      const type = TYPE[e.kind]!;
      const n = this.#newNode(type, e.mode, e.uid, e.gid, 0, e.mtime, e.mtimeNsec, e.rdev, parent);
      if (type === S.IFREG) {
        n.size = e.size;
        n.layer = layer;
        n.content = e.path;
        this.#totalBytes += e.size;
      } else if (type === S.IFLNK) {
        n.target = bytesOf(e.link);
        n.size = n.target.length;
      }
      this.#setXattrs(n, e);
      if (old) this.#detach(old);
      parent.children.set(name, n);
    }
  }

  #setMeta(n: Node, e: LayerEntry): void {
    n.mode = e.mode;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = e.mtime;
    n.mtimeNsec = e.mtimeNsec;
    this.#setXattrs(n, e);
  }

  #setXattrs(n: Node, e: LayerEntry): void {
    if (!e.xattrs) {
      n.xattrs = null;
      return;
    }
    n.xattrs = new Map();
    for (const [k, v] of Object.entries(e.xattrs)) n.xattrs.set(k, bytesOf(atob(v)));
  }

  /** Directory link counts (2 + subdirectories) and parents, after the merge. */
  #finish(root: Node): void {
    const stack = [root];
    while (stack.length) {
      const d = stack.pop()!;
      let subdirs = 0;
      for (const c of d.children!.values()) {
        if (c.children) {
          subdirs++;
          c.parent = d;
          stack.push(c);
        }
      }
      d.nlink = 2 + subdirs;
    }
  }

  #node(id: number): Node {
    const n = id > 0 ? this.#nodes[id] : undefined;
    if (!n) throw new FuseError(Errno.ENOENT, `unknown node id ${id}`);
    return n;
  }

  #attr(n: Node): Attr {
    const size = n.children ? 4096 : n.size;
    return {
      ino: BigInt(n.id),
      size: BigInt(size),
      blocks: BigInt(Math.ceil(size / 512)),
      atime: BigInt(n.mtime),
      atimensec: n.mtimeNsec,
      mtime: BigInt(n.mtime),
      mtimensec: n.mtimeNsec,
      ctime: BigInt(n.mtime),
      ctimensec: n.mtimeNsec,
      mode: n.type | n.mode,
      nlink: n.nlink,
      uid: n.uid,
      gid: n.gid,
      rdev: n.rdev,
      blksize: 4096,
    };
  }

  #entry(n: Node): Entry {
    return {
      nodeid: n.id,
      generation: 0,
      attr: this.#attr(n),
      entryTimeout: this.#timeout,
      attrTimeout: this.#timeout,
    };
  }

  // ---- FileSystem ------------------------------------------------------------

  override lookup(_ctx: Context, parent: number, name: Uint8Array): Entry {
    const d = this.#node(parent);
    if (!d.children) throw new FuseError(Errno.ENOTDIR);
    if (name.length === 0 || name.length > 255) throw FuseError.of(Errno.ENOENT);
    if (name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT))) {
      return this.#entry(name.length === 1 ? d : d.parent ?? d);
    }
    const n = d.children.get(key(name));
    if (!n) throw FuseError.of(Errno.ENOENT);
    return this.#entry(n);
  }

  override forget(_nodeid: number, _nlookup: number): void {
    // Nodes live as long as the file system: nothing to release.
  }

  override getattr(_ctx: Context, nodeid: number, _fh: number | null): AttrReply {
    return { attr: this.#attr(this.#node(nodeid)), timeout: this.#timeout };
  }

  override setattr(_ctx: Context, _nodeid: number, _in: SetattrIn): AttrReply {
    throw FuseError.of(Errno.EROFS);
  }

  override readlink(_ctx: Context, nodeid: number): Uint8Array {
    const n = this.#node(nodeid);
    if (!n.target) throw FuseError.of(Errno.EINVAL);
    return n.target;
  }

  override symlink(): Entry {
    throw FuseError.of(Errno.EROFS);
  }
  override mknod(): Entry {
    throw FuseError.of(Errno.EROFS);
  }
  override mkdir(): Entry {
    throw FuseError.of(Errno.EROFS);
  }
  override unlink(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override rmdir(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override rename(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override link(): Entry {
    throw FuseError.of(Errno.EROFS);
  }
  override write(): number {
    throw FuseError.of(Errno.EROFS);
  }
  override create(): Created {
    throw FuseError.of(Errno.EROFS);
  }
  override fallocate(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override setxattr(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override removexattr(): void {
    throw FuseError.of(Errno.EROFS);
  }
  override copyFileRange(): number {
    throw FuseError.of(Errno.EROFS);
  }

  /** Opens the content of a regular-file node (beneath its layer, no link followed). */
  #open(n: Node): number {
    if (n.children) throw FuseError.of(Errno.EISDIR);
    if (n.type !== S.IFREG) throw new FuseError(Errno.EACCES, "not a regular file");
    const fd = openat2(
      this.#layerFds[n.layer],
      cpath(bytesOf(n.content)),
      O.RDONLY | O.NOFOLLOW | O.NONBLOCK | O.CLOEXEC,
      0,
      RESOLVE_SAFE,
    );
    if (fd < 0) throw new FuseError(-fd, "open layer content");
    const st = r(sys.statx(fd, EMPTY, AT.EMPTY_PATH, STATX.BASIC_STATS, this.#stx));
    const mode = this.#stxv.getUint16(STATX_OFF.mode, true);
    if (
      st < 0 || (mode & S.IFMT) !== S.IFREG ||
      this.#stxv.getBigUint64(STATX_OFF.size, true) !== BigInt(n.size)
    ) {
      sys.close(fd);
      throw new FuseError(Errno.EIO, "layer content changed on the host");
    }
    return fd;
  }

  override open(_ctx: Context, nodeid: number, flags: number): Opened {
    if ((flags & 3) !== 0 || (flags & O.TRUNC)) throw FuseError.of(Errno.EROFS);
    const n = this.#node(nodeid);
    const fd = this.#open(n);
    const fh = this.#nextFh++;
    this.#files.set(fh, { node: n, fd });
    // The content never changes: the client may keep its page cache across opens.
    return { fh, openFlags: FOPEN.KEEP_CACHE };
  }

  #file(fh: number): FileHandle {
    const h = this.#files.get(fh);
    if (!h) throw new FuseError(Errno.EBADF, `no file handle ${fh}`);
    return h;
  }

  override read(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    dst: Uint8Array[],
  ): number {
    const h = this.#file(fh);
    let total = 0;
    for (const buf of dst) {
      let done = 0;
      while (done < buf.length) {
        const n = r(
          sys.pread(
            h.fd,
            buf.subarray(done) as Uint8Array<ArrayBuffer>,
            BigInt(buf.length - done),
            offset + BigInt(total + done),
          ),
        );
        if (n < 0) {
          if (total + done > 0) return total + done;
          throw FuseError.of(-n);
        }
        if (n === 0) return total + done;
        done += n;
      }
      total += done;
    }
    return total;
  }

  override release(_ctx: Context, _nodeid: number, fh: number): void {
    const h = this.#file(fh);
    sys.close(h.fd);
    this.#files.delete(fh);
  }

  override flush(_ctx: Context, _nodeid: number, fh: number): void {
    this.#file(fh);
  }

  override fsync(_ctx: Context, _nodeid: number, fh: number, _datasync: boolean): void {
    this.#file(fh);
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

  override statfs(_ctx: Context, _nodeid: number): StatFs {
    const blocks = BigInt(Math.ceil(this.#totalBytes / 4096));
    return {
      blocks,
      bfree: 0n,
      bavail: 0n,
      files: BigInt(this.#nodes.length - 1),
      ffree: 0n,
      bsize: 4096,
      namelen: 255,
      frsize: 4096,
    };
  }

  override getxattr(_ctx: Context, nodeid: number, name: Uint8Array): Uint8Array {
    const v = this.#node(nodeid).xattrs?.get(key(name));
    if (!v) throw FuseError.of(Errno.ENODATA);
    return v;
  }

  override listxattr(_ctx: Context, nodeid: number): Uint8Array {
    const x = this.#node(nodeid).xattrs;
    if (!x) return new Uint8Array(0);
    return enc.encode([...x.keys()].map((k) => `${k}\0`).join(""));
  }

  /** A directory's sorted listing (built once: the tree never changes). */
  #listing(n: Node): [Uint8Array, Node][] {
    n.listing ??= [...n.children!.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, c]) => [bytesOf(name), c]);
    return n.listing;
  }

  override opendir(_ctx: Context, nodeid: number, _flags: number): Opened {
    const n = this.#node(nodeid);
    if (!n.children) throw FuseError.of(Errno.ENOTDIR);
    this.#listing(n);
    const fh = this.#nextFh++;
    this.#dirs.set(fh, n);
    // The listing never changes: the client may cache it.
    return { fh, openFlags: FOPEN.KEEP_CACHE | FOPEN.CACHE_DIR };
  }

  override readdir(
    _ctx: Context,
    _nodeid: number,
    fh: number,
    offset: bigint,
    sink: DirSink,
  ): void {
    const d = this.#dirs.get(fh);
    if (!d) throw new FuseError(Errno.EBADF, `no dir handle ${fh}`);
    const list = d.listing!;
    // Offsets: 1 after ".", 2 after "..", then 3 + i after child i.
    for (let i = Number(offset); i < list.length + 2; i++) {
      if (i < 2) {
        const name = i === 0 ? DOT1 : DOT2;
        if (!sink.fits(name.length)) return;
        const n = i === 0 ? d : d.parent ?? d;
        sink.add(name, BigInt(n.id), dtype(S.IFDIR), BigInt(i + 1), null);
        continue;
      }
      const [name, c] = list[i - 2];
      if (!sink.fits(name.length)) return;
      sink.add(name, BigInt(c.id), dtype(c.type), BigInt(i + 1), sink.plus ? this.#entry(c) : null);
    }
  }

  override releasedir(_ctx: Context, _nodeid: number, fh: number): void {
    if (!this.#dirs.delete(fh)) throw new FuseError(Errno.EBADF, `no dir handle ${fh}`);
  }

  override fsyncdir(_ctx: Context, _nodeid: number, fh: number, _datasync: boolean): void {
    if (!this.#dirs.has(fh)) throw new FuseError(Errno.EBADF, `no dir handle ${fh}`);
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    const n = this.#node(nodeid);
    if (mask === 0) return;
    if (mask & 2) throw FuseError.of(Errno.EROFS);
    let bits: number;
    if (ctx.uid === 0) bits = 6 | (n.children || (n.mode & 0o111) ? 1 : 0);
    else if (n.uid === ctx.uid) bits = (n.mode >> 6) & 7;
    else if (n.gid === ctx.gid) bits = (n.mode >> 3) & 7;
    else bits = n.mode & 7;
    if ((mask & 7 & ~bits) !== 0) throw FuseError.of(Errno.EACCES);
  }

  override destroy(): void {
    for (const h of this.#files.values()) sys.close(h.fd);
    this.#files.clear();
    this.#dirs.clear();
  }

  /** Closes every fd. The instance is unusable afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.destroy();
    for (const fd of this.#layerFds) sys.close(fd);
    this.#layerFds = [];
  }

  override save(): LayeredState {
    return {
      version: 1,
      nextFh: this.#nextFh,
      nodes: this.#nodes.length - 1,
      handles: [
        ...[...this.#files].map(([fh, h]) => ({ fh, node: h.node.id, kind: "file" as const })),
        ...[...this.#dirs].map(([fh, n]) => ({ fh, node: n.id, kind: "dir" as const })),
      ],
    };
  }

  override restore(state: unknown): void {
    const s = state as LayeredState;
    if (s?.version !== 1) throw new Error("LayeredFs.restore: unknown state version");
    if (s.nodes !== this.#nodes.length - 1) {
      throw new Error(
        `LayeredFs.restore: the layers merge to ${
          this.#nodes.length - 1
        } nodes, the snapshot had ${s.nodes}`,
      );
    }
    this.destroy();
    this.#nextFh = s.nextFh;
    for (const h of s.handles) {
      const n = this.#nodes[h.node];
      if (!n) continue;
      if (h.kind === "dir") {
        if (!n.children) continue;
        this.#listing(n);
        this.#dirs.set(h.fh, n);
      } else {
        try {
          this.#files.set(h.fh, { node: n, fd: this.#open(n) });
        } catch {
          // Left out: the client gets EBADF.
        }
      }
    }
  }
}

const DOT1 = new Uint8Array([DOT]);
const DOT2 = new Uint8Array([DOT, DOT]);
