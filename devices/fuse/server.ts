/**
 * The dispatching FUSE server: decodes one request (in header + arguments),
 * calls the {@link FileSystem}, encodes the reply (out header + payload).
 * Transport-agnostic and synchronous: `/dev/fuse`, virtio-fs and vhost-user
 * all feed it whole requests. It never throws: malformed input (short
 * buffers, bogus lengths, unknown opcodes, unknown node ids or handles)
 * gets an error reply.
 *
 * A request must be VMM-private memory that nobody else changes while it
 * is served — never a view of guest memory: the server and its backend
 * read a name or a length more than once (check, then use). `/dev/fuse`
 * reads requests into a private buffer; the virtio-fs and vhost-user fs
 * adapters copy each request out of guest memory first (`RequestBuffer`).
 * Reply buffers may be guest memory: the server only writes them.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { SysError } from "../../kvm_ffi/libc.ts";
import {
  ATTR_OUT_SIZE,
  DIRENT_NAME_OFFSET,
  direntAlign,
  DIRENTPLUS_NAME_OFFSET,
  ENTRY_OUT_SIZE,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR_VERSION,
  IN_HEADER_SIZE,
  InitFlag,
  Op,
  OUT_HEADER_SIZE,
} from "./protocol.ts";
import {
  type Attr,
  type BackingFiles,
  type Context,
  type DirSink,
  type Entry,
  FileSystem,
  FuseError,
  type SetattrIn,
} from "./filesystem.ts";

/** Options of a {@link FuseServer}. */
export interface FuseServerOptions {
  /** Largest WRITE payload (and READ reply) offered to the client; default 1 MiB. */
  maxWrite?: number;
  /** Called with every unexpected (non-FuseError) exception, for debugging; default: ignore. */
  onError?: (error: unknown, opcode: number) => void;
  /** The transport's own path for large READ replies (the `/dev/fuse` loop's splice). */
  readSender?: ReadSender;
  /**
   * The transport's backing-file registry: with it the server offers FUSE_PASSTHROUGH
   * (`/dev/fuse` only), so a backend may let the client read and write open files itself.
   */
  backing?: BackingFiles;
}

/**
 * A transport that sends large READ replies itself, straight from the host file
 * (`dev_fuse_splice.ts`), instead of taking them as bytes from {@link FuseServer.handleInto}.
 */
export interface ReadSender {
  /** The smallest READ it takes. */
  readonly minSize: number;
  /**
   * Replies to the current READ (`unique` as two words) with up to `size` bytes of
   * host fd `fd` at `offset`; returns the bytes sent, or -1 when it sent nothing and
   * the server should reply the ordinary way.
   */
  send(uniqueLo: number, uniqueHi: number, fd: number, offset: bigint, size: number): number;
}

/** The negotiated protocol, part of {@link FuseServerState}. */
export interface FuseProto {
  major: number;
  minor: number;
  /** Agreed init flags (flags | flags2 << 32) as a decimal string. */
  flags: string;
  maxWrite: number;
}

/** What {@link FuseServer.save} returns: plain JSON-able data. */
export interface FuseServerState {
  version: 1;
  /** Null before INIT. */
  proto: FuseProto | null;
  /** The backend's own state ({@link FileSystem.save}). */
  fs: unknown;
}

/**
 * Flags this server asks for when the client offers them.
 *
 * DO_READDIRPLUS without READDIRPLUS_AUTO: every READDIR is a READDIRPLUS, so the
 * kernel gets each entry's attributes with the listing. With AUTO it asks for them
 * only in the first chunk of a directory (fs/fuse/readdir.c fuse_use_readdirplus),
 * and a tree walk (find, ls -l) then sends one LOOKUP or GETATTR per later entry:
 * measured here, `find` over 10 000 freshly written files sent 10 000 GETATTRs
 * (a WRITE invalidates the size) and `find /usr` 29 000 LOOKUPs; without AUTO
 * two and ~100.
 */
const WANTED = InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES |
  InitFlag.AUTO_INVAL_DATA | InitFlag.DO_READDIRPLUS |
  InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS |
  InitFlag.ASYNC_DIO;

const PAGE = 4096;
const TWO32 = 2 ** 32;
/** What {@link FuseServer.#op} returns for "reply with the error in #errno". */
const FAILED = -2;

/**
 * Serves one FUSE connection. Feed it requests with {@link handle},
 * {@link handleInto} or {@link handleV}; send back whatever they return.
 */
