// L0: virtio-console against a racing vCPU (hostile guest memory): port data
// and control messages are copied once, then used.
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../../hv/memory.ts";
import { HostileMemory, type Range } from "../hostile_memory.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { CONSOLE_EVENT, VirtioConsole } from "./device.ts";

const te = new TextEncoder();
const ALL = (1n << 64n) - 1n;

function setup() {
  const inner = RegionMemory.fromBytes(2 << 20);
  const mem = new HostileMemory(inner);
  const dev = new VirtioConsole({ portNames: ["a", "b"] });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, inner, 0x10000, 0x1e0000);
  drv.init(ALL, dev.queueMaxSizes.length, 16);
  return { mem, dev, drv };
}

function ctl(id: number, event: number, value: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return b;
}

Deno.test("virtio-console race: transmitted bytes changed after the first read reach the host as read", () => {
  const { mem, dev, drv } = setup();
  const got: Uint8Array[] = [];
  dev.ports[1].onData = (b) => got.push(b.slice());
  const q = drv.queues[5]; // transmit queue of port 1 (§5.3.2)
  const head = q.add([{ data: te.encode("echo hello") }, { data: te.encode(" world\n") }]);
  const readable: Range[] = q.buffers(head).map((b) => ({ addr: b.addr, length: b.len }));
  mem.raceAfterFirstRead(q.readableAddr(head, 0), te.encode("rm -rf /;"));
  mem.clear();
  drv.kick(5);
  strictEqual(mem.racesFired, 1);
  deepStrictEqual(got, [te.encode("echo hello world\n")]);
  mem.assertCopiedOnce(readable, "port data");
  mem.assertNoDoubleReads([{ addr: q.rings.avail + 2, length: 2 }]);
  mem.assertNoReadBack();
});

Deno.test("virtio-console race: a control message changed after the first read is handled as read", () => {
  const { mem, dev, drv } = setup();
  const opened: boolean[] = [];
  dev.ports[2].onGuestOpen = (o) => opened.push(o);
  const q = drv.queues[3]; // control transmit
  const head = q.add([{ data: ctl(2, CONSOLE_EVENT.PORT_OPEN, 1) }]);
  const readable: Range[] = q.buffers(head).map((b) => ({ addr: b.addr, length: b.len }));
  // After the read: another port, another event, another value.
  mem.raceAfterFirstRead(q.readableAddr(head, 0), ctl(1, CONSOLE_EVENT.PORT_READY, 0));
  mem.clear();
  drv.kick(3);
  strictEqual(mem.racesFired, 1);
  deepStrictEqual(opened, [true]);
  ok(dev.ports[2].guestOpen);
  ok(!dev.ports[1].ready);
  mem.assertCopiedOnce(readable, "control message");
  mem.assertNoDoubleReads([{ addr: q.rings.avail + 2, length: 2 }]);
  mem.assertNoReadBack();
});

Deno.test("virtio-console race: host bytes go into receive buffers without being read back", () => {
  const { mem, dev, drv } = setup();
  // Port 0 is the console: ready once the guest says so; here without the
  // control handshake, MULTIPORT is negotiated, so mark it as Linux would.
  dev.ports[0].ready = true;
  const q = drv.queues[0];
  const head = q.add([{ writable: 8 }, { writable: 8 }]);
  const writable: Range[] = q.buffers(head).map((b) => ({ addr: b.addr, length: b.len }));
  mem.clear();
  dev.ports[0].send(te.encode("0123456789abc"));
  deepStrictEqual(q.takeUsed().map((u) => u.len), [13]);
  mem.assertNoReadBack();
  for (const w of writable) deepStrictEqual(mem.readCounts(w), new Array(w.length).fill(0));
});
