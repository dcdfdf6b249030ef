import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../../hv/memory.ts";
import { bit, FEATURE } from "../device.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { completeChecksum, NET_F, NET_HDR_F, NET_HDR_LEN, VirtioNet } from "./device.ts";

const ALL = (1n << 64n) - 1n;
const MAC = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

function setup(wanted = ALL, mtu = 1500) {
  const mem = RegionMemory.fromBytes(4 << 20);
  const sent: Uint8Array[] = [];
  const dev = new VirtioNet({ mac: MAC, mtu, link: { fromGuest: (f) => sent.push(f.slice()) } });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x3e0000);
  const features = drv.init(wanted, 2, 16);
  return { mem, dev, t, drv, sent, features };
}

function frame(len: number, seed = 1): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}

function hdr(flags = 0, csumStart = 0, csumOffset = 0): Uint8Array {
  const h = new Uint8Array(NET_HDR_LEN);
  const v = new DataView(h.buffer);
  h[0] = flags;
  v.setUint16(6, csumStart, true);
  v.setUint16(8, csumOffset, true);
  return h;
}

Deno.test("virtio-net: config space has MAC, link status and MTU", () => {
  const { drv, features } = setup(ALL, 9000);
  strictEqual(drv.r32(0x008), 1);
  ok(features & bit(NET_F.MRG_RXBUF));
  const cfg = drv.config(0, 12);
  deepStrictEqual([...cfg.subarray(0, 6)], [...MAC]);
  const v = new DataView(cfg.buffer);
  strictEqual(v.getUint16(6, true), 1);
  strictEqual(v.getUint16(10, true), 9000);
});

Deno.test("virtio-net: transmit strips the header and hands frames to the link", () => {
  const { drv, sent, dev } = setup();
  const f = frame(60);
  drv.queues[1].add([{ data: hdr() }, { data: f }]);
  drv.queues[1].add([{ data: new Uint8Array(5) }]); // runt: dropped
  drv.kick(1);
  strictEqual(sent.length, 1);
  deepStrictEqual(sent[0], f);
  strictEqual(dev.counters.txDropped, 1);
  strictEqual(drv.queues[1].takeUsed().length, 2);
});

Deno.test("virtio-net: NEEDS_CSUM frames get their checksum completed", () => {
  const { drv, sent } = setup();
  // A fake L4 segment at offset 34 with the checksum field at +16 (TCP).
  const f = frame(100);
  f[34 + 16] = 0;
  f[34 + 17] = 0;
  drv.queues[1].add([{ data: hdr(NET_HDR_F.NEEDS_CSUM, 34, 16) }, { data: f }]);
  drv.kick(1);
  // Summing the covered range including the stored checksum gives 0xffff.
  const g = sent[0];
  let sum = 0;
  for (let i = 34; i < g.length; i += 2) sum += (g[i] << 8) | (g[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  strictEqual(sum, 0xffff);
  ok(!completeChecksum(new Uint8Array(10), 8, 2), "offset past the end is rejected");
});

Deno.test("virtio-net: receive with mergeable buffers spans chains and sets num_buffers", () => {
  const { drv, dev } = setup();
  const f = frame(3000, 9);
  for (let i = 0; i < 4; i++) drv.queues[0].add([{ writable: 1024 }]);
  ok(dev.toGuest(f));
  const used = drv.queues[0].takeUsed();
  strictEqual(used.length, 3);
  const all = new Uint8Array(used.reduce((n, u) => n + u.len, 0));
  let o = 0;
  for (const u of used) {
    all.set(u.written, o);
    o += u.len;
  }
  const v = new DataView(all.buffer);
  strictEqual(v.getUint16(10, true), 3, "num_buffers");
  strictEqual(all[0], NET_HDR_F.DATA_VALID);
  deepStrictEqual(all.subarray(NET_HDR_LEN), f);
});

Deno.test("virtio-net: frames wait for buffers; without MRG_RXBUF too-small buffers drop", () => {
  const a = setup();
  a.dev.toGuest(frame(100));
  strictEqual(a.drv.queues[0].takeUsed().length, 0);
  a.drv.queues[0].add([{ writable: 2048 }]);
  a.drv.kick(0);
  const [u] = a.drv.queues[0].takeUsed();
  strictEqual(u.len, NET_HDR_LEN + 100);
  const b = setup(ALL & ~bit(NET_F.MRG_RXBUF) & ~bit(NET_F.GUEST_CSUM));
  b.drv.queues[0].add([{ writable: 64 }]);
  b.drv.queues[0].add([{ writable: 2048 }]);
  b.dev.toGuest(frame(100));
  b.dev.toGuest(frame(200));
  const used = b.drv.queues[0].takeUsed();
  deepStrictEqual(used.map((x) => x.len), [0, NET_HDR_LEN + 200]);
  strictEqual(b.dev.counters.rxDropped, 1);
  strictEqual(used[1].written[0], 0, "no DATA_VALID without GUEST_CSUM");
});

Deno.test("virtio-net: out of receive buffers, the device re-arms EVENT_IDX so a refill kicks", () => {
  const { drv, dev, features } = setup(ALL & ~bit(NET_F.MRG_RXBUF));
  ok(features & bit(FEATURE.RING_EVENT_IDX));
  const rx = drv.queues[0];
  rx.add([{ writable: 2048 }]);
  drv.kick(0);
  // Two frames, one buffer: the second waits for the driver to post more.
  dev.toGuest(frame(100, 1));
  dev.toGuest(frame(100, 2));
  strictEqual(rx.takeUsed().length, 1);
  // §2.7.10: the driver kicks after adding buffer N only when avail_event is N;
  // a device that left it at 0 would never be told about the refill.
  strictEqual(rx.availEvent, 1);
  rx.add([{ writable: 2048 }]);
  drv.kick(0);
  const used = rx.takeUsed();
  strictEqual(used.length, 1);
  deepStrictEqual(used[0].written.subarray(12), frame(100, 2));
});