export class FuseServer {
  /** The backend. */
  readonly fs: FileSystem;
  #maxWrite: number;
  #onError: (error: unknown, opcode: number) => void;
  #readSender: ReadSender | null;
  #backing: BackingFiles | null;
  #proto: FuseProto | null = null;
  #flags = 0n;
  #scratch: Uint8Array<ArrayBuffer>;
  #ctx: Context = { uid: 0, gid: 0, pid: 0 };
  /** The errno of a failure a back-end returned rather than threw ({@link FAILED}). */
  #errno = 0;
  /** A reply header built apart from the payload (READ into reply segments). */
  #hdr = new Uint8Array(OUT_HEADER_SIZE);
  /** The current request's `unique`, low and high words. */
  #uniqueLo = 0;
  #uniqueHi = 0;
  /** The current request's arguments (one object, reset per request). */
  #args = new Args();
  /** `[out]` for {@link handleInto}, reused. */
  #one: Uint8Array[] = [new Uint8Array(0)];

  constructor(fs: FileSystem, options: FuseServerOptions = {}) {
    this.fs = fs;
    const mw = options.maxWrite ?? 1 << 20;
    if (!Number.isInteger(mw) || mw < PAGE || mw > 16 << 20) {
      throw new RangeError(`FuseServer: maxWrite ${mw} is not an integer in 4 KiB..16 MiB`);
    }
    this.#maxWrite = mw & ~(PAGE - 1);
    this.#onError = options.onError ?? (() => {});
    this.#readSender = options.readSender ?? null;
    this.#backing = options.backing ?? null;
    this.#scratch = new Uint8Array(OUT_HEADER_SIZE + this.#maxWrite + PAGE);
  }

  /** The negotiated protocol, or null before INIT. */
  get proto(): FuseProto | null {
    return this.#proto;
  }

  /**
   * Size a reply buffer should have so any reply fits: out header plus the
   * largest READ / READDIR / xattr payload.
   */
  get replyBufferSize(): number {
    return this.#scratch.length;
  }

  /** Size a request buffer should have (the `/dev/fuse` read size): header, args, max WRITE. */
  get requestBufferSize(): number {
    return this.#maxWrite + PAGE;
  }

