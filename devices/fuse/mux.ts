/**
 * One FUSE file system that serves several back-ends side by side: its root
 * is a read-only directory with one entry per attached share (the host root,
 * the current directory, each volume, an image root), and everything below
 * an entry is that share's back-end. A VM therefore needs one virtio-fs
 * device whatever its shares are, and shares can be attached after boot —
 * after a snapshot restore — without adding a device (DESIGN.md: what is
 * mounted per command must not be part of the snapshot key).
 *
 * Node ids and file handles of a back-end are its own; the mux tags node ids
 * with the share's slot (`outer = inner * 256 + slot`) and routes every
 * request by the node id it names. Inode numbers are tagged too (the slot in
 * the top byte), because the guest sees all shares on one superblock and two
 * host files with the same inode number on different shares must not look
 * like hard links of each other.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import {
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
import { FUSE_ROOT_ID } from "./protocol.ts";

/** Slots per mux (the low byte of a node id; 0 is never a slot). */
const SLOTS = 256;
/** S_IFDIR | 0555: the mux root is a read-only directory. */
const ROOT_MODE = 0o040555;
/** DT_DIR for readdir (linux/fs_types.h). */
const DT_DIR = 4;
/** How long the guest may cache the root's entries and attributes (it changes only between sessions). */
const ROOT_TIMEOUT = 1;

interface Share {
  name: string;
  nameBytes: Uint8Array;
  slot: number;
  fs: FileSystem;
}

/** Serialisable mux state: each share's slot and its back-end's own state. */
export interface MuxState {
  shares: { name: string; slot: number; state: unknown }[];
}

const enc = new TextEncoder();

/** Several FUSE back-ends under one root, one directory each. */
export class ShareMux extends FileSystem {
  #bySlot = new Map<number, Share>();
  #byName = new Map<string, Share>();
  #initCtx: Context | null = null;

  /**
   * Attaches `fs` as the root's entry `name` (1..255 bytes, no `/`, not `.`
   * or `..`). If the client already initialised, the back-end is initialised
   * now. Returns the slot.
   */
  attach(name: string, fs: FileSystem): number {
    const nameBytes = enc.encode(name);
    if (
      nameBytes.length === 0 || nameBytes.length > 255 || name.includes("/") ||
      name.includes("\0") || name === "." || name === ".."
    ) {
      throw new RangeError(`share name ${JSON.stringify(name)} is not a valid file name`);
    }
    if (this.#byName.has(name)) throw new RangeError(`share ${name} is already attached`);
    let slot = 1;
    while (this.#bySlot.has(slot)) slot++;
    if (slot >= SLOTS) throw new RangeError(`too many shares (at most ${SLOTS - 1})`);
    const share = { name, nameBytes, slot, fs };
    this.#bySlot.set(slot, share);
    this.#byName.set(name, share);
    if (this.#initCtx) fs.init(this.#initCtx);
    return slot;
  }

  /** Detaches share `name` (the guest has unmounted it) and returns its back-end (the caller closes it). */
  detach(name: string): FileSystem | null {
    const share = this.#byName.get(name);
    if (!share) return null;
    this.#byName.delete(name);
    this.#bySlot.delete(share.slot);
    return share.fs;
  }

  /** The attached shares' names, by slot. */
  get names(): string[] {
    return [...this.#bySlot.values()].sort((a, b) => a.slot - b.slot).map((s) => s.name);
  }

  #route(nodeid: number): { share: Share; inner: number } {
    const share = this.#bySlot.get(nodeid % SLOTS);
    const inner = Math.floor(nodeid / SLOTS);
    if (!share || inner < 1) throw FuseError.of(Errno.ESTALE);
    return { share, inner };
  }

  #outer(share: Share, inner: number): number {
    return inner * SLOTS + share.slot;
  }

  #attr(share: Share, r: AttrReply): AttrReply {
    return { ...r, attr: { ...r.attr, ino: tagIno(r.attr.ino, share.slot) } };
  }

  #entry(share: Share, e: Entry): Entry {
    return {
      ...e,
      nodeid: this.#outer(share, e.nodeid),
      attr: { ...e.attr, ino: tagIno(e.attr.ino, share.slot) },
    };
  }

