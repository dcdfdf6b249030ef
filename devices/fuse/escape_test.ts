/**
 * Escape attempts at the protocol level: a hostile client builds FUSE
 * requests by hand and tries to reach, read, change or create anything
 * outside the shared directory, or to crash or block the server. Each
 * attempt checks both the reply and the host side (the secret outside the
 * share is unchanged, nothing appeared outside).
 */

import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import { Errno } from "../../kvm_ffi/errno.ts";
import { hostTest } from "../../tests/requirements.ts";
import { PassthroughFs, type PassthroughOptions } from "./passthrough.ts";
import { Op } from "./protocol.ts";
import { FuseServer } from "./server.ts";
import { cat, le, TestClient, z } from "./test_client.ts";

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const SECRET = "SECRET-OUTSIDE-THE-SHARE";

interface World {
  base: string;
  share: string;
  secret: string;
  c: TestClient;
  fs: PassthroughFs;
  [Symbol.dispose](): void;
}

function world(options: PassthroughOptions = {}): World {
  const base = Deno.makeTempDirSync({ prefix: "skiff-escape-" });
  const share = `${base}/share`;
  const secret = `${base}/outside/secret`;
  Deno.mkdirSync(`${base}/outside`);
  Deno.writeTextFileSync(secret, SECRET);
  Deno.chmodSync(secret, 0o600);
  Deno.mkdirSync(`${share}/dir/inner`, { recursive: true });
  Deno.writeTextFileSync(`${share}/file`, "hello");
  Deno.writeTextFileSync(`${share}/dir/inner/f`, "inner");
  Deno.symlinkSync(secret, `${share}/lnabs`);
  Deno.symlinkSync("../outside/secret", `${share}/lnrel`);
  Deno.symlinkSync("../outside", `${share}/lndir`);
  Deno.symlinkSync("/proc/self/root", `${share}/procln`);
  Deno.symlinkSync("../../outside", `${share}/dir/up`);
  const fs = new PassthroughFs(share, options);
  const c = new TestClient(new FuseServer(fs));
  strictEqual(c.init().error, 0);
  return {
    base,
    share,
    secret,
    c,
    fs,
    [Symbol.dispose]() {
      fs.close();
      Deno.removeSync(base, { recursive: true });
    },
  };
}

function secretIntact(w: World): void {
  strictEqual(Deno.readTextFileSync(w.secret), SECRET);
  const st = Deno.lstatSync(w.secret);
  strictEqual(st.mode! & 0o7777, 0o600);
  strictEqual(st.nlink, 1);
  deepStrictEqual(
    [...Deno.readDirSync(`${w.base}/outside`)].map((e) => e.name).sort(),
    ["secret"],
  );
  deepStrictEqual(
    [...Deno.readDirSync(w.base)].map((e) => e.name).sort(),
    ["outside", "share"],
  );
}

function attempt(name: string, fn: (w: World) => void, options?: PassthroughOptions): void {
  Deno.test(`escape: ${name}`, () => {
    using w = world(options);
    fn(w);
    secretIntact(w);
  });
}

function modeOf(w: World, node: number): number {
  const r = w.c.getattr(node);
  strictEqual(r.error, 0);
  return r.dv.getUint32(16 + 60, true);
}

// ---- names ------------------------------------------------------------------

