// L0: virtio-net against a racing vCPU (hostile guest memory): a transmitted
// frame and its virtio-net header are copied once, then parsed; what the
// guest writes afterwards changes nothing the network stack receives.
import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../../hv/memory.ts";
import { HostileMemory, type Range } from "../hostile_memory.ts";
import { type MockBuffer, MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { completeChecksum, NET_HDR_F, NET_HDR_LEN, VirtioNet } from "./device.ts";

const ALL = (1n << 64n) - 1n;
const MAC = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

function setup() {
  const inner = RegionMemory.fromBytes(4 << 20);
  const mem = new HostileMemory(inner);
  const sent: Uint8Array[] = [];
  const dev = new VirtioNet({ mac: MAC, link: { fromGuest: (f) => sent.push(f.slice()) } });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, inner, 0x10000, 0x3e0000);
  drv.init(ALL, 2, 16);
  return { mem, dev, drv, sent };
}

function frame(len: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 13 + 5) & 0xff;
  f[12] = 0x08; // IPv4
  f[13] = 0x00;
  return f;
}

function hdr(flags: number, csumStart: number, csumOffset: number): Uint8Array {
  const h = new Uint8Array(NET_HDR_LEN);
  const v = new DataView(h.buffer);
  h[0] = flags;
  v.setUint16(6, csumStart, true);
  v.setUint16(8, csumOffset, true);
  return h;
}

for (const layout of ["header | frame", "one buffer"] as const) {
  Deno.test(`virtio-net race: header and frame changed after the first read (${layout})`, () => {
    const { mem, drv, sent } = setup();
    const q = drv.queues[1];
    const f = frame(74);
    const h = hdr(NET_HDR_F.NEEDS_CSUM, 34, 6);
    const bufs: MockBuffer[] = layout === "one buffer"
      ? [{ data: new Uint8Array([...h, ...f]) }]
      : [{ data: h }, { data: f }];
    const head = q.add(bufs);
    const readable: Range[] = q.buffers(head).map((b) => ({ addr: b.addr, length: b.len }));
    // After the device's read: no checksum wanted, csum_start/offset past the frame
    // (a second read would write out of bounds or skip the checksum) …
    mem.raceAfterFirstRead(q.readableAddr(head, 0), hdr(0, 0xfff0, 0xfff0));
    // … an ARP ethertype and different payload bytes.
    mem.raceAfterFirstRead(q.readableAddr(head, NET_HDR_LEN + 12), new Uint8Array([8, 6, 1, 2]));
    mem.raceAfterFirstRead(q.readableAddr(head, NET_HDR_LEN + 60), new Uint8Array(14));
    mem.clear();
    drv.kick(1);
    strictEqual(mem.racesFired, 3);
    const expected = f.slice();
    completeChecksum(expected, 34, 6);
    deepStrictEqual(sent, [expected], "the stack got the frame as first read, checksum completed");
    mem.assertCopiedOnce(readable, "tx chain");
    mem.assertNoDoubleReads([{ addr: q.rings.avail + 2, length: 2 }], "tx");
    mem.assertNoReadBack("tx");
    strictEqual(q.takeUsed().length, 1);
  });
}

Deno.test("virtio-net race: receive writes frames into guest buffers and reads none of it back", () => {
  const { mem, dev, drv } = setup();
  const q = drv.queues[0];
  const heads = [q.add([{ writable: 64 }]), q.add([{ writable: 64 }])];
  const writable: Range[] = heads.flatMap((h) =>
    q.buffers(h).map((b) => ({ addr: b.addr, length: b.len }))
  );
  mem.clear();
  dev.toGuest(frame(100)); // mergeable: spans both buffers
  const used = q.takeUsed();
  strictEqual(used.length, 2);
  mem.assertNoReadBack("rx");
  for (const w of writable) deepStrictEqual(mem.readCounts(w), new Array(w.length).fill(0));
});

Deno.test("virtio-net: a transmit chain longer than any frame is dropped without being read", () => {
  const { mem, dev, drv, sent } = setup();
  const q = drv.queues[1];
  const head = q.add([{ data: new Uint8Array(64) }], { publish: false });
  // The guest points the descriptor at 1 MiB of its memory.
  q.writeDesc(q.rings.desc, head, 0x200000, 1 << 20, 0, 0);
  q.publish();
  mem.clear();
  drv.kick(1);
  deepStrictEqual(sent, []);
  strictEqual(dev.counters.txDropped, 1);
  deepStrictEqual(mem.readCounts({ addr: 0x200000, length: 1 << 20 }).filter((n) => n > 0), []);
  deepStrictEqual(q.takeUsed().map((u) => [u.head, u.len]), [[head, 0]]);
});