  /**
   * Handles one whole request; returns a fresh reply buffer, or null when
   * the opcode takes no reply (FORGET, BATCH_FORGET, INTERRUPT).
   */
  handle(request: Uint8Array): Uint8Array | null {
    const n = this.handleInto(request, this.#scratch);
    return n === 0 ? null : this.#scratch.slice(0, n);
  }

  /**
   * Handles one whole request, writing the reply into `out` (e.g. a guest
   * memory view); returns the reply length, 0 for no reply. READ and
   * READDIR payloads are clipped to what fits in `out`; other replies that
   * do not fit become an ERANGE error reply.
   */
  handleInto(request: Uint8Array, out: Uint8Array): number {
    return this.handleRead(request, request.length, out);
  }

  /**
   * {@link handleInto} for the request in `req[0..size)` (the `/dev/fuse` loops pass
   * their whole read buffer and the length read: no view per request).
   */
  handleRead(req: Uint8Array, size: number, out: Uint8Array): number {
    this.#one[0] = out;
    return this.#dispatch(req, this.#one, out, Math.min(size, req.length));
  }

  /**
   * Like {@link handleInto} with the reply scattered over `iov` segments in
   * order (a virtqueue's device-writable descriptors). READ data goes
   * straight into the segments (preadv); other replies are built in a
   * scratch buffer and copied. Returns the total reply length, 0 for none.
   */
  handleV(request: Uint8Array, iov: Uint8Array[]): number {
    if (iov.length === 1) return this.#dispatch(request, iov, iov[0], request.length);
    return this.#dispatch(request, iov, null, request.length);
  }

  /** Serialisable state: the negotiated protocol and the backend's node and handle tables. */
  save(): FuseServerState {
    return {
      version: 1,
      proto: this.#proto ? { ...this.#proto } : null,
      fs: this.fs.save(),
    };
  }

  /**
   * Takes the protocol another server of the same connection negotiated: a second
   * `/dev/fuse` reader over a shared back-end never sees INIT.
   */
  useProto(proto: FuseProto): void {
    this.#proto = { ...proto };
    this.#flags = BigInt(proto.flags);
    if (this.#backing && (this.#flags & InitFlag.PASSTHROUGH)) this.fs.useBacking(this.#backing);
  }

  /** Restores {@link save}'s result into a fresh server (no INIT needed afterwards). */
  restore(state: FuseServerState): void {
    if (state?.version !== 1) throw new Error(`FuseServer.restore: unknown state version`);
    this.#proto = state.proto ? { ...state.proto } : null;
    this.#flags = state.proto ? BigInt(state.proto.flags) : 0n;
    this.fs.restore(state.fs);
  }

  // ---- dispatch ------------------------------------------------------------

  /** `out` is the contiguous destination, or null to build in scratch and scatter into `iov`. */
  #dispatch(req: Uint8Array, iov: Uint8Array[], out: Uint8Array | null, size: number): number {
    let opcode = 0;
    const o = out ?? this.#scratch;
    // The request's `unique`, as two words (no BigInt per request); 0 until read.
    this.#uniqueLo = this.#uniqueHi = 0;
    try {
      // A view of the whole buffer (reused while requests arrive in the same one, as
      // the /dev/fuse loop's do); `at` is where this request starts in it.
      const dv = viewOf(req.buffer);
      const at = req.byteOffset;
      if (size < IN_HEADER_SIZE) {
        if (size >= 16) {
          this.#uniqueLo = dv.getUint32(at + 8, true);
          this.#uniqueHi = dv.getUint32(at + 12, true);
        }
        throw new FuseError(
          Errno.EINVAL,
          `request of ${size} bytes is shorter than a header`,
        );
      }
      const len = dv.getUint32(at, true);
      opcode = dv.getUint32(at + 4, true);
      this.#uniqueLo = dv.getUint32(at + 8, true);
      this.#uniqueHi = dv.getUint32(at + 12, true);
      if (len < IN_HEADER_SIZE || len > size) {
        throw new FuseError(Errno.EINVAL, `header length ${len} for a ${size}-byte request`);
      }
      const nodeid = readId(dv, at + 16);
      const ctx = this.#ctx;
      ctx.uid = dv.getUint32(at + 24, true);
      ctx.gid = dv.getUint32(at + 28, true);
      ctx.pid = dv.getUint32(at + 32, true);
      // 7.38 extensions (security context, supplementary groups) trail the arguments;
      // none is negotiated, so they are only cut off.
      const ext = dv.getUint16(at + 36, true) * 8;
      if (ext > len - IN_HEADER_SIZE) {
        throw new FuseError(Errno.EINVAL, `total_extlen ${ext} exceeds the request`);
      }
      const args = this.#args.reset(req, dv, at, len - ext);
      if (this.#proto === null && opcode !== Op.INIT) {
        throw new FuseError(Errno.EIO, `opcode ${opcode} before INIT`);
      }
      if (out === null && opcode === Op.READ) {
        return this.#readV(ctx, nodeid, args, iov);
      }
      const n = this.#op(opcode, ctx, nodeid, args, o);
      if (n === FAILED) return this.#errorReply(opcode, this.#errno, iov, out);
      if (n < 0) return 0;
      this.#header(o, OUT_HEADER_SIZE + n, 0);
      if (out === null) return scatter(o, OUT_HEADER_SIZE + n, iov);
      return OUT_HEADER_SIZE + n;
    } catch (e) {
      let errno: number = Errno.EIO;
      if (e instanceof FuseError) errno = e.errno;
      else if (e instanceof SysError) errno = e.errno;
      else if (e instanceof RangeError) errno = Errno.ERANGE;
      else this.#onError(e, opcode);
      return this.#errorReply(opcode, errno, iov, out);
    }
  }

  /** Writes the out header (this request's `unique`) at the start of `o`. */
  #header(o: Uint8Array, len: number, error: number): void {
    const v = dvOf(o);
    v.setUint32(0, len, true);
    v.setInt32(4, error, true);
    v.setUint32(8, this.#uniqueLo, true);
    v.setUint32(12, this.#uniqueHi, true);
  }

  /** An error reply (none for the opcodes that take no reply); returns its length. */
  #errorReply(
    opcode: number,
    errno: number,
    iov: Uint8Array[],
    out: Uint8Array | null,
  ): number {
    if (opcode === Op.FORGET || opcode === Op.BATCH_FORGET || opcode === Op.INTERRUPT) return 0;
    const o = out ?? this.#scratch;
    const hdr = o.length >= OUT_HEADER_SIZE ? o : new Uint8Array(OUT_HEADER_SIZE);
    this.#header(hdr, OUT_HEADER_SIZE, -errno);
    if (out === null || hdr !== o) return scatter(hdr, OUT_HEADER_SIZE, iov);
    return OUT_HEADER_SIZE;
  }

  /** Records a failure a back-end returned; {@link #dispatch} replies with it. */
  #failed(e: FuseError): number {
    this.#errno = e.errno;
    return FAILED;
  }