attempt("LOOKUP .. at the root", (w) => strictEqual(w.c.lookup(1, "..")[0], Errno.EINVAL));
attempt("LOOKUP . at the root", (w) => strictEqual(w.c.lookup(1, ".")[0], Errno.EINVAL));
attempt("LOOKUP ../outside/secret", (w) => {
  strictEqual(w.c.lookup(1, "../outside/secret")[0], Errno.EINVAL);
});
attempt(
  "LOOKUP an absolute path",
  (w) => strictEqual(w.c.lookup(1, "/etc/passwd")[0], Errno.EINVAL),
);
attempt("LOOKUP an empty name", (w) => strictEqual(w.c.lookup(1, "")[0], Errno.EINVAL));
attempt("LOOKUP dir/../../outside", (w) => {
  strictEqual(w.c.lookup(1, "dir/../../outside")[0], Errno.EINVAL);
});
attempt("LOOKUP .. from a subdirectory", (w) => {
  const [, dir] = w.c.lookup(1, "dir");
  strictEqual(w.c.lookup(dir, "..")[0], Errno.EINVAL);
});
attempt("LOOKUP name without a terminating NUL", (w) => {
  const r = w.c.raw(w.c.request(Op.LOOKUP, 1, new TextEncoder().encode("outside")));
  strictEqual(r!.error, Errno.EINVAL);
});
attempt("LOOKUP name with an embedded NUL only sees the part before it", (w) => {
  const [e, id] = w.c.lookup(1, new TextEncoder().encode("file\0/../../outside/secret"));
  strictEqual(e, 0);
  strictEqual(modeOf(w, id) & S_IFMT, 0o100000);
  const [, fh] = w.c.open(id);
  strictEqual(new TextDecoder().decode(w.c.read(id, fh, 0, 100).body), "hello");
});
attempt("LOOKUP a 5000-byte name", (w) => {
  strictEqual(w.c.lookup(1, "a".repeat(5000))[0], Errno.ENAMETOOLONG);
});

// ---- symlinks are never followed ---------------------------------------------

attempt("absolute symlink to the secret: node is the link, OPEN refused", (w) => {
  const [e, id] = w.c.lookup(1, "lnabs");
  strictEqual(e, 0);
  strictEqual(modeOf(w, id) & S_IFMT, S_IFLNK);
  strictEqual(w.c.open(id)[0], Errno.EACCES);
  strictEqual(w.c.open(id, 2)[0], Errno.EACCES);
});
attempt("relative symlink out: GETATTR is the link's own", (w) => {
  const [, id] = w.c.lookup(1, "lnrel");
  const r = w.c.getattr(id);
  strictEqual(r.dv.getUint32(16 + 60, true) & S_IFMT, S_IFLNK);
  strictEqual(Number(r.dv.getBigUint64(16 + 8, true)), "../outside/secret".length);
});
attempt("symlink to a directory outside is not a directory", (w) => {
  const [, id] = w.c.lookup(1, "lndir");
  strictEqual(w.c.lookup(id, "secret")[0], Errno.ENOTDIR);
  strictEqual(w.c.open(id, 0, true)[0], Errno.ENOTDIR);
});
attempt("symlink to /proc/self/root is not a directory", (w) => {
  const [, id] = w.c.lookup(1, "procln");
  strictEqual(w.c.lookup(id, "etc")[0], Errno.ENOTDIR);
});
attempt("symlink inside a subdirectory pointing out", (w) => {
  const [, dir] = w.c.lookup(1, "dir");
  const [, up] = w.c.lookup(dir, "up");
  strictEqual(w.c.lookup(up, "secret")[0], Errno.ENOTDIR);
});
attempt("freshly created symlink to /etc/passwd is not followed", (w) => {
  strictEqual(w.c.symlink(1, "evil", "/etc/passwd").error, 0);
  const [, id] = w.c.lookup(1, "evil");
  strictEqual(modeOf(w, id) & S_IFMT, S_IFLNK);
  strictEqual(w.c.open(id)[0], Errno.EACCES);
});
attempt("CREATE over a symlink to the secret (no O_EXCL, O_TRUNC)", (w) => {
  const [e] = w.c.create(1, "lnabs", 0o1101 /* O_WRONLY|O_CREAT|O_TRUNC */);
  notStrictEqual(e, 0);
});
attempt("CREATE over a relative symlink out", (w) => {
  notStrictEqual(w.c.create(1, "lnrel", 0o102)[0], 0);
});
attempt("SETATTR size through a symlink", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  const r = w.c.call(Op.SETATTR, id, setattr(8, { size: 0 }));
  strictEqual(r.error, Errno.EINVAL);
});
attempt("SETATTR mode through a symlink", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  strictEqual(w.c.call(Op.SETATTR, id, setattr(1, { mode: 0o777 })).error, Errno.ENOTSUP);
});
attempt("SETATTR times through a symlink touch only the link", (w) => {
  const before = Deno.statSync(w.secret).mtime!.getTime();
  const [, id] = w.c.lookup(1, "lnabs");
  strictEqual(w.c.call(Op.SETATTR, id, setattr(32, { mtime: 1000 })).error, 0);
  strictEqual(Deno.statSync(w.secret).mtime!.getTime(), before);
  strictEqual(Deno.lstatSync(`${w.share}/lnabs`).mtime!.getTime(), 1000_000);
});
attempt("SETATTR owner through a symlink changes only the link", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  const r = w.c.call(Op.SETATTR, id, setattr(2 | 4, { uid: 4242, gid: 4242 }));
  if (Deno.uid() === 0) strictEqual(r.error, 0);
  notStrictEqual(Deno.statSync(w.secret).uid, 4242);
});
attempt("GETXATTR / LISTXATTR through a symlink do not read the target's", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  strictEqual(
    w.c.call(Op.GETXATTR, id, cat(le([4, 100], [4, 0]), z("user.x"))).error,
    Errno.ENODATA,
  );
  const r = w.c.call(Op.LISTXATTR, id, le([4, 100], [4, 0]));
  strictEqual(r.error, 0);
  strictEqual(r.body.length, 0);
});
attempt("SETXATTR through a symlink", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  const r = w.c.call(Op.SETXATTR, id, cat(le([4, 1], [4, 0]), z("user.x"), new Uint8Array([1])));
  strictEqual(r.error, Errno.EPERM);
});

