/**
 * L0 tests of {@link PassthroughFs} options at the protocol level: `hide`
 * (hidden paths and their hard links can be neither seen nor removed,
 * renamed or replaced) and `credentials` (every host call runs with that
 * user's rights, whatever uid the client's request carries).
 * `readOnly` and `crossMounts: false` are covered in escape_test.ts; all
 * four through the real kernel client in dev_fuse_test.ts. Also the open
 * flags: FOPEN_KEEP_CACHE on read-only shares only.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { Errno } from "../../kvm_ffi/errno.ts";
import { hostTest } from "../../tests/requirements.ts";
import { PassthroughFs, type PassthroughOptions } from "./passthrough.ts";
import { FOPEN, InitFlag, Op } from "./protocol.ts";
import { FuseServer } from "./server.ts";
import { setThreadCreds } from "./sys.ts";
import { cat, le, TestClient, z } from "./test_client.ts";

interface Share extends Disposable {
  dir: string;
  c: TestClient;
}

/**
 * A share at `<tmp>/share` built by `build`; `beforeRemove` runs before the
 * temp dir is removed (a credentials test resets the thread's fsuid there).
 */
function share(
  build: (dir: string) => void,
  options: PassthroughOptions,
  beforeRemove: () => void = () => {},
): Share {
  const base = Deno.makeTempDirSync({ prefix: "skiff-passthrough-" });
  Deno.chmodSync(base, 0o755); // reachable by the credentials test's user
  const dir = `${base}/share`;
  Deno.mkdirSync(dir, { mode: 0o755 });
  Deno.chmodSync(dir, 0o755);
  build(dir);
  const fs = new PassthroughFs(dir, options);
  const c = new TestClient(new FuseServer(fs));
  strictEqual(c.init().error, 0);
  return {
    dir,
    c,
    [Symbol.dispose]() {
      fs.close();
      beforeRemove();
      Deno.removeSync(base, { recursive: true });
    },
  };
}

/** `fuse_open_out.open_flags` of an OPEN or CREATE reply (after the u64 fh). */
function openFlags(r: { dv: DataView }, at = 8): number {
  return r.dv.getUint32(at, true);
}

Deno.test("passthrough open flags: KEEP_CACHE on a read-only share, never on a read-write one", () => {
  for (const readOnly of [true, false]) {
    using s = share((d) => Deno.writeTextFileSync(`${d}/f`, "f"), { readOnly });
    const c = s.c;
    const [, f] = c.lookup(1, "f");
    const r = c.call(Op.OPEN, f, new Uint8Array(8)); // O_RDONLY
    strictEqual(r.error, 0);
    const flags = openFlags(r);
    strictEqual((flags & FOPEN.KEEP_CACHE) !== 0, readOnly, `readOnly ${readOnly}: ${flags}`);
    ok(flags & FOPEN.NOFLUSH, "NOFLUSH either way");
    strictEqual(c.release(f, Number(r.dv.getBigUint64(0, true))).error, 0);
    // Directory handles never ask the client to cache their listings.
    const d = c.call(Op.OPENDIR, 1, new Uint8Array(8));
    strictEqual(d.error, 0);
    strictEqual(openFlags(d) & (FOPEN.KEEP_CACHE | FOPEN.CACHE_DIR), 0);
    strictEqual(c.release(1, Number(d.dv.getBigUint64(0, true)), true).error, 0);
    if (!readOnly) {
      // CREATE's fuse_open_out follows the 128-byte fuse_entry_out.
      const cr = c.call(Op.CREATE, 1, cat(le([4, 0o102], [4, 0o644], [4, 0], [4, 0]), z("n")));
      strictEqual(cr.error, 0);
      strictEqual(openFlags(cr, 136) & FOPEN.KEEP_CACHE, 0);
    }
  }
});

