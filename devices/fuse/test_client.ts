/**
 * A minimal FUSE client for tests: builds requests byte by byte (as the
 * kernel would, or as a hostile guest might) and decodes replies. Used by
 * the protocol-level tests here and usable by virtio-fs tests.
 *
 * @module
 */

import { FuseServer } from "./server.ts";
import { IN_HEADER_SIZE, Op, OUT_HEADER_SIZE } from "./protocol.ts";

const enc = new TextEncoder();

/** A decoded reply. */
export interface Reply {
  /** 0 or a positive errno. */
  error: number;
  unique: bigint;
  body: Uint8Array;
  dv: DataView;
}

/** Bytes of a NUL-terminated name. */
export function z(s: string | Uint8Array): Uint8Array {
  const b = typeof s === "string" ? enc.encode(s) : s;
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

/** Concatenates byte arrays. */
export function cat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Little-endian struct builder: `le([4, 1], [8, 2n])`. */
export function le(...fields: [number, number | bigint][]): Uint8Array {
  let n = 0;
  for (const [s] of fields) n += s;
  const b = new Uint8Array(n);
  const v = new DataView(b.buffer);
  let o = 0;
  for (const [s, x] of fields) {
    if (s === 8) v.setBigUint64(o, BigInt.asUintN(64, BigInt(x)), true);
    else if (s === 4) v.setUint32(o, Number(x) >>> 0, true);
    else if (s === 2) v.setUint16(o, Number(x), true);
    else v.setUint8(o, Number(x));
    o += s;
  }
  return b;
}

/** Drives a {@link FuseServer} with hand-built requests. */
export class TestClient {
  unique = 1n;
  uid = 0;
  gid = 0;
  constructor(readonly server: FuseServer) {}

  /** Builds a request with header + `args`. */
  request(opcode: number, nodeid: number | bigint, args: Uint8Array = new Uint8Array(0)) {
    const req = new Uint8Array(IN_HEADER_SIZE + args.length);
    const v = new DataView(req.buffer);
    v.setUint32(0, req.length, true);
    v.setUint32(4, opcode, true);
    v.setBigUint64(8, this.unique++, true);
    v.setBigUint64(16, BigInt(nodeid), true);
    v.setUint32(24, this.uid, true);
    v.setUint32(28, this.gid, true);
    v.setUint32(32, 1234, true);
    req.set(args, IN_HEADER_SIZE);
    return req;
  }

  /** Sends raw bytes; returns the decoded reply or null for none. */
  raw(req: Uint8Array): Reply | null {
    const out = this.server.handle(req);
    if (!out) return null;
    const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
    if (v.getUint32(0, true) !== out.length) {
      throw new Error(`reply length field ${v.getUint32(0, true)} != ${out.length}`);
    }
    const body = out.subarray(OUT_HEADER_SIZE);
    return {
      error: 0 - v.getInt32(4, true),
      unique: v.getBigUint64(8, true),
      body,
      dv: new DataView(body.buffer, body.byteOffset, body.byteLength),
    };
  }

  /** Sends a request; returns the reply (throws if there is none). */
  call(opcode: number, nodeid: number | bigint, args?: Uint8Array): Reply {
    const r = this.raw(this.request(opcode, nodeid, args));
    if (!r) throw new Error(`no reply to opcode ${opcode}`);
    return r;
  }

  /** INIT as a 7.`minor` client offering `flags` (+ flags2). */
  init(minor = 37, flags = 0xffffffff, flags2 = 0): Reply {
    return this.call(
      Op.INIT,
      0,
      cat(le([4, 7], [4, minor], [4, 1 << 20], [4, flags], [4, flags2]), new Uint8Array(44)),
    );
  }

  /** LOOKUP; returns [error, nodeid]. */
  lookup(parent: number, name: string | Uint8Array): [number, number] {
    const r = this.call(Op.LOOKUP, parent, z(name));
    return [r.error, r.error ? 0 : Number(r.dv.getBigUint64(0, true))];
  }

  /** Mode (type + permissions) from an entry_out reply. */
  static entryMode(r: Reply): number {
    return r.dv.getUint32(40 + 60, true);
  }

  mkdir(parent: number, name: string, mode = 0o755): Reply {
    return this.call(Op.MKDIR, parent, cat(le([4, mode], [4, 0]), z(name)));
  }

  mknod(parent: number, name: string, mode: number, rdev = 0): Reply {
    return this.call(Op.MKNOD, parent, cat(le([4, mode], [4, rdev], [4, 0], [4, 0]), z(name)));
  }

  symlink(parent: number, name: string, target: string): Reply {
    return this.call(Op.SYMLINK, parent, cat(z(name), z(target)));
  }

  /** CREATE; returns [error, nodeid, fh]. */
  create(parent: number, name: string, flags = 0o102, mode = 0o644): [number, number, number] {
    const r = this.call(Op.CREATE, parent, cat(le([4, flags], [4, mode], [4, 0], [4, 0]), z(name)));
    if (r.error) return [r.error, 0, 0];
    return [0, Number(r.dv.getBigUint64(0, true)), Number(r.dv.getBigUint64(128, true))];
  }

  /** OPEN / OPENDIR; returns [error, fh]. */
  open(nodeid: number, flags = 0, dir = false): [number, number] {
    const r = this.call(dir ? Op.OPENDIR : Op.OPEN, nodeid, le([4, flags], [4, 0]));
    return [r.error, r.error ? 0 : Number(r.dv.getBigUint64(0, true))];
  }

  read(nodeid: number, fh: number, offset: number, size: number): Reply {
    return this.call(
      Op.READ,
      nodeid,
      le([8, fh], [8, offset], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]),
    );
  }

  write(nodeid: number, fh: number, offset: number, data: Uint8Array | string): Reply {
    const d = typeof data === "string" ? enc.encode(data) : data;
    return this.call(
      Op.WRITE,
      nodeid,
      cat(le([8, fh], [8, offset], [4, d.length], [4, 0], [8, 0], [4, 0], [4, 0]), d),
    );
  }

  release(nodeid: number, fh: number, dir = false): Reply {
    return this.call(dir ? Op.RELEASEDIR : Op.RELEASE, nodeid, le([8, fh], [4, 0], [4, 0], [8, 0]));
  }

  /** READDIR(PLUS) → names. */
  readdir(nodeid: number, fh: number, plus = false, size = 65536): [number, string[]] {
    const r = this.call(
      plus ? Op.READDIRPLUS : Op.READDIR,
      nodeid,
      le([8, fh], [8, 0], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]),
    );
    if (r.error) return [r.error, []];
    const names: string[] = [];
    let p = 0;
    const base = plus ? 128 : 0;
    while (p < r.body.length) {
      const nl = r.dv.getUint32(p + base + 16, true);
      names.push(new TextDecoder().decode(r.body.subarray(p + base + 24, p + base + 24 + nl)));
      p += (base + 24 + nl + 7) & ~7;
    }
    return [0, names];
  }

  getattr(nodeid: number): Reply {
    return this.call(Op.GETATTR, nodeid, le([4, 0], [4, 0], [8, 0]));
  }

  unlink(parent: number, name: string): Reply {
    return this.call(Op.UNLINK, parent, z(name));
  }

  rename(olddir: number, oldname: string, newdir: number, newname: string, flags = 0): Reply {
    return this.call(
      Op.RENAME2,
      olddir,
      cat(le([8, newdir], [4, flags], [4, 0]), z(oldname), z(newname)),
    );
  }

  link(nodeid: number, newparent: number, name: string): Reply {
    return this.call(Op.LINK, newparent, cat(le([8, nodeid]), z(name)));
  }

  forget(nodeid: number, n: number): void {
    this.raw(this.request(Op.FORGET, nodeid, le([8, n])));
  }
}