// ---- creation with bad names -------------------------------------------------

attempt("CREATE ../pwned", (w) => {
  strictEqual(w.c.create(1, "../pwned")[0], Errno.EINVAL);
});
attempt("MKDIR ../pwned", (w) => strictEqual(w.c.mkdir(1, "../pwned").error, Errno.EINVAL));
attempt("MKNOD with a slash", (w) => {
  strictEqual(w.c.mknod(1, "a/../../pwned", 0o100644).error, Errno.EINVAL);
});
attempt("SYMLINK with a slash in the name", (w) => {
  strictEqual(w.c.symlink(1, "../pwned", "x").error, Errno.EINVAL);
});
attempt("RENAME to ../moved", (w) => {
  strictEqual(w.c.rename(1, "file", 1, "../moved").error, Errno.EINVAL);
  ok(Deno.statSync(`${w.share}/file`).isFile);
});
attempt("RENAME from .. ", (w) => {
  const [, dir] = w.c.lookup(1, "dir");
  strictEqual(w.c.rename(dir, "..", 1, "x").error, Errno.EINVAL);
});
attempt("RENAME into a symlink to a directory outside", (w) => {
  const [, ln] = w.c.lookup(1, "lndir");
  strictEqual(w.c.rename(1, "file", ln, "stolen").error, Errno.ENOTDIR);
});
attempt("RENAME2 with RENAME_WHITEOUT", (w) => {
  strictEqual(w.c.rename(1, "file", 1, "f2", 4).error, Errno.EINVAL);
});

// ---- hard links --------------------------------------------------------------

