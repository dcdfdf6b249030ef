/** L0: the layered backend's merge (whiteouts, opaque dirs, replacement, hard links) and its replies. */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { encodeDev, encodeLayerIndex, type LayerEntry } from "./layer_index.ts";
import { LayeredFs } from "./layered.ts";
import type { DirSink, Entry } from "./filesystem.ts";
import { Errno } from "../../kvm_ffi/errno.ts";
import { S } from "./sys.ts";

const ctx = { uid: 0, gid: 0, pid: 1 };
const enc = new TextEncoder();

type Spec = Partial<LayerEntry> & { path: string; kind: LayerEntry["kind"]; data?: string };

/** Writes a layer directory: index.json from `specs`, root/ with the files' data. */
function layer(base: string, name: string, specs: Spec[]): string {
  const dir = `${base}/${name}`;
  Deno.mkdirSync(`${dir}/root`, { recursive: true });
  const entries: LayerEntry[] = specs.map((s) => {
    const { data, ...rest } = s;
    if (s.kind === "dir" || s.kind === "implicit-dir") {
      Deno.mkdirSync(`${dir}/root/${s.path}`, { recursive: true });
    }
    if (s.kind === "file") Deno.writeTextFileSync(`${dir}/root/${s.path}`, data ?? "");
    return {
      mode: s.kind === "dir" ? 0o755 : 0o644,
      uid: 0,
      gid: 0,
      size: enc.encode(data ?? "").length,
      mtime: 1_700_000_000,
      mtimeNsec: 0,
      link: "",
      rdev: 0,
      ...rest,
    };
  });
  Deno.writeFileSync(`${dir}/index.json`, encodeLayerIndex(entries));
  return dir;
}

function walk(fs: LayeredFs, path: string): Entry {
  let id = 1;
  let e!: Entry;
  for (const c of path.split("/").filter(Boolean)) {
    e = fs.lookup(ctx, id, enc.encode(c));
    id = e.nodeid;
  }
  return path === ""
    ? {
      nodeid: 1,
      generation: 0,
      attr: fs.getattr(ctx, 1, null).attr,
      entryTimeout: 0,
      attrTimeout: 0,
    }
    : e;
}

function list(fs: LayeredFs, path: string, plus = false): string[] {
  const id = walk(fs, path).nodeid;
  const { fh } = fs.opendir(ctx, id, 0);
  const names: string[] = [];
  let off = 0n;
  for (;;) {
    let added = 0;
    const sink: DirSink = {
      plus,
      fits: () => added < 3, // small replies: exercises the offsets
      add(name, _ino, _type, next, entry) {
        added++;
        off = next;
        const n = new TextDecoder().decode(name);
        if (plus && n !== "." && n !== "..") ok(entry, `readdirplus entry for ${n}`);
        names.push(n);
      },
    };
    fs.readdir(ctx, id, fh, off, sink);
    if (added === 0) break;
  }
  fs.releasedir(ctx, id, fh);
  return names.filter((n) => n !== "." && n !== "..");
}

function cat(fs: LayeredFs, path: string): string {
  const id = walk(fs, path).nodeid;
  const { fh } = fs.open(ctx, id, 0);
  try {
    const buf = new Uint8Array(65536);
    const n = fs.read(ctx, id, fh, 0n, [buf.subarray(0, 3), buf.subarray(3)]);
    return new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    fs.release(ctx, id, fh);
  }
}

function errno(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    return (e as { errno: number }).errno;
  }
  return 0;
}