Deno.test("passthrough open flags: the server grants AUTO_INVAL_DATA, which KEEP_CACHE relies on", () => {
  // A kept page cache is dropped by the client when an attribute reply shows another
  // mtime or size only if FUSE_AUTO_INVAL_DATA was negotiated (fs/fuse/inode.c).
  const dir = Deno.makeTempDirSync({ prefix: "skiff-passthrough-" });
  const fs = new PassthroughFs(dir, { readOnly: true });
  try {
    const r = new TestClient(new FuseServer(fs)).init();
    strictEqual(r.error, 0);
    ok(BigInt(r.dv.getUint32(12, true)) & InitFlag.AUTO_INVAL_DATA);
  } finally {
    fs.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("passthrough hide: hidden paths and their hard links cannot be seen, removed or replaced", () => {
  using s = share((d) => {
    Deno.mkdirSync(`${d}/home/alice`, { recursive: true });
    Deno.writeTextFileSync(`${d}/home/alice/key`, "k");
    Deno.mkdirSync(`${d}/home/empty`);
    Deno.writeTextFileSync(`${d}/home/visible`, "v");
    Deno.writeTextFileSync(`${d}/top`, "t");
    Deno.linkSync(`${d}/top`, `${d}/home/alias`);
  }, { hide: ["home/alice", "home/empty", "top"] });
  const c = s.c;
  const [e, home] = c.lookup(1, "home");
  strictEqual(e, 0);
  for (const [dir, name] of [[home, "alice"], [home, "empty"], [1, "top"], [home, "alias"]]) {
    strictEqual(c.lookup(dir as number, name as string)[0], Errno.ENOENT, `lookup ${name}`);
  }
  const [, fh] = c.open(home, 0, true);
  deepStrictEqual(c.readdir(home, fh, false)[1].sort(), [".", "..", "visible"]);
  deepStrictEqual(c.readdir(home, fh, true)[1].sort(), [".", "..", "visible"]);
  // Mutations naming a hidden entry.
  strictEqual(c.unlink(1, "top").error, Errno.ENOENT);
  strictEqual(c.unlink(home, "alias").error, Errno.ENOENT, "hard link of a hidden file");
  strictEqual(c.call(Op.RMDIR, home, z("empty")).error, Errno.ENOENT);
  strictEqual(c.rename(home, "empty", 1, "moved").error, Errno.ENOENT);
  strictEqual(c.rename(home, "visible", 1, "top").error, Errno.EACCES);
  strictEqual(c.rename(home, "visible", home, "alice", 2).error, Errno.EACCES); // EXCHANGE
  strictEqual(c.create(1, "top")[0] !== 0, true);
  strictEqual(c.mkdir(home, "alice").error !== 0, true);
  // Nothing changed on the host.
  deepStrictEqual(names(`${s.dir}/home`), ["alias", "alice", "empty", "visible"]);
  deepStrictEqual(names(s.dir), ["home", "top"]);
  strictEqual(Deno.readTextFileSync(`${s.dir}/home/alice/key`), "k");
  strictEqual(Deno.readTextFileSync(`${s.dir}/top`), "t");
  // Visible entries still work normally.
  strictEqual(c.rename(home, "visible", 1, "moved").error, 0);
  strictEqual(c.unlink(1, "moved").error, 0);
});

Deno.test("passthrough hide: a missing hidden path is ignored", () => {
  using s = share((d) => Deno.writeTextFileSync(`${d}/f`, "f"), { hide: ["nope", "/also/not"] });
  strictEqual(s.c.lookup(1, "f")[0], 0);
});

/** The calling thread's supplementary groups (restored after a credentials test). */
function threadGroups(): number[] {
  const status = Deno.readTextFileSync("/proc/thread-self/status");
  const line = status.split("\n").find((l) => l.startsWith("Groups:")) ?? "Groups:";
  return line.slice(7).trim().split(/\s+/).filter((x) => x !== "").map(Number);
}

hostTest("passthrough credentials: host calls run as the given user, not the client's uid", [
  "root",
], () => {
  const USER = 4321;
  const groups = threadGroups();
  try {
    using s = share(
      (d) => {
        Deno.writeTextFileSync(`${d}/secret`, "s");
        Deno.chmodSync(`${d}/secret`, 0o600);
        Deno.writeTextFileSync(`${d}/public`, "p");
        Deno.chmodSync(`${d}/public`, 0o644);
        Deno.mkdirSync(`${d}/mine`);
        Deno.chownSync(`${d}/mine`, USER, USER);
        Deno.mkdirSync(`${d}/group`, { mode: 0o770 });
        Deno.chmodSync(`${d}/group`, 0o770);
        Deno.chownSync(`${d}/group`, 0, 777);
      },
      { credentials: { uid: USER, gid: USER, groups: [USER, 777] } },
      () => {
        setThreadCreds(0, 0, groups); // this thread: back to root for the cleanup
      },
    );
    const c = s.c; // requests carry uid 0 / gid 0: must not matter
    const [, secret] = c.lookup(1, "secret");
    const [, pub] = c.lookup(1, "public");
    const [, mine] = c.lookup(1, "mine");
    const [, group] = c.lookup(1, "group");
    strictEqual(c.open(secret)[0], Errno.EACCES);
    const [e, fh] = c.open(pub);
    strictEqual(e, 0);
    strictEqual(new TextDecoder().decode(c.read(pub, fh, 0, 10).body), "p");
    strictEqual(c.open(pub, 1)[0], Errno.EACCES, "public is not writable by the user");
    strictEqual(c.create(1, "new")[0], Errno.EACCES, "the share root belongs to root");
    strictEqual(c.create(mine, "new")[0], 0);
    strictEqual(c.mkdir(mine, "sub").error, 0);
    strictEqual(c.create(group, "g")[0], 0, "supplementary group 777 grants access");
    strictEqual(c.unlink(1, "public").error, Errno.EACCES);
    const st = Deno.statSync(`${s.dir}/mine/new`);
    deepStrictEqual([st.uid, st.gid], [USER, USER]);
    const sd = Deno.statSync(`${s.dir}/mine/sub`);
    deepStrictEqual([sd.uid, sd.gid], [USER, USER]);
    strictEqual(Deno.statSync(`${s.dir}/group/g`).uid, USER);
    ok(Deno.statSync(`${s.dir}/public`).isFile);
  } finally {
    setThreadCreds(0, 0, groups);
  }
});

hostTest("passthrough without credentials, as root: files are created as the client's uid", [
  "root",
], () => {
  using s = share((d) => Deno.mkdirSync(`${d}/pub`, { mode: 0o777 }), {});
  Deno.chmodSync(`${s.dir}/pub`, 0o777);
  const [, pub] = s.c.lookup(1, "pub");
  s.c.uid = 1500;
  s.c.gid = 1600;
  strictEqual(s.c.create(pub, "f")[0], 0);
  strictEqual(s.c.create(1, "g")[0], Errno.EACCES, "uid 1500 may not write the 0755 root");
  const st = Deno.statSync(`${s.dir}/pub/f`);
  deepStrictEqual([st.uid, st.gid], [1500, 1600]);
});

Deno.test("passthrough: open handles serve stat, xattrs and truncate, also once unlinked; a second link keeps the node", () => {
  using s = share(() => {}, {});
  const c = s.c;
  const attr = (node: number) => {
    const r = c.getattr(node);
    strictEqual(r.error, 0);
    // fuse_attr_out: attr at 16; size at +8, nlink at +64
    return { size: Number(r.dv.getBigUint64(16 + 8, true)), nlink: r.dv.getUint32(16 + 64, true) };
  };
  const xattr = (node: number, name: string, size: number) =>
    c.call(Op.GETXATTR, node, cat(le([4, size], [4, 0]), z(name)));

  const [e, n, fh] = c.create(1, "n");
  strictEqual(e, 0);
  strictEqual(c.write(n, fh, 0, "hello world").error, 0);
  const set = c.call(Op.SETXATTR, n, cat(le([4, 2], [4, 0]), z("user.k"), enc.encode("vv")));
  strictEqual(set.error, 0);
  const probe = xattr(n, "user.k", 0);
  strictEqual(probe.error, 0);
  strictEqual(probe.dv.getUint32(0, true), 2, "size 0 asks for the length");
  strictEqual(xattr(n, "user.k", 1).error, Errno.ERANGE);
  strictEqual(new TextDecoder().decode(xattr(n, "user.k", 64).body), "vv");
  strictEqual(xattr(n, "user.none", 0).error, Errno.ENODATA);
  strictEqual(c.call(Op.LISTXATTR, n, le([4, 0], [4, 0])).dv.getUint32(0, true), 7);

  strictEqual(c.unlink(1, "n").error, 0);
  deepStrictEqual(attr(n), { size: 11, nlink: 0 });
  // SETATTR size without a handle: the open handle (opened for writing) truncates.
  strictEqual(c.call(Op.SETATTR, n, setattrSize(3)).error, 0);
  deepStrictEqual(attr(n), { size: 3, nlink: 0 });
  strictEqual(new TextDecoder().decode(xattr(n, "user.k", 64).body), "vv");
  strictEqual(c.release(n, fh).error, 0);
  deepStrictEqual(attr(n), { size: 3, nlink: 0 }, "unlinked while open: the node stays pinned");

  const [, h, hfh] = c.create(1, "h1");
  c.release(h, hfh);
  strictEqual(c.link(h, 1, "h2").error, 0);
  strictEqual(c.unlink(1, "h1").error, 0);
  strictEqual(attr(h).nlink, 1, "the other link keeps the node");
  strictEqual(c.lookup(1, "h2")[1], h);
  deepStrictEqual(names(s.dir), ["h2"]);
});

const enc = new TextEncoder();

/** fuse_setattr_in with FATTR_SIZE only. */
function setattrSize(size: number): Uint8Array {
  const b = new Uint8Array(88);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1 << 3, true);
  v.setBigUint64(16, BigInt(size), true);
  return b;
}

Deno.test("passthrough: two instances over one shared state (two readers) agree on nodes, handles and directory offsets", () => {
  using s = share((d) => {
    for (let i = 0; i < 300; i++) Deno.writeTextFileSync(`${d}/file-with-a-longish-name-${i}`, "x");
  }, {});
  const a = s.c;
  const fsA = a.server.fs as PassthroughFs;
  const fsB = PassthroughFs.attach(fsA.share());
  const b = new TestClient(new FuseServer(fsB));
  b.server.useProto(a.server.proto!);
  try {
    // The same name is the same node id whichever reader looks it up.
    const [, n1] = a.lookup(1, "file-with-a-longish-name-7");
    const [, n2] = b.lookup(1, "file-with-a-longish-name-7");
    strictEqual(n1, n2);
    // A handle opened through one reader is written and released through the other.
    const [, f, fh] = a.create(1, "made-by-a");
    strictEqual(b.write(f, fh, 0, "via b").error, 0);
    strictEqual(b.release(f, fh).error, 0);
    strictEqual(a.release(f, fh).error, Errno.EBADF, "released once only");
    strictEqual(Deno.readTextFileSync(`${s.dir}/made-by-a`), "via b");
    // READDIR of one handle alternating between the readers, in small replies: each
    // continues where the other left off, every entry exactly once.
    const [, dh] = a.open(1, 0, true);
    const seen: string[] = [];
    let off = 0n;
    for (let turn = 0;; turn++) {
      const c = turn % 2 ? b : a;
      const r = c.call(
        Op.READDIR,
        1,
        le([8, dh], [8, off], [4, 1024], [4, 0], [8, 0], [4, 0], [4, 0]),
      );
      strictEqual(r.error, 0);
      if (r.body.length === 0) break;
      for (let p = 0; p < r.body.length;) {
        const nl = r.dv.getUint32(p + 16, true);
        seen.push(new TextDecoder().decode(r.body.subarray(p + 24, p + 24 + nl)));
        off = r.dv.getBigUint64(p + 8, true);
        p += (24 + nl + 7) & ~7;
      }
      ok(turn < 1000, "READDIR keeps going");
    }
    const want = [".", "..", "made-by-a", ...names(s.dir).filter((n) => n !== "made-by-a")];
    deepStrictEqual(seen.sort(), want.sort());
    strictEqual(b.release(1, dh, true).error, 0);
    strictEqual(fsA.handleCount, 0);
  } finally {
    fsB.close();
  }
});

Deno.test("passthrough READ through a transport's ReadSender: large READs only, fallback when it declines", () => {
  const base = Deno.makeTempDirSync({ prefix: "skiff-passthrough-" });
  try {
    const data = new Uint8Array(200_000).map((_, i) => i * 7);
    Deno.writeFileSync(`${base}/f`, data);
    const calls: [number, number, bigint, number][] = [];
    let answer = 0;
    const server = new FuseServer(new PassthroughFs(base, {}), {
      readSender: {
        minSize: 65536,
        send(lo, _hi, fd, offset, size) {
          ok(fd >= 0);
          calls.push([lo, fd, offset, size]);
          return answer;
        },
      },
    });
    const c = new TestClient(server);
    c.init();
    const [, node] = c.lookup(1, "f");
    const [, fh] = c.open(node);
    // Taken by the sender: no reply from the server itself.
    const unique = Number(c.unique);
    strictEqual(
      c.raw(
        c.request(
          Op.READ,
          node,
          le([8, fh], [8, 4096], [4, 131072], [4, 0], [8, 0], [4, 0], [4, 0]),
        ),
      ),
      null,
    );
    deepStrictEqual(calls.map(([lo, , off, size]) => [lo, off, size]), [[unique, 4096n, 131072]]);
    // Declined: the server reads and replies itself.
    answer = -1;
    const r = c.read(node, fh, 100, 70_000);
    strictEqual(r.error, 0);
    deepStrictEqual(r.body, data.subarray(100, 70_100));
    strictEqual(calls.length, 2);
    // Small READs never reach it; an unknown handle is EBADF before it does.
    strictEqual(c.read(node, fh, 0, 4096).body.length, 4096);
    strictEqual(c.read(node, fh + 1000, 0, 131072).error, Errno.EBADF);
    strictEqual(calls.length, 2);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});