attempt("LINK of a symlink links the link, not the secret", (w) => {
  const [, id] = w.c.lookup(1, "lnabs");
  strictEqual(w.c.link(id, 1, "hl").error, 0);
  ok(Deno.lstatSync(`${w.share}/hl`).isSymlink);
});
attempt("LINK of an unknown node id", (w) => {
  strictEqual(w.c.link(999999, 1, "hl").error, Errno.ENOENT);
});
attempt("LINK of a directory", (w) => {
  const [, dir] = w.c.lookup(1, "dir");
  strictEqual(w.c.link(dir, 1, "dl").error, Errno.EPERM);
});
attempt("LINK into a symlinked directory outside", (w) => {
  const [, f] = w.c.lookup(1, "file");
  const [, ln] = w.c.lookup(1, "lndir");
  strictEqual(w.c.link(f, ln, "x").error, Errno.ENOTDIR);
});

// ---- special files -------------------------------------------------------------

attempt("MKNOD a character device (/dev/mem 1:1)", (w) => {
  strictEqual(w.c.mknod(1, "mem", 0o20666, (1 << 8) | 1).error, Errno.EPERM);
});
attempt("MKNOD a block device", (w) => {
  strictEqual(w.c.mknod(1, "disk", 0o60666, (8 << 8) | 0).error, Errno.EPERM);
});
attempt("OPEN of a FIFO is refused instead of blocking the server", (w) => {
  strictEqual(w.c.mknod(1, "fifo", 0o10644).error, 0);
  const [, id] = w.c.lookup(1, "fifo");
  strictEqual(w.c.open(id)[0], Errno.EACCES);
  strictEqual(w.c.open(id, 1)[0], Errno.EACCES);
});
attempt("CREATE over an existing FIFO is refused instead of blocking", (w) => {
  strictEqual(w.c.mknod(1, "fifo", 0o10644).error, 0);
  notStrictEqual(w.c.create(1, "fifo", 0o101)[0], 0);
});
attempt("OPEN with O_PATH|O_DIRECTORY|O_CREAT flags is sanitised", (w) => {
  const [, f] = w.c.lookup(1, "file");
  const [e, fh] = w.c.open(f, 0o10000000 | 0o200000 | 0o100);
  strictEqual(e, 0);
  strictEqual(new TextDecoder().decode(w.c.read(f, fh, 0, 10).body), "hello");
});

// ---- bogus ids and handles -----------------------------------------------------

attempt("GETATTR of an unknown node", (w) => strictEqual(w.c.getattr(424242).error, Errno.ENOENT));
attempt("node id 0 and 2^63", (w) => {
  strictEqual(w.c.lookup(0, "file")[0], Errno.ENOENT);
  strictEqual(w.c.getattr(1n << 63n as unknown as number).error, Errno.ENOENT);
});
attempt("READ with a forged handle", (w) => {
  const [, f] = w.c.lookup(1, "file");
  strictEqual(w.c.read(f, 77, 0, 10).error, Errno.EBADF);
});
attempt("READ with a directory handle", (w) => {
  const [, dfh] = w.c.open(1, 0, true);
  const [, f] = w.c.lookup(1, "file");
  strictEqual(w.c.read(f, dfh, 0, 10).error, Errno.EBADF);
});
attempt("WRITE with a released handle", (w) => {
  const [, f] = w.c.lookup(1, "file");
  const [, fh] = w.c.open(f, 2);
  strictEqual(w.c.release(f, fh).error, 0);
  strictEqual(w.c.write(f, fh, 0, "x").error, Errno.EBADF);
});
attempt("READDIR with a file handle", (w) => {
  const [, f] = w.c.lookup(1, "file");
  const [, fh] = w.c.open(f);
  strictEqual(w.c.readdir(1, fh)[0], Errno.EBADF);
});
attempt("FORGET of the root and unknown nodes keeps the root usable", (w) => {
  w.c.forget(1, 1000);
  w.c.forget(31337, 5);
  strictEqual(w.c.lookup(1, "file")[0], 0);
});

// ---- xattr namespaces ----------------------------------------------------------

attempt("SETXATTR trusted.* and security.capability are refused", (w) => {
  const [, f] = w.c.lookup(1, "file");
  for (const name of ["trusted.overlay.opaque", "security.capability"]) {
    const r = w.c.call(Op.SETXATTR, f, cat(le([4, 1], [4, 0]), z(name), new Uint8Array([1])));
    strictEqual(r.error, Errno.EPERM, name);
  }
});