function withLayers(fn: (base: string) => void): void {
  const base = Deno.makeTempDirSync({ prefix: "skiff-layered-test-" });
  try {
    fn(base);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
}

Deno.test("layered: whiteouts, opaque dirs, replacement and hard links across layers", () => {
  withLayers((base) => {
    const l0 = layer(base, "l0", [
      { path: "etc", kind: "dir" },
      { path: "etc/keep", kind: "file", data: "keep" },
      { path: "etc/gone", kind: "file", data: "gone" },
      { path: "var", kind: "dir", mode: 0o700 },
      { path: "var/old", kind: "file", data: "old" },
      { path: "d", kind: "dir" },
      { path: "d/child", kind: "file", data: "c" },
      { path: "f", kind: "file", data: "was a file" },
      { path: "bin", kind: "dir" },
      { path: "bin/busybox", kind: "file", data: "BB", mode: 0o4755, uid: 0 },
      { path: "bin/sh", kind: "symlink", link: "busybox" },
    ]);
    const l1 = layer(base, "l1", [
      { path: "etc", kind: "implicit-dir" },
      { path: "etc/gone", kind: "whiteout" },
      { path: "var", kind: "dir", mode: 0o755 },
      { path: "var", kind: "opaque" },
      { path: "var/new", kind: "file", data: "new" },
      { path: "d", kind: "file", data: "now a file" },
      { path: "f", kind: "dir" },
      { path: "f/inside", kind: "file", data: "i" },
      { path: "bin", kind: "implicit-dir" },
      { path: "bin/ln", kind: "hardlink", link: "bin/busybox" },
      { path: "dev", kind: "dir" },
      { path: "dev/null", kind: "char", rdev: encodeDev(1, 3), mode: 0o666 },
      { path: "fifo", kind: "fifo" },
      { path: "x", kind: "file", data: "xa", xattrs: { "security.capability": btoa("CAP") } },
    ]);
    const warnings: string[] = [];
    const fs = new LayeredFs({ layers: [l0, l1], warn: (l) => warnings.push(l) });
    try {
      deepStrictEqual(list(fs, ""), ["bin", "d", "dev", "etc", "f", "fifo", "var", "x"]);
      deepStrictEqual(list(fs, "etc", true), ["keep"]);
      deepStrictEqual(list(fs, "var"), ["new"]);
      strictEqual(walk(fs, "var").attr.mode, S.IFDIR | 0o755);
      strictEqual(cat(fs, "d"), "now a file");
      deepStrictEqual(list(fs, "f"), ["inside"]);
      strictEqual(cat(fs, "etc/keep"), "keep");
      strictEqual(errno(() => walk(fs, "etc/gone")), Errno.ENOENT);
      strictEqual(errno(() => walk(fs, "var/old")), Errno.ENOENT);
      // setuid kept as metadata; the hard link shares the inode and counts 2.
      const bb = walk(fs, "bin/busybox").attr;
      const ln = walk(fs, "bin/ln").attr;
      strictEqual(bb.mode, S.IFREG | 0o4755);
      deepStrictEqual([ln.ino, ln.nlink], [bb.ino, 2]);
      strictEqual(cat(fs, "bin/ln"), "BB");
      strictEqual(new TextDecoder().decode(fs.readlink(ctx, walk(fs, "bin/sh").nodeid)), "busybox");
      const dev = walk(fs, "dev/null").attr;
      deepStrictEqual([dev.mode, dev.rdev], [S.IFCHR | 0o666, encodeDev(1, 3)]);
      strictEqual(walk(fs, "fifo").attr.mode, S.IFIFO | 0o644);
      const x = walk(fs, "x").nodeid;
      strictEqual(
        new TextDecoder().decode(fs.getxattr(ctx, x, enc.encode("security.capability"))),
        "CAP",
      );
      strictEqual(new TextDecoder().decode(fs.listxattr(ctx, x)), "security.capability\0");
      strictEqual(errno(() => fs.getxattr(ctx, 1, enc.encode("user.none"))), Errno.ENODATA);
      // Directory link counts: 2 + subdirectories.
      strictEqual(walk(fs, "").attr.nlink, 2 + 5); // bin dev etc f var
      // Read-only, and only regular files open.
      strictEqual(errno(() => fs.open(ctx, walk(fs, "etc/keep").nodeid, 1)), Errno.EROFS);
      strictEqual(errno(() => fs.open(ctx, walk(fs, "dev/null").nodeid, 0)), Errno.EACCES);
      strictEqual(errno(() => fs.open(ctx, walk(fs, "fifo").nodeid, 0)), Errno.EACCES);
      strictEqual(errno(() => fs.mkdir()), Errno.EROFS);
      strictEqual(errno(() => fs.setattr(ctx, 1, {} as never)), Errno.EROFS);
      strictEqual(fs.lookup(ctx, walk(fs, "etc").nodeid, enc.encode("..")).nodeid, 1);
      deepStrictEqual(warnings, []);
      strictEqual(fs.handleCount, 0);
    } finally {
      fs.close();
    }
  });
});

Deno.test("layered: a symlink planted in the store is never followed", () => {
  withLayers((base) => {
    const l0 = layer(base, "l0", [{ path: "secret", kind: "file", data: "12345" }]);
    Deno.removeSync(`${l0}/root/secret`);
    Deno.writeTextFileSync(`${base}/host-file`, "HOST!");
    Deno.symlinkSync(`${base}/host-file`, `${l0}/root/secret`);
    const fs = new LayeredFs({ layers: [l0] });
    try {
      strictEqual(errno(() => cat(fs, "secret")), Errno.ELOOP);
      // A content file of another size is refused too (the store was changed under us).
      Deno.removeSync(`${l0}/root/secret`);
      Deno.writeTextFileSync(`${l0}/root/secret`, "1234");
      strictEqual(errno(() => cat(fs, "secret")), Errno.EIO);
    } finally {
      fs.close();
    }
  });
});

Deno.test("layered: save/restore keeps open handles; a dangling hard link is skipped with a warning", () => {
  withLayers((base) => {
    const l0 = layer(base, "l0", [
      { path: "a", kind: "file", data: "AAA" },
      { path: "h", kind: "hardlink", link: "missing" },
    ]);
    const warnings: string[] = [];
    const fs = new LayeredFs({ layers: [l0], warn: (l) => warnings.push(l) });
    const id = walk(fs, "a").nodeid;
    const { fh } = fs.open(ctx, id, 0);
    const { fh: dh } = fs.opendir(ctx, 1, 0);
    const state = fs.save();
    fs.close();
    const fs2 = new LayeredFs({ layers: [l0] });
    try {
      fs2.restore(JSON.parse(JSON.stringify(state)));
      const buf = new Uint8Array(10);
      strictEqual(fs2.read(ctx, id, fh, 1n, [buf]), 2);
      const names: string[] = [];
      fs2.readdir(ctx, 1, dh, 0n, {
        plus: false,
        fits: () => true,
        add: (n) => void names.push(new TextDecoder().decode(n)),
      });
      deepStrictEqual(names, [".", "..", "a"]);
      strictEqual(warnings.length, 1);
      ok(/h: hard link to a missing path missing; entry skipped/.test(warnings[0]), warnings[0]);
      throws(() => new LayeredFs({ layers: [`${base}/nope`] }), /cannot open layer/);
    } finally {
      fs2.close();
    }
  });
});
