/**
 * L0 tests of the dispatching server: INIT negotiation with the clients
 * skiff meets (the Debian 6.1 guest speaks 7.37, this host's kernel 7.45),
 * malformed and random requests answered with error replies (never a
 * throw), the ENOSYS defaults of {@link FileSystem}, and save/restore of the
 * node table and open handles into a fresh server.
 */

import { deepStrictEqual, notStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Errno } from "../../kvm_ffi/errno.ts";
import { FileSystem } from "./filesystem.ts";
import { PassthroughFs } from "./passthrough.ts";
import {
  FOPEN,
  FUSE_KERNEL_MINOR_VERSION,
  IN_HEADER_SIZE,
  InitFlag,
  Op,
  OUT_HEADER_SIZE,
} from "./protocol.ts";
import { FuseServer } from "./server.ts";
import { cat, le, TestClient, z } from "./test_client.ts";

/** Offsets in the fuse_init_out body (after the out header). */
const INIT_OUT = { major: 0, minor: 4, flags: 12, maxWrite: 20, maxPages: 28, flags2: 32 };

interface Share extends Disposable {
  dir: string;
  fs: PassthroughFs;
  c: TestClient;
}

function share(readOnly = false): Share {
  const dir = Deno.makeTempDirSync({ prefix: "skiff-fuse-server-" });
  Deno.writeTextFileSync(`${dir}/f`, "hello world");
  Deno.mkdirSync(`${dir}/d`);
  Deno.writeTextFileSync(`${dir}/d/g`, "gee");
  const fs = new PassthroughFs(dir, { readOnly });
  return {
    dir,
    fs,
    c: new TestClient(new FuseServer(fs)),
    [Symbol.dispose]() {
      fs.close();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

function bits(flags: number, flags2 = 0): bigint {
  return BigInt(flags >>> 0) | (BigInt(flags2 >>> 0) << 32n);
}

Deno.test("fuse server: INIT from a 7.37 client (Debian 6.1 guest)", () => {
  using s = share();
  const r = s.c.init(37, 0xffffffff, 0xffffffff);
  strictEqual(r.error, 0);
  strictEqual(r.body.length, 64, "7.23+ clients get the 64-byte fuse_init_out");
  strictEqual(r.dv.getUint32(INIT_OUT.major, true), 7);
  strictEqual(r.dv.getUint32(INIT_OUT.minor, true), 37);
  const agreed = bits(r.dv.getUint32(INIT_OUT.flags, true), r.dv.getUint32(INIT_OUT.flags2, true));
  for (const f of ["ASYNC_READ", "DO_READDIRPLUS", "MAX_PAGES", "INIT_EXT"] as const) {
    ok(agreed & InitFlag[f], `${f} agreed`);
  }
  // Offered but not wanted: the server keeps the page cache coherent with the host.
  strictEqual(agreed & InitFlag.WRITEBACK_CACHE, 0n);
  strictEqual(agreed & InitFlag.SECURITY_CTX, 0n);
  strictEqual(r.dv.getUint32(INIT_OUT.maxWrite, true), 1 << 20);
  strictEqual(r.dv.getUint16(INIT_OUT.maxPages, true), 256);
  deepStrictEqual(s.c.server.proto, {
    major: 7,
    minor: 37,
    flags: String(agreed),
    maxWrite: 1 << 20,
  });
  strictEqual(s.c.lookup(1, "f")[0], 0);
});

Deno.test("fuse server: INIT from a 7.45 client (this host's kernel) gets the server's minor", () => {
  using s = share();
  const offered = Number(InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS);
  const r = s.c.init(45, offered, 0xffffffff); // flags2 without INIT_EXT: ignored
  strictEqual(r.error, 0);
  strictEqual(r.dv.getUint32(INIT_OUT.minor, true), FUSE_KERNEL_MINOR_VERSION);
  const agreed = bits(r.dv.getUint32(INIT_OUT.flags, true), r.dv.getUint32(INIT_OUT.flags2, true));
  strictEqual(agreed, InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS);
  // Without MAX_PAGES the kernel caps requests at 32 pages.
  strictEqual(r.dv.getUint32(INIT_OUT.maxWrite, true), 32 * 4096);
  strictEqual(s.c.server.proto?.minor, FUSE_KERNEL_MINOR_VERSION);
});

Deno.test("fuse server: INIT edge cases: newer major, too old, old reply size, short args", () => {
  using s = share();
  const init = (major: number, minor: number, argBytes = 64) =>
    s.c.call(
      Op.INIT,
      0,
      cat(le([4, major], [4, minor], [4, 0], [4, 0]), new Uint8Array(48)).subarray(0, argBytes),
    );
  // fuse.h: to a newer major, reply with our major only; the client retries.
  const newer = init(8, 1);
  strictEqual(newer.error, 0);
  strictEqual(newer.body.length, 8);
  strictEqual(newer.dv.getUint32(0, true), 7);
  strictEqual(s.c.server.proto, null);
  strictEqual(init(6, 40).error, Errno.EPROTO);
  strictEqual(init(7, 11).error, Errno.EPROTO);
  strictEqual(init(7, 37, 8).error, Errno.EINVAL);
  strictEqual(s.c.server.proto, null);
  const old = init(7, 22);
  strictEqual(old.error, 0);
  strictEqual(old.body.length, 24, "clients before 7.23 get the 24-byte fuse_init_out");
  strictEqual(old.dv.getUint32(4, true), 22);
});

Deno.test("fuse server: requests before INIT get EIO; after DESTROY again", () => {
  using s = share();
  strictEqual(s.c.lookup(1, "f")[0], Errno.EIO);
  strictEqual(s.c.getattr(1).error, Errno.EIO);
  strictEqual(s.c.init().error, 0);
  strictEqual(s.c.lookup(1, "f")[0], 0);
  strictEqual(s.c.call(Op.DESTROY, 0).error, 0);
  strictEqual(s.c.server.proto, null);
  strictEqual(s.c.getattr(1).error, Errno.EIO);
});

Deno.test("fuse server: the FileSystem base class answers ENOSYS and takes FORGET quietly", () => {
  const c = new TestClient(new FuseServer(new FileSystem()));
  strictEqual(c.init().error, 0);
  strictEqual(c.lookup(1, "x")[0], Errno.ENOSYS);
  strictEqual(c.getattr(1).error, Errno.ENOSYS);
  strictEqual(c.open(1)[0], Errno.ENOSYS);
  strictEqual(c.mkdir(1, "d").error, Errno.ENOSYS);
  strictEqual(c.call(Op.STATFS, 1).error, Errno.ENOSYS);
  strictEqual(c.call(Op.SETUPMAPPING, 1, new Uint8Array(40)).error, Errno.ENOSYS);
  strictEqual(c.call(9999, 1).error, Errno.ENOSYS);
  strictEqual(c.raw(c.request(Op.FORGET, 5, le([8, 1]))), null);
  strictEqual(c.raw(c.request(Op.INTERRUPT, 0, le([8, 1]))), null);
});

Deno.test("fuse server: short and inconsistent requests get error replies echoing unique", () => {
  using s = share();
  s.c.init();
  const server = s.c.server;
  const reply = (req: Uint8Array) => {
    const out = server.handle(req);
    ok(out, "a reply");
    const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
    strictEqual(v.getUint32(0, true), out.length);
    return { error: -v.getInt32(4, true), unique: v.getBigUint64(8, true), len: out.length };
  };
  // Shorter than a header, but long enough to carry `unique`.
  const short = s.c.request(Op.GETATTR, 1).subarray(0, 20);
  new DataView(short.buffer).setBigUint64(8, 0xabcdn, true);
  deepStrictEqual(reply(short), { error: Errno.EINVAL, unique: 0xabcdn, len: OUT_HEADER_SIZE });
  deepStrictEqual(reply(new Uint8Array(3)), {
    error: Errno.EINVAL,
    unique: 0n,
    len: OUT_HEADER_SIZE,
  });
  // Arguments shorter than the opcode's struct.
  for (const op of [Op.READ, Op.WRITE, Op.SETATTR, Op.OPEN, Op.CREATE, Op.RENAME2, Op.LINK]) {
    const r = s.c.call(op, 1, new Uint8Array(2));
    strictEqual(r.error, Errno.EINVAL, `opcode ${op} with 2 argument bytes`);
  }
  // A name that is not NUL-terminated, nodeids nobody looked up.
  strictEqual(s.c.call(Op.LOOKUP, 1, new TextEncoder().encode("f")).error, Errno.EINVAL);
  strictEqual(s.c.getattr(12345).error, Errno.ENOENT);
  strictEqual(s.c.read(1, 999, 0, 10).error, Errno.EBADF);
  // A reply that cannot fit the caller's buffer: an error header, not a throw.
  const tiny = new Uint8Array(OUT_HEADER_SIZE);
  const n = server.handleInto(s.c.request(Op.GETATTR, 1, le([4, 0], [4, 0], [8, 0])), tiny);
  strictEqual(n, OUT_HEADER_SIZE);
  strictEqual(-new DataView(tiny.buffer).getInt32(4, true), Errno.ERANGE);
  strictEqual(s.c.lookup(1, "f")[0], 0, "the server still works");
});

Deno.test("fuse server: handleRead serves the first `size` bytes of a reused buffer, no more", () => {
  using s = share();
  s.c.init();
  const server = s.c.server;
  const out = new Uint8Array(server.replyBufferSize);
  const buf = new Uint8Array(8192).fill(0x41); // stale bytes of an earlier, longer request
  const error = () => -new DataView(out.buffer).getInt32(4, true) || 0;
  // A LOOKUP of "f" read into the buffer's start: served, the stale tail ignored.
  const lookup = s.c.request(Op.LOOKUP, 1, z("f"));
  buf.set(lookup);
  const n = server.handleRead(buf, lookup.length, out);
  strictEqual(n, OUT_HEADER_SIZE + 128);
  strictEqual(error(), 0);
  // The same bytes with a `size` short of the header's length: EINVAL, not a read of the tail.
  strictEqual(server.handleRead(buf, lookup.length - 1, out), OUT_HEADER_SIZE);
  strictEqual(error(), Errno.EINVAL);
  // A name whose NUL lies only in the stale tail is unterminated.
  const unterminated = s.c.request(Op.LOOKUP, 1, new TextEncoder().encode("ff"));
  buf.fill(0);
  buf.set(unterminated);
  strictEqual(server.handleRead(buf, unterminated.length, out), OUT_HEADER_SIZE);
  strictEqual(error(), Errno.EINVAL);
});

Deno.test("fuse server: 5000 random requests never throw and always get well-formed replies", () => {
  using s = share(true);
  s.c.init();
  const server = s.c.server;
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const [, fileNode] = s.c.lookup(1, "f");
  const [, fh] = s.c.open(fileNode);
  const nodes = [0, 1, fileNode, 2, 3, 0xffffffff, rand(1 << 30)];
  const noReply = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT]);
  for (let i = 0; i < 5000; i++) {
    const opcode = rand(4) === 0 ? rand(1 << 16) : 1 + rand(52);
    if (opcode === Op.DESTROY || opcode === Op.INIT) continue;
    const args = new Uint8Array(rand(4) === 0 ? rand(300) : rand(48));
    for (let k = 0; k < args.length; k++) args[k] = rand(4) === 0 ? rand(256) : 0;
    if (args.length >= 8 && rand(2) === 0) new DataView(args.buffer).setUint32(0, fh, true);
    const req = s.c.request(opcode, nodes[rand(nodes.length)], args);
    const v = new DataView(req.buffer);
    if (rand(8) === 0) v.setUint32(0, rand(IN_HEADER_SIZE + args.length + 8), true);
    if (rand(16) === 0) v.setUint16(36, rand(8), true);
    const cut = rand(8) === 0 ? req.subarray(0, rand(req.length + 1)) : req;
    let out: Uint8Array | null = null;
    try {
      out = server.handle(cut);
    } catch (e) {
      throw new Error(`request ${i} (opcode ${opcode}, ${cut.length} bytes) threw: ${e}`);
    }
    if (out === null) {
      ok(noReply.has(opcode), `no reply to opcode ${opcode}`);
      continue;
    }
    const o = new DataView(out.buffer, out.byteOffset, out.byteLength);
    strictEqual(o.getUint32(0, true), out.length);
    const err = o.getInt32(4, true);
    ok(err <= 0 && err > -4096, `errno ${err}`);
    if (cut.length >= 16) strictEqual(o.getBigUint64(8, true), v.getBigUint64(8, true));
  }
  strictEqual(Deno.readTextFileSync(`${s.dir}/f`), "hello world");
  const r = s.c.read(fileNode, fh, 0, 5);
  strictEqual(new TextDecoder().decode(r.body), "hello");
});

Deno.test("fuse server: file opens carry FOPEN_NOFLUSH (FLUSH would be a no-op)", () => {
  using s = share();
  s.c.init();
  const [, f] = s.c.lookup(1, "f");
  const r = s.c.call(Op.OPEN, f, le([4, 0], [4, 0]));
  strictEqual(r.error, 0);
  strictEqual(r.dv.getUint32(8, true) & FOPEN.NOFLUSH, FOPEN.NOFLUSH);
  const c = s.c.call(Op.CREATE, 1, cat(le([4, 0o101], [4, 0o644], [4, 0], [4, 0]), z("new")));
  strictEqual(c.error, 0);
  strictEqual(c.dv.getUint32(128 + 8, true) & FOPEN.NOFLUSH, FOPEN.NOFLUSH);
  // FLUSH itself still answers (older clients ignore the flag).
  const fh = r.dv.getBigUint64(0, true);
  strictEqual(s.c.call(Op.FLUSH, f, le([8, fh], [4, 0], [4, 0], [8, 0])).error, 0);
});

Deno.test("fuse server: save/restore keeps node ids and open handles valid in a new server", () => {
  using s = share();
  s.c.init(37);
  const [, f] = s.c.lookup(1, "f");
  const [, d] = s.c.lookup(1, "d");
  const [, g] = s.c.lookup(d, "g");
  strictEqual(s.c.lookup(1, "f")[1], f); // two lookups of f
  const [, fh] = s.c.open(f, 2); // O_RDWR
  const [, dfh] = s.c.open(d, 0, true);
  const state = JSON.parse(JSON.stringify(s.c.server.save()));

  const fs2 = new PassthroughFs(s.dir);
  try {
    const c2 = new TestClient(new FuseServer(fs2));
    c2.server.restore(state);
    deepStrictEqual(c2.server.proto, s.c.server.proto);
    // No INIT: the restored connection goes on where it was.
    strictEqual(c2.getattr(f).error, 0);
    strictEqual(c2.getattr(g).error, 0);
    strictEqual(new TextDecoder().decode(c2.read(f, fh, 6, 5).body), "world");
    strictEqual(c2.write(f, fh, 0, "HELLO").error, 0);
    strictEqual(Deno.readTextFileSync(`${s.dir}/f`), "HELLO world");
    deepStrictEqual(c2.readdir(d, dfh)[1].sort(), [".", "..", "g"]);
    strictEqual(c2.lookup(1, "f")[1], f, "the same name maps to the same node id");
    strictEqual(c2.lookup(d, "g")[1], g);
    // New ids and handles do not collide with restored ones.
    Deno.writeTextFileSync(`${s.dir}/h`, "h");
    const [, h] = c2.lookup(1, "h");
    ok(![1, f, d, g].includes(h), `new node id ${h}`);
    const [, fh2] = c2.open(h);
    ok(fh2 !== fh && fh2 !== dfh, `new handle ${fh2}`);
    strictEqual(c2.release(f, fh).error, 0);
    strictEqual(c2.release(d, dfh, true).error, 0);
    strictEqual(c2.read(f, fh, 0, 5).error, Errno.EBADF, "released handle is gone");
    // Forgetting every lookup (2 before the snapshot + 1 after) drops the node.
    c2.forget(f, 3);
    strictEqual(c2.getattr(f).error, Errno.ENOENT);
    strictEqual(c2.getattr(g).error, 0);
  } finally {
    fs2.close();
  }
  throws(() => new FuseServer(new PassthroughFs(s.dir)).restore({ version: 2 } as never));
});

Deno.test("fuse server: a restored node whose file was replaced on the host is stale", () => {
  using s = share();
  s.c.init();
  const [, f] = s.c.lookup(1, "f");
  const state = JSON.parse(JSON.stringify(s.c.server.save()));
  Deno.renameSync(`${s.dir}/f`, `${s.dir}/f.old`);
  Deno.writeTextFileSync(`${s.dir}/f`, "another file");
  const fs2 = new PassthroughFs(s.dir);
  try {
    const c2 = new TestClient(new FuseServer(fs2));
    c2.server.restore(state);
    strictEqual(c2.getattr(f).error, Errno.ESTALE);
    strictEqual(c2.open(f)[0], Errno.ESTALE);
    const [e, f2] = c2.lookup(1, "f");
    strictEqual(e, 0);
    notStrictEqual(f2, f);
  } finally {
    fs2.close();
  }
});