// ---- races with the host side ------------------------------------------------

/**
 * Opens 8 new files so their nodes take every slot of a small node-fd cache: OPEN
 * gives a node its O_PATH fd (CREATE alone does not: its handle's fd serves the
 * node while open).
 */
function fillFdCache(w: World): void {
  for (let i = 0; i < 8; i++) {
    const [e, id, fh] = w.c.create(1, `filler${i}`);
    strictEqual(e, 0);
    w.c.release(id, fh);
    strictEqual(w.c.open(id)[0], 0);
  }
}

attempt("a directory swapped for a symlink out: evicted node is stale", (w) => {
  const [, dir] = w.c.lookup(1, "dir");
  const [, inner] = w.c.lookup(dir, "inner");
  const [, f] = w.c.lookup(inner, "f");
  Deno.renameSync(`${w.share}/dir`, `${w.share}/dir2`);
  Deno.symlinkSync("../outside", `${w.share}/dir`);
  Deno.mkdirSync(`${w.base}/outside/inner`);
  Deno.writeTextFileSync(`${w.base}/outside/inner/f`, "outside!");
  try {
    // Fill the fd cache so the nodes above are reopened by path.
    fillFdCache(w);
    const r = w.c.getattr(f);
    notStrictEqual(r.error, 0);
    const [e, fh] = w.c.open(f);
    if (e === 0) strictEqual(new TextDecoder().decode(w.c.read(f, fh, 0, 20).body), "inner");
  } finally {
    Deno.removeSync(`${w.base}/outside/inner`, { recursive: true });
  }
}, { maxCachedFds: 2 });
attempt("a file swapped for a symlink to the secret: evicted node is stale", (w) => {
  const [, f] = w.c.lookup(1, "file");
  Deno.removeSync(`${w.share}/file`);
  Deno.symlinkSync(w.secret, `${w.share}/file`);
  fillFdCache(w);
  strictEqual(w.c.open(f)[0], Errno.ESTALE);
}, { maxCachedFds: 2 });

attempt("a file renamed on the host: its new name is a new node, the old one stale", (w) => {
  // The node loses its fd first, so nothing pins its inode (as when the host removes a
  // file and a new one reuses the inode number: the (dev, ino) match is not that node).
  const [, f] = w.c.lookup(1, "file");
  fillFdCache(w);
  Deno.renameSync(`${w.share}/file`, `${w.share}/moved`);
  const [e, g] = w.c.lookup(1, "moved");
  strictEqual(e, 0);
  notStrictEqual(g, f);
  const [eo, fh] = w.c.open(g);
  strictEqual(eo, 0);
  strictEqual(new TextDecoder().decode(w.c.read(g, fh, 0, 20).body), "hello");
  strictEqual(w.c.open(f)[0], Errno.ESTALE);
}, { maxCachedFds: 2 });

attempt("a file swapped for a symlink to the secret: GETATTR by name is ESTALE", (w) => {
  // The node has no fd of its own, so GETATTR stats its name in its parent and must
  // notice that the name now holds another file.
  const [, f] = w.c.lookup(1, "file");
  Deno.removeSync(`${w.share}/file`);
  Deno.symlinkSync(w.secret, `${w.share}/file`);
  strictEqual(w.c.getattr(f).error, Errno.ESTALE);
  strictEqual(w.c.call(Op.SETATTR, f, setattr(8, { size: 0 })).error, Errno.ESTALE);
});
attempt("a created file unlinked and closed: its node is ESTALE, a new file is a new node", (w) => {
  const [e, f, fh] = w.c.create(1, "tmp");
  strictEqual(e, 0);
  strictEqual(w.c.write(f, fh, 0, "x").error, 0);
  strictEqual(w.c.release(f, fh).error, 0);
  strictEqual(w.c.unlink(1, "tmp").error, 0);
  strictEqual(w.c.getattr(f).error, Errno.ESTALE);
  // Whatever inode number the host reuses, a new name gets a node of its own kind.
  Deno.symlinkSync(w.secret, `${w.share}/tmp`);
  const [e2, f2] = w.c.lookup(1, "tmp");
  strictEqual(e2, 0);
  notStrictEqual(f2, f);
  strictEqual(modeOf(w, f2) & S_IFMT, S_IFLNK);
  strictEqual(w.c.call(Op.SETATTR, f2, setattr(8, { size: 0 })).error, Errno.EINVAL);
});

