/**
 * FUSE requests whose names a racing vCPU changes after the device first
 * reads them, shared by the L0 tests of both FUSE adapters: skiff's
 * in-process virtio-fs device (kvm engine, `race_test.ts` here) and the
 * vhost-user fs back-end (qemu engine, devices/vhost_user/fs_race_test.ts).
 *
 * Each case sends one request whose name is valid when the device first
 * reads it; right after that read a {@link HostileMemory} rewrites the name
 * in guest memory to `..`, `../x` (`x` exists next to the share), `../y`
 * (does not exist) or `a/b`. The request must act on the name as first
 * read (or fail), never on the changed one: the host file system is checked
 * (nothing outside the share created, changed or removed, nothing created
 * in a subdirectory, a LOOKUP answers for the original file), and the
 * access record must show every request byte copied exactly once, never a
 * view of it handed to the server, nothing read twice or read back.
 *
 * Not a test file itself: {@link registerFuseRaceTests} registers the tests
 * for one adapter.
 *
 * @module
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { PassthroughFs } from "../../fuse/passthrough.ts";
import { Op } from "../../fuse/protocol.ts";
import { FuseServer } from "../../fuse/server.ts";
import { cat, le, z } from "../../fuse/test_client.ts";
import type { HostileMemory, Range } from "../hostile_memory.ts";
import type { MockBuffer, MockQueueDriver } from "../mock_driver.ts";

/** A FUSE adapter wired to a hostile memory and a mock driver. */
export interface FsRig {
  /** The memory the device reads (the driver writes the inner one). */
  mem: HostileMemory;
  /** Driver side of the request queue. */
  queue: MockQueueDriver;
  /** The device serves what the driver made available (a notify / a kick). */
  kick(): void;
  /** Ring fields the device legitimately reads again on every look (the available index). */
  polled: Range[];
}

const enc = new TextEncoder();
const SECRET = "SECRET-NEXT-TO-THE-SHARE";

interface World {
  base: string;
  share: string;
  rig: FsRig;
  fs: PassthroughFs;
  unique: bigint;
}

/** How a request is laid out in descriptors. */
type Layout = "one buffer" | "header + arguments" | "indirect";
const LAYOUTS: Layout[] = ["one buffer", "header + arguments", "indirect"];

function header(opcode: number, nodeid: number, unique: bigint, argLen: number): Uint8Array {
  return le([4, 40 + argLen], [4, opcode], [8, unique], [8, nodeid], [4, 0], [4, 0], [4, 1], [
    2,
    0,
  ], [2, 0]);
}

interface Sent {
  error: number;
  body: Uint8Array;
}

/**
 * Sends one request; with `race`, the `hostile` bytes replace the request's
 * bytes at argument offset `at` right after the device first reads them.
 */
function send(
  w: World,
  layout: Layout,
  opcode: number,
  nodeid: number,
  args: Uint8Array,
  race?: { at: number; hostile: string },
): Sent {
  const hdr = header(opcode, nodeid, w.unique++, args.length);
  const bufs: MockBuffer[] = layout === "one buffer"
    ? [{ data: cat(hdr, args) }]
    : [{ data: hdr }, { data: args }];
  bufs.push({ writable: 16 }, { writable: 4096 });
  const { queue, mem } = w.rig;
  const head = queue.add(bufs, { indirect: layout === "indirect" });
  const readable: Range[] = queue.buffers(head).filter((b) => !b.writable).map((b) => ({
    addr: b.addr,
    length: b.len,
  }));
  const fired = mem.racesFired;
  if (race) {
    mem.raceAfterFirstRead(queue.readableAddr(head, 40 + race.at), enc.encode(race.hostile));
  }
  mem.clear();
  w.rig.kick();
  const used = queue.takeUsed();
  strictEqual(used.length, 1, "one used entry");
  if (race) strictEqual(mem.racesFired, fired + 1, "the racing vCPU changed the name");
  mem.assertCopiedOnce(readable, `opcode ${opcode} (${layout})`);
  mem.assertNoDoubleReads(w.rig.polled, `opcode ${opcode} (${layout})`);
  mem.assertNoReadBack(`opcode ${opcode} (${layout})`);
  const out = used[0].written;
  ok(out.length >= 16, `reply of ${out.length} bytes`);
  const v = new DataView(out.buffer, out.byteOffset, out.length);
  strictEqual(v.getUint32(0, true), out.length, "reply length");
  return { error: 0 - v.getInt32(4, true), body: out.subarray(16) };
}