  /**
   * Runs one opcode; writes the payload at `o[16..]`; returns its length, -1 for no
   * reply, {@link FAILED} for an error a back-end returned.
   */
  #op(op: number, ctx: Context, nodeid: number, a: Args, o: Uint8Array): number {
    const fs = this.fs;
    switch (op) {
      case Op.INIT:
        return this.#init(a, o);
      case Op.LOOKUP: {
        const e = fs.lookup(ctx, nodeid, a.name());
        return e instanceof FuseError ? this.#failed(e) : putEntry(o, e);
      }
      case Op.FORGET:
        fs.forget(nodeid, a.u64n(0));
        return -1;
      case Op.BATCH_FORGET: {
        const count = a.u32(0);
        a.need(8 + count * 16);
        for (let i = 0; i < count; i++) {
          fs.forget(a.id(8 + i * 16), a.u64n(8 + i * 16 + 8));
        }
        return -1;
      }
      case Op.GETATTR: {
        const flags = a.u32(0);
        const fh = flags & FUSE_GETATTR_FH ? a.id(8) : null;
        a.need(16);
        const r = fs.getattr(ctx, nodeid, fh);
        return putAttrOut(o, r.attr, r.timeout);
      }
      case Op.SETATTR: {
        a.need(88);
        const s: SetattrIn = {
          valid: a.u32(0),
          fh: a.id(8),
          size: a.u64(16),
          atime: a.u64(32),
          mtime: a.u64(40),
          atimensec: a.u32(56),
          mtimensec: a.u32(60),
          mode: a.u32(68),
          uid: a.u32(76),
          gid: a.u32(80),
        };
        const r = fs.setattr(ctx, nodeid, s);
        return putAttrOut(o, r.attr, r.timeout);
      }
      case Op.READLINK: {
        const target = fs.readlink(ctx, nodeid);
        return putBytes(o, target);
      }
      case Op.SYMLINK: {
        const name = a.name();
        const target = a.string(a.pos);
        return putEntry(o, fs.symlink(ctx, nodeid, name, target));
      }
      case Op.MKNOD: {
        a.need(16);
        const e = fs.mknod(ctx, nodeid, a.nameAt(16), a.u32(0), a.u32(4), a.u32(8));
        return putEntry(o, e);
      }
      case Op.MKDIR: {
        a.need(8);
        return putEntry(o, fs.mkdir(ctx, nodeid, a.nameAt(8), a.u32(0), a.u32(4)));
      }
      case Op.UNLINK:
        fs.unlink(ctx, nodeid, a.name());
        return 0;
      case Op.RMDIR:
        fs.rmdir(ctx, nodeid, a.name());
        return 0;
      case Op.RENAME:
      case Op.RENAME2: {
        const fixed = op === Op.RENAME ? 8 : 16;
        a.need(fixed);
        const newdir = a.id(0);
        const flags = op === Op.RENAME ? 0 : a.u32(8);
        const oldname = a.nameAt(fixed);
        const newname = a.string(a.pos);
        fs.rename(ctx, nodeid, oldname, newdir, newname, flags);
        return 0;
      }
      case Op.LINK: {
        a.need(8);
        return putEntry(o, fs.link(ctx, a.id(0), nodeid, a.nameAt(8)));
      }
      case Op.OPEN:
      case Op.OPENDIR: {
        a.need(8);
        const r = op === Op.OPEN
          ? fs.open(ctx, nodeid, a.u32(0))
          : fs.opendir(ctx, nodeid, a.u32(0));
        return putOpenOut(o, 0, r.fh, r.openFlags, r.backingId ?? 0);
      }
      case Op.READ: {
        a.need(40);
        const size = Math.min(a.u32(16), o.length - OUT_HEADER_SIZE, this.#maxWrite);
        const fh = a.id(0), offset = a.u64(8);
        const rs = this.#readSender;
        if (rs !== null && size >= rs.minSize) {
          const lo = this.#uniqueLo, hi = this.#uniqueHi;
          const sent = fs.withReadFd(ctx, nodeid, fh, (fd) => rs.send(lo, hi, fd, offset, size));
          if (sent !== null && sent >= 0) return -1; // replied
        }
        const dst = o.subarray(OUT_HEADER_SIZE, OUT_HEADER_SIZE + size);
        return fs.read(ctx, nodeid, fh, offset, [dst]);
      }
      case Op.WRITE: {
        a.need(40);
        const size = a.u32(16);
        a.need(40 + size);
        const data = a.bytes(40, size);
        const n = fs.write(ctx, nodeid, a.id(0), a.u64(8), data, a.u32(20));
        need(o, 8);
        const v = dvOf(o);
        v.setUint32(16, n, true);
        v.setUint32(20, 0, true);
        return 8;
      }
      case Op.STATFS: {
        const s = fs.statfs(ctx, nodeid);
        need(o, 80);
        const v = dvOf(o);
        v.setBigUint64(16, s.blocks, true);
        v.setBigUint64(24, s.bfree, true);
        v.setBigUint64(32, s.bavail, true);
        v.setBigUint64(40, s.files, true);
        v.setBigUint64(48, s.ffree, true);
        v.setUint32(56, s.bsize, true);
        v.setUint32(60, s.namelen, true);
        v.setUint32(64, s.frsize, true);
        o.fill(0, 68, 96);
        return 80;
      }
      case Op.RELEASE:
      case Op.RELEASEDIR: {
        a.need(24);
        if (op === Op.RELEASE) fs.release(ctx, nodeid, a.id(0));
        else fs.releasedir(ctx, nodeid, a.id(0));
        return 0;
      }
      case Op.FSYNC:
      case Op.FSYNCDIR: {
        a.need(16);
        const datasync = (a.u32(8) & FUSE_FSYNC_FDATASYNC) !== 0;
        if (op === Op.FSYNC) fs.fsync(ctx, nodeid, a.id(0), datasync);
        else fs.fsyncdir(ctx, nodeid, a.id(0), datasync);
        return 0;
      }
      case Op.SETXATTR: {
        const fixed = this.#flags & InitFlag.SETXATTR_EXT ? 16 : 8;
        a.need(fixed);
        const size = a.u32(0);
        const name = a.nameAt(fixed);
        a.need(a.pos - IN_HEADER_SIZE + size);
        const value = a.bytes(a.pos - IN_HEADER_SIZE, size);
        fs.setxattr(ctx, nodeid, name, value, a.u32(4));
        return 0;
      }
      case Op.GETXATTR:
      case Op.LISTXATTR: {
        a.need(8);
        const size = a.u32(0);
        const value = op === Op.GETXATTR
          ? fs.getxattr(ctx, nodeid, a.nameAt(8), size)
          : fs.listxattr(ctx, nodeid, size);
        if (value instanceof FuseError) return this.#failed(value);
        const len = typeof value === "number" ? value : value.length;
        if (size === 0) {
          need(o, 8);
          const v = dvOf(o);
          v.setUint32(16, len, true);
          v.setUint32(20, 0, true);
          return 8;
        }
        if (len > size) throw new FuseError(Errno.ERANGE);
        if (typeof value === "number") {
          throw new FuseError(Errno.EIO, "xattr backend returned a length for a value request");
        }
        return putBytes(o, value);
      }
      case Op.REMOVEXATTR:
        fs.removexattr(ctx, nodeid, a.name());
        return 0;
      case Op.FLUSH:
        a.need(24);
        fs.flush(ctx, nodeid, a.id(0));
        return 0;
      case Op.READDIR:
      case Op.READDIRPLUS: {
        a.need(40);
        const size = Math.min(a.u32(16), o.length - OUT_HEADER_SIZE);
        const sink = new ReplyDirSink(o, size, op === Op.READDIRPLUS);
        fs.readdir(ctx, nodeid, a.id(0), a.u64(8), sink);
        return sink.used;
      }
      case Op.ACCESS:
        a.need(8);
        fs.access(ctx, nodeid, a.u32(0));
        return 0;
      case Op.CREATE: {
        a.need(16);
        const r = fs.create(ctx, nodeid, a.nameAt(16), a.u32(4), a.u32(0), a.u32(8));
        const n = putEntry(o, r.entry);
        return n + putOpenOut(o, n, r.fh, r.openFlags, r.backingId ?? 0);
      }
      case Op.INTERRUPT:
        // Requests are answered synchronously, so there is never one in flight to interrupt.
        return -1;
      case Op.DESTROY:
        fs.useBacking(null);
        fs.destroy();
        this.#proto = null;
        this.#flags = 0n;
        return 0;
      case Op.FALLOCATE:
        a.need(32);
        fs.fallocate(ctx, nodeid, a.id(0), a.u64(8), a.u64(16), a.u32(24));
        return 0;
      case Op.LSEEK: {
        a.need(24);
        const off = fs.lseek(ctx, nodeid, a.id(0), a.u64(8), a.u32(16));
        need(o, 8);
        dvOf(o).setBigUint64(16, off, true);
        return 8;
      }
      case Op.COPY_FILE_RANGE: {
        a.need(56);
        const n = fs.copyFileRange(
          ctx,
          nodeid,
          a.id(0),
          a.u64(8),
          a.id(16),
          a.id(24),
          a.u64(32),
          a.u64(40),
          Number(a.u64(48) & 0xffffffffn),
        );
        need(o, 8);
        const v = dvOf(o);
        v.setUint32(16, n, true);
        v.setUint32(20, 0, true);
        return 8;
      }
      default:
        throw new FuseError(Errno.ENOSYS, `opcode ${op}`);
    }
  }