// ---- hidden paths and read-only --------------------------------------------------

attempt("hidden paths do not exist and are not listed", (w) => {
  strictEqual(w.c.lookup(1, "dir")[0], Errno.ENOENT);
  const [, fh] = w.c.open(1, 0, true);
  const [, names] = w.c.readdir(1, fh, true);
  ok(!names.includes("dir"));
  ok(names.includes("file"));
}, { hide: ["dir"] });

attempt("read-only share: every mutation is EROFS", (w) => {
  const [, f] = w.c.lookup(1, "file");
  const [, dir] = w.c.lookup(1, "dir");
  strictEqual(w.c.create(1, "new")[0], Errno.EROFS);
  strictEqual(w.c.mkdir(1, "d").error, Errno.EROFS);
  strictEqual(w.c.mknod(1, "n", 0o100644).error, Errno.EROFS);
  strictEqual(w.c.symlink(1, "s", "x").error, Errno.EROFS);
  strictEqual(w.c.unlink(1, "file").error, Errno.EROFS);
  strictEqual(w.c.call(Op.RMDIR, 1, z("dir")).error, Errno.EROFS);
  strictEqual(w.c.rename(1, "file", dir, "file").error, Errno.EROFS);
  strictEqual(w.c.link(f, dir, "l").error, Errno.EROFS);
  strictEqual(w.c.call(Op.SETATTR, f, setattr(8, { size: 0 })).error, Errno.EROFS);
  strictEqual(
    w.c.call(Op.SETXATTR, f, cat(le([4, 1], [4, 0]), z("user.a"), new Uint8Array([1]))).error,
    Errno.EROFS,
  );
  strictEqual(w.c.call(Op.REMOVEXATTR, f, z("user.a")).error, Errno.EROFS);
  strictEqual(w.c.open(f, 1)[0], Errno.EROFS);
  strictEqual(w.c.open(f, 2)[0], Errno.EROFS);
  strictEqual(w.c.open(f, 0o1000)[0], Errno.EROFS);
  strictEqual(w.c.call(Op.ACCESS, f, le([4, 2], [4, 0])).error, Errno.EROFS);
  const [, fh] = w.c.open(f);
  strictEqual(w.c.write(f, fh, 0, "x").error, Errno.EROFS);
  strictEqual(
    w.c.call(Op.FALLOCATE, f, le([8, fh], [8, 0], [8, 100], [4, 0], [4, 0])).error,
    Errno.EROFS,
  );
  strictEqual(Deno.readTextFileSync(`${w.share}/file`), "hello");
}, { readOnly: true });

// ---- malformed requests -----------------------------------------------------------

