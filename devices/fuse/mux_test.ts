/**
 * L0 tests of the share mux through the FUSE server: the root lists the
 * attached shares, requests below an entry reach that share's back-end with
 * its own policy (read-only stays read-only), nothing crosses shares
 * (rename/link give EXDEV), inode numbers are tagged per share, shares come
 * and go at run time, and save/restore keeps node ids valid.
 */

import { deepStrictEqual, notStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Errno } from "../../kvm_ffi/errno.ts";
import { ShareMux, tagIno } from "./mux.ts";
import { PassthroughFs } from "./passthrough.ts";
import { Op } from "./protocol.ts";
import { FuseServer } from "./server.ts";
import { TestClient } from "./test_client.ts";

interface Fixture extends Disposable {
  a: string;
  b: string;
  mux: ShareMux;
  c: TestClient;
}

function fixture(): Fixture {
  const a = Deno.makeTempDirSync({ prefix: "skiff-mux-a-" });
  const b = Deno.makeTempDirSync({ prefix: "skiff-mux-b-" });
  Deno.writeTextFileSync(`${a}/f`, "from a");
  Deno.writeTextFileSync(`${b}/f`, "from b");
  const fa = new PassthroughFs(a);
  const fb = new PassthroughFs(b, { readOnly: true });
  const mux = new ShareMux();
  mux.attach("rw", fa);
  mux.attach("ro", fb);
  const c = new TestClient(new FuseServer(mux));
  strictEqual(c.init().error, 0);
  return {
    a,
    b,
    mux,
    c,
    [Symbol.dispose]() {
      fa.close();
      fb.close();
      Deno.removeSync(a, { recursive: true });
      Deno.removeSync(b, { recursive: true });
    },
  };
}

const text = (r: { body: Uint8Array }) => new TextDecoder().decode(r.body);
/** st_ino from an entry_out reply (fuse_attr starts at byte 40). */
const entryIno = (r: { dv: DataView }) => r.dv.getBigUint64(40, true);

Deno.test("share mux: the root lists the shares; each entry is its back-end", () => {
  using f = fixture();
  const [err, fh] = f.c.open(1, 0, true);
  strictEqual(err, 0);
  deepStrictEqual(f.c.readdir(1, fh)[1], [".", "..", "rw", "ro"]);
  deepStrictEqual(f.c.readdir(1, fh, true)[1], [".", "..", "rw", "ro"]);
  const [e1, rw] = f.c.lookup(1, "rw");
  const [e2, ro] = f.c.lookup(1, "ro");
  strictEqual(e1 + e2, 0);
  notStrictEqual(rw, ro);
  for (const [dir, want] of [[rw, "from a"], [ro, "from b"]] as const) {
    const [e, node] = f.c.lookup(dir, "f");
    strictEqual(e, 0);
    const [oe, h] = f.c.open(node);
    strictEqual(oe, 0);
    strictEqual(text(f.c.read(node, h, 0, 100)), want);
    f.c.release(node, h);
  }
  strictEqual(f.c.lookup(1, "nope")[0], Errno.ENOENT);
});

Deno.test("share mux: each share keeps its policy; nothing crosses shares or touches the root", () => {
  using f = fixture();
  const [, rw] = f.c.lookup(1, "rw");
  const [, ro] = f.c.lookup(1, "ro");
  strictEqual(f.c.create(rw, "new")[0], 0);
  ok(Deno.statSync(`${f.a}/new`).isFile, "created in share a on the host");
  strictEqual(f.c.create(ro, "new")[0], Errno.EROFS);
  strictEqual(f.c.mkdir(1, "x").error, Errno.EROFS);
  strictEqual(f.c.rename(rw, "f", ro, "g").error, Errno.EXDEV);
  const [, fa] = f.c.lookup(rw, "f");
  strictEqual(f.c.link(fa, ro, "g").error, Errno.EXDEV);
  strictEqual(f.c.rename(rw, "f", rw, "g").error, 0);
  ok(Deno.statSync(`${f.a}/g`).isFile);
  // A node id of an unknown slot is stale, not another share's node.
  strictEqual(f.c.call(Op.GETATTR, 7 * 256 + 200, new Uint8Array(16)).error, Errno.ESTALE);
});

Deno.test("share mux: inode numbers carry the share's slot", () => {
  using f = fixture();
  const [, rw] = f.c.lookup(1, "rw");
  const r = f.c.call(Op.LOOKUP, rw, new TextEncoder().encode("f\0"));
  strictEqual(r.error, 0);
  const host = BigInt(Deno.statSync(`${f.a}/f`).ino!);
  strictEqual(entryIno(r), tagIno(host, 1));
  strictEqual(tagIno(host, 1) >> 56n, 1n);
});

Deno.test("share mux: shares are attached and detached at run time; bad names are refused", () => {
  using f = fixture();
  const dir = Deno.makeTempDirSync({ prefix: "skiff-mux-c-" });
  try {
    const fc = new PassthroughFs(dir);
    f.mux.attach("late", fc);
    strictEqual(f.c.lookup(1, "late")[0], 0, "a share attached after INIT is served");
    strictEqual(f.mux.detach("late"), fc);
    strictEqual(f.c.lookup(1, "late")[0], Errno.ENOENT);
    fc.close();
    for (const bad of ["", ".", "..", "a/b", "x".repeat(256)]) {
      throws(() => f.mux.attach(bad, new PassthroughFs(dir)), /not a valid file name/);
    }
    throws(() => f.mux.attach("rw", new PassthroughFs(dir)), /already attached/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("share mux: save/restore into a new mux keeps the guest's node ids valid", () => {
  using f = fixture();
  const [, ro] = f.c.lookup(1, "ro");
  const [, node] = f.c.lookup(ro, "f");
  const state = JSON.parse(JSON.stringify(f.c.server.save()));
  // A fresh mux with the shares attached in another order: the saved slots win.
  const fb = new PassthroughFs(f.b, { readOnly: true });
  const fa = new PassthroughFs(f.a);
  try {
    const mux = new ShareMux();
    mux.attach("ro", fb);
    mux.attach("rw", fa);
    const server = new FuseServer(mux);
    server.restore(state);
    const c = new TestClient(server);
    const [oe, h] = c.open(node);
    strictEqual(oe, 0);
    strictEqual(text(c.read(node, h, 0, 100)), "from b");
    throws(() => new ShareMux().restore({ shares: [{ name: "x", slot: 1, state: null }] }), /x/);
  } finally {
    fa.close();
    fb.close();
  }
});