  #rootAttr(): AttrReply {
    return {
      attr: {
        ino: 1n,
        size: 0n,
        blocks: 0n,
        atime: 0n,
        atimensec: 0,
        mtime: 0n,
        mtimensec: 0,
        ctime: 0n,
        ctimensec: 0,
        mode: ROOT_MODE,
        nlink: 2 + this.#bySlot.size,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
      },
      timeout: ROOT_TIMEOUT,
    };
  }

  /** A share's root as an entry of the mux root (counts no lookup in the back-end). */
  #shareRoot(ctx: Context, share: Share): Entry {
    const a = share.fs.getattr(ctx, FUSE_ROOT_ID, null);
    return this.#entry(share, {
      nodeid: FUSE_ROOT_ID,
      generation: 0,
      attr: a.attr,
      entryTimeout: ROOT_TIMEOUT,
      attrTimeout: a.timeout,
    });
  }

  /** Throws EROFS/EXDEV-style errors for operations on the mux root itself. */
  #notRoot(nodeid: number, errno: number = Errno.EROFS): void {
    if (nodeid === FUSE_ROOT_ID) throw FuseError.of(errno);
  }

  override init(ctx: Context): void {
    this.#initCtx = ctx;
    for (const s of this.#bySlot.values()) s.fs.init(ctx);
  }

  override destroy(): void {
    for (const s of this.#bySlot.values()) s.fs.destroy();
    this.#initCtx = null;
  }

  override lookup(ctx: Context, parent: number, name: Uint8Array): Entry | FuseError {
    if (parent === FUSE_ROOT_ID) {
      const share = this.#byName.get(new TextDecoder().decode(name));
      if (!share || !equalBytes(share.nameBytes, name)) return FuseError.of(Errno.ENOENT);
      return this.#shareRoot(ctx, share);
    }
    const { share, inner } = this.#route(parent);
    const e = share.fs.lookup(ctx, inner, name);
    return e instanceof FuseError ? e : this.#entry(share, e);
  }

  override forget(nodeid: number, nlookup: number): void {
    if (nodeid === FUSE_ROOT_ID) return;
    const share = this.#bySlot.get(nodeid % SLOTS);
    const inner = Math.floor(nodeid / SLOTS);
    // A share's root is not lookup-counted by its back-end (it is the back-end's FUSE root).
    if (!share || inner <= FUSE_ROOT_ID) return;
    share.fs.forget(inner, nlookup);
  }

  override getattr(ctx: Context, nodeid: number, fh: number | null): AttrReply {
    if (nodeid === FUSE_ROOT_ID) return this.#rootAttr();
    const { share, inner } = this.#route(nodeid);
    return this.#attr(share, share.fs.getattr(ctx, inner, fh));
  }

  override setattr(ctx: Context, nodeid: number, i: SetattrIn): AttrReply {
    this.#notRoot(nodeid);
    const { share, inner } = this.#route(nodeid);
    return this.#attr(share, share.fs.setattr(ctx, inner, i));
  }

  override readlink(ctx: Context, nodeid: number): Uint8Array {
    this.#notRoot(nodeid, Errno.EINVAL);
    const { share, inner } = this.#route(nodeid);
    return share.fs.readlink(ctx, inner);
  }

  override symlink(ctx: Context, parent: number, name: Uint8Array, target: Uint8Array): Entry {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    return this.#entry(share, share.fs.symlink(ctx, inner, name, target));
  }

  override mknod(
    ctx: Context,
    parent: number,
    name: Uint8Array,
    mode: number,
    rdev: number,
    umask: number,
  ): Entry {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    return this.#entry(share, share.fs.mknod(ctx, inner, name, mode, rdev, umask));
  }

  override mkdir(ctx: Context, parent: number, name: Uint8Array, mode: number, umask: number) {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    return this.#entry(share, share.fs.mkdir(ctx, inner, name, mode, umask));
  }

  override unlink(ctx: Context, parent: number, name: Uint8Array): void {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    share.fs.unlink(ctx, inner, name);
  }

  override rmdir(ctx: Context, parent: number, name: Uint8Array): void {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    share.fs.rmdir(ctx, inner, name);
  }

  override rename(
    ctx: Context,
    olddir: number,
    oldname: Uint8Array,
    newdir: number,
    newname: Uint8Array,
    flags: number,
  ): void {
    this.#notRoot(olddir);
    this.#notRoot(newdir);
    const a = this.#route(olddir);
    const b = this.#route(newdir);
    if (a.share !== b.share) throw FuseError.of(Errno.EXDEV);
    a.share.fs.rename(ctx, a.inner, oldname, b.inner, newname, flags);
  }

  override link(ctx: Context, nodeid: number, newparent: number, newname: Uint8Array): Entry {
    this.#notRoot(newparent);
    const a = this.#route(nodeid);
    const b = this.#route(newparent);
    if (a.share !== b.share) throw FuseError.of(Errno.EXDEV);
    return this.#entry(a.share, a.share.fs.link(ctx, a.inner, b.inner, newname));
  }

  override open(ctx: Context, nodeid: number, flags: number): Opened {
    this.#notRoot(nodeid, Errno.EISDIR);
    const { share, inner } = this.#route(nodeid);
    return share.fs.open(ctx, inner, flags);
  }

  override read(ctx: Context, nodeid: number, fh: number, offset: bigint, dst: Uint8Array[]) {
    const { share, inner } = this.#route(nodeid);
    return share.fs.read(ctx, inner, fh, offset, dst);
  }

  override write(
    ctx: Context,
    nodeid: number,
    fh: number,
    offset: bigint,
    data: Uint8Array,
    writeFlags: number,
  ): number {
    const { share, inner } = this.#route(nodeid);
    return share.fs.write(ctx, inner, fh, offset, data, writeFlags);
  }

  override statfs(ctx: Context, nodeid: number): StatFs {
    if (nodeid === FUSE_ROOT_ID) {
      return {
        blocks: 0n,
        bfree: 0n,
        bavail: 0n,
        files: 0n,
        ffree: 0n,
        bsize: 4096,
        namelen: 255,
        frsize: 4096,
      };
    }
    const { share, inner } = this.#route(nodeid);
    return share.fs.statfs(ctx, inner);
  }

  override release(ctx: Context, nodeid: number, fh: number): void {
    const { share, inner } = this.#route(nodeid);
    share.fs.release(ctx, inner, fh);
  }

  override fsync(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
    const { share, inner } = this.#route(nodeid);
    share.fs.fsync(ctx, inner, fh, datasync);
  }

  override setxattr(
    ctx: Context,
    nodeid: number,
    name: Uint8Array,
    value: Uint8Array,
    flags: number,
  ): void {
    this.#notRoot(nodeid);
    const { share, inner } = this.#route(nodeid);
    share.fs.setxattr(ctx, inner, name, value, flags);
  }

  override getxattr(
    ctx: Context,
    nodeid: number,
    name: Uint8Array,
    size?: number,
  ): Uint8Array | number | FuseError {
    this.#notRoot(nodeid, Errno.ENODATA);
    const { share, inner } = this.#route(nodeid);
    return share.fs.getxattr(ctx, inner, name, size);
  }

  override listxattr(
    ctx: Context,
    nodeid: number,
    size?: number,
  ): Uint8Array | number | FuseError {
    if (nodeid === FUSE_ROOT_ID) return new Uint8Array(0);
    const { share, inner } = this.#route(nodeid);
    return share.fs.listxattr(ctx, inner, size);
  }

  override removexattr(ctx: Context, nodeid: number, name: Uint8Array): void {
    this.#notRoot(nodeid);
    const { share, inner } = this.#route(nodeid);
    share.fs.removexattr(ctx, inner, name);
  }

  override flush(ctx: Context, nodeid: number, fh: number): void {
    const { share, inner } = this.#route(nodeid);
    share.fs.flush(ctx, inner, fh);
  }

  override opendir(ctx: Context, nodeid: number, flags: number): Opened {
    if (nodeid === FUSE_ROOT_ID) return { fh: 0, openFlags: 0 };
    const { share, inner } = this.#route(nodeid);
    return share.fs.opendir(ctx, inner, flags);
  }

  override readdir(ctx: Context, nodeid: number, fh: number, offset: bigint, sink: DirSink) {
    if (nodeid === FUSE_ROOT_ID) return this.#readRoot(ctx, offset, sink);
    const { share, inner } = this.#route(nodeid);
    share.fs.readdir(ctx, inner, fh, offset, {
      plus: sink.plus,
      fits: (n) => sink.fits(n),
      add: (name, ino, type, off, entry) =>
        sink.add(
          name,
          tagIno(ino, share.slot),
          type,
          off,
          entry ? this.#entry(share, entry) : null,
        ),
    });
  }

  /** The root's entries: ".", "..", then the shares by slot; `off` is the index of the next one. */
  #readRoot(ctx: Context, offset: bigint, sink: DirSink): void {
    const names: { name: Uint8Array; share: Share | null }[] = [
      { name: enc.encode("."), share: null },
      { name: enc.encode(".."), share: null },
      ...[...this.#bySlot.values()].sort((a, b) => a.slot - b.slot).map((s) => ({
        name: s.nameBytes,
        share: s,
      })),
    ];
    for (let i = Number(offset); i < names.length; i++) {
      const { name, share } = names[i];
      if (!sink.fits(name.length)) return;
      const entry = share && sink.plus ? this.#shareRoot(ctx, share) : null;
      const ino = entry?.attr.ino ??
        (share ? tagIno(share.fs.getattr(ctx, FUSE_ROOT_ID, null).attr.ino, share.slot) : 1n);
      sink.add(name, ino, DT_DIR, BigInt(i + 1), entry);
    }
  }

  override releasedir(ctx: Context, nodeid: number, fh: number): void {
    if (nodeid === FUSE_ROOT_ID) return;
    const { share, inner } = this.#route(nodeid);
    share.fs.releasedir(ctx, inner, fh);
  }

  override fsyncdir(ctx: Context, nodeid: number, fh: number, datasync: boolean): void {
    if (nodeid === FUSE_ROOT_ID) return;
    const { share, inner } = this.#route(nodeid);
    share.fs.fsyncdir(ctx, inner, fh, datasync);
  }

  override access(ctx: Context, nodeid: number, mask: number): void {
    if (nodeid === FUSE_ROOT_ID) {
      if (mask & 2) throw FuseError.of(Errno.EROFS);
      return;
    }
    const { share, inner } = this.#route(nodeid);
    share.fs.access(ctx, inner, mask);
  }

  override create(
    ctx: Context,
    parent: number,
    name: Uint8Array,
    mode: number,
    flags: number,
    umask: number,
  ): Created {
    this.#notRoot(parent);
    const { share, inner } = this.#route(parent);
    const c = share.fs.create(ctx, inner, name, mode, flags, umask);
    return { ...c, entry: this.#entry(share, c.entry) };
  }

  override fallocate(
    ctx: Context,
    nodeid: number,
    fh: number,
    offset: bigint,
    length: bigint,
    mode: number,
  ): void {
    const { share, inner } = this.#route(nodeid);
    share.fs.fallocate(ctx, inner, fh, offset, length, mode);
  }

  override lseek(ctx: Context, nodeid: number, fh: number, offset: bigint, whence: number) {
    const { share, inner } = this.#route(nodeid);
    return share.fs.lseek(ctx, inner, fh, offset, whence);
  }

  override copyFileRange(
    ctx: Context,
    nodeIn: number,
    fhIn: number,
    offIn: bigint,
    nodeOut: number,
    fhOut: number,
    offOut: bigint,
    len: bigint,
    flags: number,
  ): number {
    const a = this.#route(nodeIn);
    const b = this.#route(nodeOut);
    if (a.share !== b.share) throw FuseError.of(Errno.EXDEV);
    return a.share.fs.copyFileRange(ctx, a.inner, fhIn, offIn, b.inner, fhOut, offOut, len, flags);
  }

  override save(): MuxState {
    return {
      shares: [...this.#bySlot.values()].map((s) => ({
        name: s.name,
        slot: s.slot,
        state: s.fs.save(),
      })),
    };
  }

  /**
   * Restores {@link save}'s state into a mux whose shares were attached again
   * under the same names (host resources are not part of a snapshot); each
   * share gets its saved slot, so node ids the guest holds stay valid.
   */
  override restore(state: unknown): void {
    const s = state as MuxState;
    if (!s || typeof s !== "object" || !Array.isArray(s.shares)) {
      throw new RangeError("share mux state has no share list");
    }
    const attached = new Map(this.#byName);
    this.#bySlot.clear();
    for (const saved of s.shares) {
      const share = attached.get(saved.name);
      if (!share) throw new RangeError(`share mux state names share ${saved.name}, not attached`);
      if (!Number.isInteger(saved.slot) || saved.slot < 1 || saved.slot >= SLOTS) {
        throw new RangeError(`share mux state has a bad slot for ${saved.name}: ${saved.slot}`);
      }
      if (this.#bySlot.has(saved.slot)) {
        throw new RangeError(`share mux state gives slot ${saved.slot} twice`);
      }
      share.slot = saved.slot;
      this.#bySlot.set(saved.slot, share);
      share.fs.restore(saved.state);
      attached.delete(saved.name);
    }
    // Shares attached now but absent from the snapshot keep free slots.
    for (const share of attached.values()) {
      let slot = 1;
      while (this.#bySlot.has(slot)) slot++;
      share.slot = slot;
      this.#bySlot.set(slot, share);
    }
  }
}

/** A share's inode number as the guest sees it: the slot in the top byte. */
export function tagIno(ino: bigint, slot: number): bigint {
  return (ino & 0x00ff_ffff_ffff_ffffn) | (BigInt(slot) << 56n);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