attempt("malformed requests get error replies, never throws", (w) => {
  const s = w.c.server;
  strictEqual(errorOf(s.handle(new Uint8Array(10))), Errno.EINVAL);
  strictEqual(errorOf(s.handle(new Uint8Array(0))), Errno.EINVAL);
  const req = w.c.request(Op.LOOKUP, 1, z("file"));
  new DataView(req.buffer).setUint32(0, 4096, true); // len beyond the buffer
  strictEqual(errorOf(s.handle(req)), Errno.EINVAL);
  new DataView(req.buffer).setUint32(0, 12, true); // len shorter than a header
  strictEqual(errorOf(s.handle(req)), Errno.EINVAL);
  strictEqual(w.c.call(999, 1).error, Errno.ENOSYS);
  strictEqual(w.c.call(Op.READ, 1, le([8, 1])).error, Errno.EINVAL);
  strictEqual(w.c.call(Op.SYMLINK, 1, new TextEncoder().encode("a\0b")).error, Errno.EINVAL);
  strictEqual(
    w.c.call(Op.WRITE, 1, le([8, 1], [8, 0], [4, 1 << 30], [4, 0], [8, 0], [4, 0], [4, 0])).error,
    Errno.EINVAL,
  );
  strictEqual(
    w.c.call(Op.SETXATTR, 1, cat(le([4, 1 << 20], [4, 0]), z("user.x"))).error,
    Errno.EINVAL,
  );
  // BATCH_FORGET claiming more entries than present: no reply, no throw, nothing forgotten.
  strictEqual(w.c.raw(w.c.request(Op.BATCH_FORGET, 0, le([4, 1000000], [4, 0]))), null);
  const ext = w.c.request(Op.GETATTR, 1, le([4, 0], [4, 0], [8, 0]));
  new DataView(ext.buffer).setUint16(36, 0xffff, true); // total_extlen past the end
  strictEqual(errorOf(s.handle(ext)), Errno.EINVAL);
  strictEqual(w.c.lookup(1, "file")[0], 0);
});

function errorOf(reply: Uint8Array | null): number {
  ok(reply);
  return 0 - new DataView(reply.buffer, reply.byteOffset).getInt32(4, true);
}

/** A fuse_setattr_in with `valid` and the given fields. */
function setattr(
  valid: number,
  f: { size?: number; mode?: number; uid?: number; gid?: number; mtime?: number },
): Uint8Array {
  return le(
    [4, valid],
    [4, 0],
    [8, 0],
    [8, f.size ?? 0],
    [8, 0],
    [8, 0],
    [8, f.mtime ?? 0],
    [8, 0],
    [4, 0],
    [4, 0],
    [4, 0],
    [4, f.mode ?? 0],
    [4, 0],
    [4, f.uid ?? 0],
    [4, f.gid ?? 0],
    [4, 0],
  );
}

// ---- other mounts (needs root to mount a tmpfs inside the share) ----------------------

hostTest("escape: crossMounts false shows another mount as an empty directory", ["root"], () => {
  const base = Deno.makeTempDirSync({ prefix: "skiff-escape-mnt-" });
  const mnt = `${base}/mnt`;
  Deno.mkdirSync(mnt);
  const cmd = (args: string[]) => new Deno.Command(args[0], { args: args.slice(1) }).outputSync();
  strictEqual(cmd(["mount", "-t", "tmpfs", "none", mnt]).code, 0);
  try {
    Deno.writeTextFileSync(`${mnt}/onthemount`, "x");
    const fs = new PassthroughFs(base, { crossMounts: false });
    const c = new TestClient(new FuseServer(fs));
    c.init();
    const [e, id] = c.lookup(1, "mnt");
    strictEqual(e, 0);
    strictEqual(c.lookup(id, "onthemount")[0], Errno.ENOENT);
    const [, fh] = c.open(id, 0, true);
    deepStrictEqual(c.readdir(id, fh, true)[1], [".", ".."]);
    strictEqual(c.create(id, "new")[0], Errno.EACCES);
    fs.close();
    const fs2 = new PassthroughFs(base, { crossMounts: true });
    const c2 = new TestClient(new FuseServer(fs2));
    c2.init();
    const [, id2] = c2.lookup(1, "mnt");
    strictEqual(c2.lookup(id2, "onthemount")[0], 0);
    fs2.close();
  } finally {
    cmd(["umount", mnt]);
    Deno.removeSync(base, { recursive: true });
  }
});