function world(makeRig: (server: FuseServer) => FsRig): World {
  const base = Deno.makeTempDirSync({ prefix: "skiff-fsrace-" });
  let fs: PassthroughFs | null = null;
  try {
    const share = `${base}/share`;
    Deno.mkdirSync(`${share}/a`, { recursive: true });
    Deno.mkdirSync(`${share}/c`);
    Deno.writeTextFileSync(`${share}/a/b`, "inner");
    Deno.writeTextFileSync(`${share}/file`, "hello");
    Deno.writeTextFileSync(`${base}/x`, SECRET);
    Deno.chmodSync(`${base}/x`, 0o600);
    fs = new PassthroughFs(share);
    const w: World = { base, share, rig: makeRig(new FuseServer(fs)), fs, unique: 1n };
    const init = send(
      w,
      "header + arguments",
      Op.INIT,
      0,
      cat(le([4, 7], [4, 37], [4, 1 << 20], [4, 0xffffffff], [4, 0]), new Uint8Array(44)),
    );
    strictEqual(init.error, 0, "INIT");
    return w;
  } catch (e) {
    fs?.close();
    Deno.removeSync(base, { recursive: true });
    throw e;
  }
}

function dispose(w: World): void {
  w.fs.close();
  Deno.removeSync(w.base, { recursive: true });
}

