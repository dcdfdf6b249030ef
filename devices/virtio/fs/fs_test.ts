import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../../hv/memory.ts";
import { FileSystem } from "../../fuse/filesystem.ts";
import { FuseServer } from "../../fuse/server.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { VirtioFs } from "./device.ts";

const ALL = (1n << 64n) - 1n;

/** A FUSE request: 40-byte in header + `args`. */
function request(opcode: number, unique: bigint, nodeid: bigint, args: Uint8Array): Uint8Array {
  const b = new Uint8Array(40 + args.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, b.length, true);
  v.setUint32(4, opcode, true);
  v.setBigUint64(8, unique, true);
  v.setBigUint64(16, nodeid, true);
  b.set(args, 40);
  return b;
}

function initArgs(): Uint8Array {
  const a = new Uint8Array(64);
  const v = new DataView(a.buffer);
  v.setUint32(0, 7, true); // major
  v.setUint32(4, 37, true); // minor (Debian 6.1)
  v.setUint32(8, 128 << 10, true); // max_readahead
  return a;
}

function reply(b: Uint8Array) {
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  return { len: v.getUint32(0, true), error: v.getInt32(4, true), unique: v.getBigUint64(8, true) };
}

function setup() {
  const mem = RegionMemory.fromBytes(4 << 20);
  const dev = new VirtioFs({ tag: "skiff-root", server: new FuseServer(new FileSystem()) });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x3e0000);
  drv.init(ALL, dev.queueMaxSizes.length, 16);
  return { mem, dev, t, drv };
}

Deno.test("virtio-fs: config space carries the tag and the request queue count", () => {
  const { drv, dev } = setup();
  strictEqual(drv.r32(0x008), 26);
  const cfg = drv.config(0, 40);
  strictEqual(new TextDecoder().decode(cfg.subarray(0, 10)), "skiff-root");
  deepStrictEqual([...cfg.subarray(10, 36)], new Array(26).fill(0));
  strictEqual(new DataView(cfg.buffer).getUint32(36, true), 1);
  strictEqual(dev.queueMaxSizes.length, 2);
});

Deno.test("virtio-fs: INIT and an ENOSYS reply over the request queue; scattered request and reply", () => {
  const { drv, dev } = setup();
  const q = drv.queues[1];
  const init = request(26, 1n, 0n, initArgs());
  // Header and arguments in separate descriptors (as Linux's virtio_fs sends them).
  q.add([{ data: init.subarray(0, 40) }, { data: init.subarray(40) }, { writable: 16 }, {
    writable: 80,
  }]);
  drv.kick(1);
  const [u] = q.takeUsed();
  const r = reply(u.written);
  strictEqual(r.error, 0);
  strictEqual(r.unique, 1n);
  strictEqual(u.len, r.len);
  strictEqual(new DataView(u.written.buffer).getUint32(16, true), 7, "major 7");
  // LOOKUP on a backend without lookup: ENOSYS.
  q.add([{ data: request(1, 2n, 1n, new TextEncoder().encode("x\0")) }, { writable: 256 }], {
    indirect: true,
  });
  drv.kick(1);
  const [u2] = q.takeUsed();
  strictEqual(reply(u2.written).error, -38);
  strictEqual(dev.requests, 2);
});

Deno.test("virtio-fs: FORGET on the hiprio queue takes no reply; garbage gets an error reply", () => {
  const { drv } = setup();
  const forget = new Uint8Array(8);
  drv.queues[0].add([{ data: request(2, 3n, 5n, forget) }]);
  drv.kick(0);
  const [u] = drv.queues[0].takeUsed();
  strictEqual(u.len, 0);
  drv.queues[1].add([{ data: new Uint8Array([1, 2, 3]) }, { writable: 64 }]);
  drv.kick(1);
  const [g] = drv.queues[1].takeUsed();
  ok(g.len === 0 || reply(g.written).error < 0);
});

Deno.test("virtio-fs: save/restore carries the server state", () => {
  const a = setup();
  const q = a.drv.queues[1];
  q.add([{ data: request(26, 1n, 0n, initArgs()) }, { writable: 96 }]);
  a.drv.kick(1);
  q.takeUsed();
  const state = JSON.parse(JSON.stringify(a.dev.save()));
  const dev2 = new VirtioFs({ tag: "skiff-root", server: new FuseServer(new FileSystem()) });
  dev2.restore(state);
  strictEqual(dev2.server.proto?.major, 7);
});

Deno.test("virtio-fs: a request longer than the server takes is cut at its size and refused", () => {
  const mem = RegionMemory.fromBytes(4 << 20);
  const server = new FuseServer(new FileSystem(), { maxWrite: 4096 });
  const dev = new VirtioFs({ tag: "t", server });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x3e0000);
  drv.init(ALL, dev.queueMaxSizes.length, 16);
  const q = drv.queues[1];
  q.add([{ data: request(26, 1n, 0n, initArgs()) }, { writable: 96 }]);
  drv.kick(1);
  strictEqual(reply(q.takeUsed()[0].written).error, 0);
  // A WRITE of 12 KiB: more than this server's request size (4 KiB + a page).
  const big = request(16, 2n, 1n, new Uint8Array(40 + (12 << 10)));
  ok(big.length > server.requestBufferSize);
  q.add([{ data: big.subarray(0, 40) }, { data: big.subarray(40) }, { writable: 64 }]);
  drv.kick(1);
  const r = reply(q.takeUsed()[0].written);
  strictEqual(r.unique, 2n);
  strictEqual(r.error, -22, "EINVAL: the header's length exceeds what was taken");
});