  #init(a: Args, o: Uint8Array): number {
    a.need(16);
    const major = a.u32(0);
    const minor = a.u32(4);
    const maxReadahead = a.u32(8);
    let flags = BigInt(a.u32(12));
    if (major < FUSE_KERNEL_VERSION) throw new FuseError(Errno.EPROTO, `FUSE major ${major}`);
    need(o, 64);
    const v = dvOf(o);
    o.fill(0, 16, 16 + 64);
    if (major > FUSE_KERNEL_VERSION) {
      // The client retries INIT with our major (fuse.h: "reply with the major only").
      v.setUint32(16, FUSE_KERNEL_VERSION, true);
      v.setUint32(20, FUSE_KERNEL_MINOR_VERSION, true);
      return 8;
    }
    if (minor < FUSE_MIN_MINOR_VERSION) {
      throw new FuseError(
        Errno.EPROTO,
        `FUSE 7.${minor} is older than 7.${FUSE_MIN_MINOR_VERSION}`,
      );
    }
    if (minor >= 36 && (flags & InitFlag.INIT_EXT) && a.len >= 20) {
      flags |= BigInt(a.u32(16)) << 32n;
    }
    const agreedMinor = Math.min(minor, FUSE_KERNEL_MINOR_VERSION);
    let want = flags & WANTED;
    if (agreedMinor >= 36 && (flags & InitFlag.INIT_EXT)) {
      want |= InitFlag.INIT_EXT;
      // Passthrough (fs/fuse/passthrough.c) only where the transport registers backing files.
      if (this.#backing) want |= flags & InitFlag.PASSTHROUGH;
    }
    const maxWrite = want & InitFlag.MAX_PAGES
      ? this.#maxWrite
      : Math.min(this.#maxWrite, 32 * PAGE);
    v.setUint32(16, FUSE_KERNEL_VERSION, true);
    v.setUint32(20, agreedMinor, true);
    v.setUint32(24, Math.min(maxReadahead, this.#maxWrite), true);
    v.setUint32(28, Number(want & 0xffffffffn), true);
    v.setUint16(32, 64, true); // max_background
    v.setUint16(34, 48, true); // congestion_threshold
    v.setUint32(36, maxWrite, true);
    v.setUint32(40, 1, true); // time_gran: nanoseconds
    v.setUint16(44, maxWrite / PAGE, true); // max_pages
    v.setUint32(48, Number(want >> 32n), true);
    // max_stack_depth: backing files must be on a file system that stacks on nothing
    // (an overlayfs host directory cannot back files: BACKING_OPEN fails, the file is
    // served the ordinary way), so file systems can still stack on this mount.
    if (want & InitFlag.PASSTHROUGH) v.setUint32(52, 1, true);
    this.#flags = want;
    this.#proto = { major: FUSE_KERNEL_VERSION, minor: agreedMinor, flags: String(want), maxWrite };
    this.fs.init(this.#ctx);
    this.fs.useBacking(want & InitFlag.PASSTHROUGH ? this.#backing : null);
    // fuse.h: clients before 7.23 expect the 24-byte init_out.
    return agreedMinor < 23 ? 24 : 64;
  }

  /** READ scattered into `iov` (header in the first 16 bytes). */
  #readV(ctx: Context, nodeid: number, a: Args, iov: Uint8Array[]): number {
    a.need(40);
    let room = -OUT_HEADER_SIZE;
    for (const s of iov) room += s.length;
    if (room < 0) throw new FuseError(Errno.ERANGE, "reply segments shorter than a header");
    let want = Math.min(a.u32(16), room, this.#maxWrite);
    const dst: Uint8Array[] = [];
    let skip = OUT_HEADER_SIZE;
    for (const s of iov) {
      if (want === 0) break;
      if (skip >= s.length) {
        skip -= s.length;
        continue;
      }
      const part = s.subarray(skip, skip + Math.min(want, s.length - skip));
      skip = 0;
      want -= part.length;
      dst.push(part);
    }
    const n = dst.length ? this.fs.read(ctx, nodeid, a.id(0), a.u64(8), dst) : 0;
    const hdr = this.#hdr;
    this.#header(hdr, OUT_HEADER_SIZE + n, 0);
    scatter(hdr, OUT_HEADER_SIZE, iov);
    return OUT_HEADER_SIZE + n;
  }
}

/**
 * Request arguments after the in header: bounds-checked little-endian reads.
 * Offsets given to the readers are relative to the arguments; {@link pos} and
 * {@link string}'s `start` are relative to the request.
 */
class Args {
  req: Uint8Array = new Uint8Array(0);
  /** A view of the request's whole buffer; the request starts at {@link at} in it. */
  dv: DataView = new DataView(new ArrayBuffer(0));
  at = 0;
  /** Where the arguments start in the request. */
  readonly base = IN_HEADER_SIZE;
  /** Absolute offset (in the request) just past the last string read. */
  pos = IN_HEADER_SIZE;
  len = 0;

  /** Points at the arguments of `req` (which starts at `at` in `dv`), ending at `end`. */
  reset(req: Uint8Array, dv: DataView, at: number, end: number): this {
    this.req = req;
    this.dv = dv;
    this.at = at;
    this.len = end - IN_HEADER_SIZE;
    this.pos = IN_HEADER_SIZE;
    return this;
  }
  need(n: number): void {
    if (n > this.len) {
      throw new FuseError(Errno.EINVAL, `arguments of ${this.len} bytes, need ${n}`);
    }
  }
  u32(off: number): number {
    this.need(off + 4);
    return this.dv.getUint32(this.at + this.base + off, true);
  }
  u64(off: number): bigint {
    this.need(off + 8);
    return this.dv.getBigUint64(this.at + this.base + off, true);
  }
  /** A u64 count as a number (saturating above 2^53). */
  u64n(off: number): number {
    this.need(off + 8);
    return readId(this.dv, this.at + this.base + off);
  }
  id(off: number): number {
    this.need(off + 8);
    return readId(this.dv, this.at + this.base + off);
  }
  bytes(off: number, n: number): Uint8Array {
    this.need(off + n);
    return this.req.subarray(this.base + off, this.base + off + n);
  }
  /** The NUL-terminated name at the start of the arguments. */
  name(): Uint8Array {
    return this.string(this.base);
  }
  /** The NUL-terminated name at relative offset `off`. */
  nameAt(off: number): Uint8Array {
    this.need(off);
    return this.string(this.base + off);
  }
  /** NUL-terminated bytes at absolute `start`; advances {@link pos}. */
  string(start: number): Uint8Array {
    const end = this.base + this.len;
    const nul = start > end ? -1 : this.req.indexOf(0, start);
    if (nul < 0 || nul >= end) throw new FuseError(Errno.EINVAL, "unterminated name");
    this.pos = nul + 1;
    return this.req.subarray(start, nul);
  }
}

/** Node ids and handles: u64 on the wire, JS numbers here (ids above 2^53 never exist). */
function readId(dv: DataView, off: number): number {
  const lo = dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  return hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * TWO32 + lo;
}

/** Writes id `n` (a non-negative safe integer) as a u64 in two words: no BigInt per reply. */
function putId(v: DataView, off: number, n: number): void {
  v.setUint32(off, n >>> 0, true);
  v.setUint32(off + 4, Math.floor(n / TWO32), true);
}

let lastBuffer: ArrayBufferLike | null = null;
let lastView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

/** A DataView of a whole buffer; the last one is reused (a loop's request buffer). */
function viewOf(b: ArrayBufferLike): DataView<ArrayBufferLike> {
  if (b !== lastBuffer || lastView.byteLength !== b.byteLength) {
    lastView = new DataView(b);
    lastBuffer = b;
  }
  return lastView;
}

let lastOut: Uint8Array | null = null;
let lastOutView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

/** A DataView of exactly `o`; the last one is reused (a loop's reply buffer). */
function dvOf(o: Uint8Array): DataView<ArrayBufferLike> {
  if (o !== lastOut) {
    lastOutView = new DataView(o.buffer, o.byteOffset, o.byteLength);
    lastOut = o;
  }
  return lastOutView;
}

function need(o: Uint8Array, payload: number): void {
  if (o.length < OUT_HEADER_SIZE + payload) {
    throw new FuseError(Errno.ERANGE, `reply of ${payload} bytes does not fit`);
  }
}

function scatter(src: Uint8Array, len: number, iov: Uint8Array[]): number {
  let done = 0;
  for (const s of iov) {
    if (done >= len) break;
    const n = Math.min(s.length, len - done);
    s.set(src.subarray(done, done + n));
    done += n;
  }
  return done < len ? OUT_HEADER_SIZE : len;
}

function putBytes(o: Uint8Array, b: Uint8Array): number {
  need(o, b.length);
  o.set(b, OUT_HEADER_SIZE);
  return b.length;
}

function putOpenOut(o: Uint8Array, at: number, fh: number, flags: number, backing: number): number {
  need(o, at + 16);
  const v = dvOf(o);
  const p = OUT_HEADER_SIZE + at;
  putId(v, p, fh);
  v.setUint32(p + 8, flags, true);
  v.setInt32(p + 12, backing, true);
  return 16;
}

let lastTimeout = NaN;
let lastSplit: [bigint, number] = [0n, 0];

/** Seconds (float) → [whole seconds, nanoseconds]; the last result is reused (one timeout per share). */
function splitTimeout(t: number): [bigint, number] {
  if (t === lastTimeout) return lastSplit;
  const s = Math.max(0, Math.floor(t));
  lastSplit = [BigInt(s), Math.floor((t - s) * 1e9)];
  lastTimeout = t;
  return lastSplit;
}

function writeAttr(v: DataView, p: number, a: Attr): void {
  v.setBigUint64(p, a.ino, true);
  v.setBigUint64(p + 8, a.size, true);
  v.setBigUint64(p + 16, a.blocks, true);
  // Signed seconds: the same 64 bits as the u64 fields, with no BigInt.asUintN allocation.
  v.setBigInt64(p + 24, a.atime, true);
  v.setBigInt64(p + 32, a.mtime, true);
  v.setBigInt64(p + 40, a.ctime, true);
  v.setUint32(p + 48, a.atimensec, true);
  v.setUint32(p + 52, a.mtimensec, true);
  v.setUint32(p + 56, a.ctimensec, true);
  v.setUint32(p + 60, a.mode, true);
  v.setUint32(p + 64, a.nlink, true);
  v.setUint32(p + 68, a.uid, true);
  v.setUint32(p + 72, a.gid, true);
  v.setUint32(p + 76, a.rdev, true);
  v.setUint32(p + 80, a.blksize, true);
  v.setUint32(p + 84, 0, true);
}

function writeEntry(v: DataView, p: number, e: Entry): void {
  const [es, ens] = splitTimeout(e.entryTimeout);
  const [as, ans] = splitTimeout(e.attrTimeout);
  putId(v, p, e.nodeid);
  putId(v, p + 8, e.generation);
  v.setBigUint64(p + 16, es, true);
  v.setBigUint64(p + 24, as, true);
  v.setUint32(p + 32, ens, true);
  v.setUint32(p + 36, ans, true);
  writeAttr(v, p + 40, e.attr);
}

function putEntry(o: Uint8Array, e: Entry): number {
  need(o, ENTRY_OUT_SIZE);
  writeEntry(dvOf(o), OUT_HEADER_SIZE, e);
  return ENTRY_OUT_SIZE;
}

function putAttrOut(o: Uint8Array, a: Attr, timeout: number): number {
  need(o, ATTR_OUT_SIZE);
  const v = dvOf(o);
  const [s, ns] = splitTimeout(timeout);
  v.setBigUint64(16, s, true);
  v.setUint32(24, ns, true);
  v.setUint32(28, 0, true);
  writeAttr(v, 32, a);
  return ATTR_OUT_SIZE;
}

/** Packs `fuse_dirent` / `fuse_direntplus` records into the reply. */
class ReplyDirSink implements DirSink {
  used = 0;
  #v: DataView;
  constructor(readonly o: Uint8Array, readonly size: number, readonly plus: boolean) {
    this.#v = dvOf(o);
  }
  fits(nameLen: number): boolean {
    const rec = direntAlign((this.plus ? DIRENTPLUS_NAME_OFFSET : DIRENT_NAME_OFFSET) + nameLen);
    return this.used + rec <= this.size;
  }
  add(name: Uint8Array, ino: bigint, type: number, off: bigint, entry: Entry | null): void {
    if (!this.fits(name.length)) throw new FuseError(Errno.EIO, "dirent added without fits()");
    let p = OUT_HEADER_SIZE + this.used;
    const v = this.#v;
    const start = p;
    if (this.plus) {
      if (entry) writeEntry(v, p, entry);
      else this.o.fill(0, p, p + ENTRY_OUT_SIZE);
      p += ENTRY_OUT_SIZE;
    }
    v.setBigUint64(p, ino, true);
    v.setBigUint64(p + 8, off, true);
    v.setUint32(p + 16, name.length, true);
    v.setUint32(p + 20, type, true);
    this.o.set(name, p + DIRENT_NAME_OFFSET);
    const end = p + DIRENT_NAME_OFFSET + name.length;
    const rec = direntAlign(end - start);
    this.o.fill(0, end, start + rec);
    this.used += rec;
  }
}