/** Nothing next to the share was created, changed or removed; nothing appeared in `a/` or `c/`. */
function confined(w: World): void {
  deepStrictEqual([...Deno.readDirSync(w.base)].map((e) => e.name).sort(), ["share", "x"]);
  strictEqual(Deno.readTextFileSync(`${w.base}/x`), SECRET);
  const st = Deno.lstatSync(`${w.base}/x`);
  strictEqual(st.mode! & 0o7777, 0o600);
  strictEqual(st.nlink, 1);
  deepStrictEqual([...Deno.readDirSync(`${w.share}/a`)].map((e) => e.name), ["b"]);
  strictEqual(Deno.readTextFileSync(`${w.share}/a/b`), "inner");
  deepStrictEqual([...Deno.readDirSync(`${w.share}/c`)], []);
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** entry_out → attr.ino (fuse_entry_out: 40 bytes of ids and timeouts, then fuse_attr). */
function entryIno(body: Uint8Array): bigint {
  return new DataView(body.buffer, body.byteOffset, body.length).getBigUint64(40, true);
}

function entryNode(body: Uint8Array): number {
  return Number(new DataView(body.buffer, body.byteOffset, body.length).getBigUint64(0, true));
}

/** Original (valid) name → what the racing vCPU turns it into. */
type Swap = [string, string];
/** For operations that read or remove an existing entry: `x` exists next to the share. */
const EXISTING: Swap[] = [["ab", ".."], ["abcd", "../x"], ["azb", "a/b"]];
/** For operations that create: `y` does not exist next to the share, nor `c/d`. */
const CREATING: Swap[] = [["ab", ".."], ["abcd", "../y"], ["czd", "c/d"]];

interface Case {
  op: string;
  swaps: Swap[];
  /** Runs the request in a fresh world; `name` is the original, raced into `hostile`. */
  run(w: World, layout: Layout, name: string, hostile: string): void;
}

const CASES: Case[] = [
  {
    op: "LOOKUP",
    swaps: EXISTING,
    run(w, layout, name, hostile) {
      Deno.writeTextFileSync(`${w.share}/${name}`, "mine");
      const r = send(w, layout, Op.LOOKUP, 1, z(name), { at: 0, hostile });
      strictEqual(r.error, 0, `LOOKUP ${name}`);
      strictEqual(
        entryIno(r.body),
        BigInt(Deno.lstatSync(`${w.share}/${name}`).ino!),
        `LOOKUP answered for share/${name}, not for ${hostile}`,
      );
    },
  },
  {
    op: "CREATE",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      const r = send(
        w,
        layout,
        Op.CREATE,
        1,
        cat(le([4, 0o102], [4, 0o644], [4, 0], [4, 0]), z(name)),
        {
          at: 16,
          hostile,
        },
      );
      strictEqual(r.error, 0, `CREATE ${name}`);
      ok(Deno.lstatSync(`${w.share}/${name}`).isFile, `share/${name} created`);
    },
  },
  {
    op: "MKDIR",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      const r = send(w, layout, Op.MKDIR, 1, cat(le([4, 0o755], [4, 0]), z(name)), {
        at: 8,
        hostile,
      });
      strictEqual(r.error, 0, `MKDIR ${name}`);
      ok(Deno.lstatSync(`${w.share}/${name}`).isDirectory, `share/${name} made`);
    },
  },
  {
    op: "MKNOD",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      const fifo = 0o010644;
      const r = send(w, layout, Op.MKNOD, 1, cat(le([4, fifo], [4, 0], [4, 0], [4, 0]), z(name)), {
        at: 16,
        hostile,
      });
      strictEqual(r.error, 0, `MKNOD ${name}`);
      ok(Deno.lstatSync(`${w.share}/${name}`).isFifo, `share/${name} is a FIFO`);
    },
  },
  {
    op: "SYMLINK",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      const r = send(w, layout, Op.SYMLINK, 1, cat(z(name), z("target")), { at: 0, hostile });
      strictEqual(r.error, 0, `SYMLINK ${name}`);
      strictEqual(Deno.readLinkSync(`${w.share}/${name}`), "target");
    },
  },
  {
    op: "LINK",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      const l = send(w, layout, Op.LOOKUP, 1, z("file"));
      strictEqual(l.error, 0, "LOOKUP file");
      const r = send(w, layout, Op.LINK, 1, cat(le([8, entryNode(l.body)]), z(name)), {
        at: 8,
        hostile,
      });
      strictEqual(r.error, 0, `LINK ${name}`);
      strictEqual(Deno.lstatSync(`${w.share}/${name}`).ino, Deno.lstatSync(`${w.share}/file`).ino);
      strictEqual(Deno.lstatSync(`${w.share}/file`).nlink, 2);
    },
  },
  {
    op: "RENAME (new name)",
    swaps: CREATING,
    run(w, layout, name, hostile) {
      Deno.writeTextFileSync(`${w.share}/qrst`, "moving");
      const args = cat(le([8, 1]), z("qrst"), z(name));
      const r = send(w, layout, Op.RENAME, 1, args, { at: 8 + 5, hostile });
      strictEqual(r.error, 0, `RENAME qrst → ${name}`);
      ok(!exists(`${w.share}/qrst`));
      strictEqual(Deno.readTextFileSync(`${w.share}/${name}`), "moving");
    },
  },
  {
    op: "RENAME (old name)",
    swaps: EXISTING,
    run(w, layout, name, hostile) {
      Deno.writeTextFileSync(`${w.share}/${name}`, "moving");
      const args = cat(le([8, 1], [4, 0], [4, 0]), z(name), z("qrst"));
      const r = send(w, layout, Op.RENAME2, 1, args, { at: 16, hostile });
      strictEqual(r.error, 0, `RENAME2 ${name} → qrst`);
      ok(!exists(`${w.share}/${name}`));
      strictEqual(Deno.readTextFileSync(`${w.share}/qrst`), "moving");
    },
  },
  {
    op: "UNLINK",
    swaps: EXISTING,
    run(w, layout, name, hostile) {
      Deno.writeTextFileSync(`${w.share}/${name}`, "doomed");
      const r = send(w, layout, Op.UNLINK, 1, z(name), { at: 0, hostile });
      strictEqual(r.error, 0, `UNLINK ${name}`);
      ok(!exists(`${w.share}/${name}`));
    },
  },
  {
    op: "SETXATTR (namespace)",
    swaps: [["user.abcdefg", "trusted.abcd"], ["user.abcdefghijklmn", "security.capability"]],
    run(w, layout, name, hostile) {
      const l = send(w, layout, Op.LOOKUP, 1, z("file"));
      strictEqual(l.error, 0, "LOOKUP file");
      const node = entryNode(l.body);
      const value = enc.encode("v");
      const r = send(w, layout, Op.SETXATTR, node, cat(le([4, 1], [4, 0]), z(name), value), {
        at: 8,
        hostile,
      });
      // A file system without user xattrs refuses the original name; what matters is the other.
      ok(r.error === 0 || r.error === 95, /* EOPNOTSUPP */ `SETXATTR ${name}: errno ${r.error}`);
      const get = send(w, layout, Op.GETXATTR, node, cat(le([4, 100], [4, 0]), z(hostile)));
      strictEqual(get.error, 61, /* ENODATA */ `${hostile} was not set on the host file`);
    },
  },
];

/** Registers the race tests for one FUSE adapter (`makeRig` builds it over a server). */
export function registerFuseRaceTests(
  adapter: string,
  makeRig: (server: FuseServer) => FsRig,
): void {
  for (const c of CASES) {
    Deno.test(`${adapter}: ${c.op} name changed by a racing vCPU after the first read`, () => {
      for (const layout of LAYOUTS) {
        for (const [name, hostile] of c.swaps) {
          const w = world(makeRig);
          try {
            c.run(w, layout, name, hostile);
            confined(w);
          } catch (e) {
            throw new Error(`${c.op} ${name} → ${hostile} (${layout}): ${(e as Error).message}`, {
              cause: e,
            });
          } finally {
            dispose(w);
          }
        }
      }
    });
  }
}
