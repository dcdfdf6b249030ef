import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../../hv/memory.ts";
import { bit } from "../device.ts";
import { MockMmioDriver, type MockQueueDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { CONSOLE_EVENT, CONSOLE_F, PORT_NAMES, VirtioConsole } from "./device.ts";

const te = new TextEncoder();
const td = new TextDecoder();
const ALL = (1n << 64n) - 1n;

interface Ctl {
  id: number;
  event: number;
  value: number;
  extra: Uint8Array;
}

function parseCtl(b: Uint8Array): Ctl {
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  return {
    id: v.getUint32(0, true),
    event: v.getUint16(4, true),
    value: v.getUint16(6, true),
    extra: b.subarray(8),
  };
}

function ctl(id: number, event: number, value: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return b;
}

/** A console driver the way Linux's virtio_console brings up ports. */
function setup(names = [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr]) {
  const mem = RegionMemory.fromBytes(2 << 20);
  const dev = new VirtioConsole({ portNames: names, size: { columns: 100, rows: 30 } });
  let irqs = 0;
  const t = new VirtioMmioTransport(dev, mem, (a) => {
    if (a) irqs++;
  });
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x1e0000);
  const features = drv.init(ALL, dev.queueMaxSizes.length, 16);
  const q = (i: number): MockQueueDriver => drv.queues[i];
  const received: Ctl[] = [];
  const pollCtl = () => {
    for (const u of q(2).takeUsed()) received.push(parseCtl(u.written));
  };
  // Control receive buffers, as Linux posts in probe.
  for (let i = 0; i < 8; i++) q(2).add([{ writable: 64 }]);
  drv.kick(2);
  const sendCtl = (id: number, event: number, value: number) => {
    q(3).add([{ data: ctl(id, event, value) }]);
    drv.kick(3);
    q(3).takeUsed();
    pollCtl();
  };
  const repost = () => {
    while (q(2).freeDescriptors > 0) q(2).add([{ writable: 64 }]);
    drv.kick(2);
  };
  return { mem, dev, t, drv, q, received, pollCtl, sendCtl, repost, features, irqs: () => irqs };
}

Deno.test("console: config space advertises size and port count; multiport offered", () => {
  const { drv, features, dev } = setup();
  ok(features & bit(CONSOLE_F.MULTIPORT));
  ok(features & bit(CONSOLE_F.SIZE));
  const cfg = drv.config(0, 8);
  const v = new DataView(cfg.buffer);
  strictEqual(v.getUint16(0, true), 100);
  strictEqual(v.getUint16(2, true), 30);
  strictEqual(v.getUint32(4, true), 4);
  strictEqual(dev.queueMaxSizes.length, 10);
});

Deno.test("console: DEVICE_READY → DEVICE_ADD per port; PORT_READY → CONSOLE_PORT, PORT_NAME, PORT_OPEN", () => {
  const s = setup();
  s.sendCtl(0xffffffff, CONSOLE_EVENT.DEVICE_READY, 1);
  deepStrictEqual(
    s.received.map((c) => [c.id, c.event, c.value]),
    [0, 1, 2, 3].map((id) => [id, CONSOLE_EVENT.DEVICE_ADD, 1]),
  );
  s.received.length = 0;
  s.repost();
  s.sendCtl(0, CONSOLE_EVENT.PORT_READY, 1);
  deepStrictEqual(s.received.map((c) => [c.id, c.event, c.value]), [
    [0, CONSOLE_EVENT.CONSOLE_PORT, 1],
    [0, CONSOLE_EVENT.RESIZE, 0],
    [0, CONSOLE_EVENT.PORT_OPEN, 1],
  ]);
  // RESIZE carries rows then columns (the order Linux reads).
  const r = new DataView(s.received[1].extra.slice().buffer);
  deepStrictEqual([r.getUint16(0, true), r.getUint16(2, true)], [30, 100]);
  s.received.length = 0;
  s.repost();
  s.sendCtl(2, CONSOLE_EVENT.PORT_READY, 1);
  deepStrictEqual(s.received.map((c) => [c.id, c.event, c.value]), [
    [2, CONSOLE_EVENT.PORT_NAME, 1],
    [2, CONSOLE_EVENT.PORT_OPEN, 1],
  ]);
  strictEqual(td.decode(s.received[0].extra), PORT_NAMES.stdout);
  // Guest opens and closes the port.
  const opens: boolean[] = [];
  s.dev.port(PORT_NAMES.stdout).onGuestOpen = (o) => opens.push(o);
  s.sendCtl(2, CONSOLE_EVENT.PORT_OPEN, 1);
  s.sendCtl(2, CONSOLE_EVENT.PORT_OPEN, 0);
  deepStrictEqual(opens, [true, false]);
  // Unknown port ids and garbage events are ignored.
  s.sendCtl(77, CONSOLE_EVENT.PORT_READY, 1);
  s.sendCtl(1, 999, 1);
  strictEqual(s.t.active, true);
});

Deno.test("console: port data both ways, buffered until the guest posts buffers, EOF after close", () => {
  const s = setup();
  s.sendCtl(0, CONSOLE_EVENT.DEVICE_READY, 1);
  s.repost();
  s.sendCtl(1, CONSOLE_EVENT.PORT_READY, 1);
  s.sendCtl(2, CONSOLE_EVENT.PORT_READY, 1);
  s.received.length = 0;
  // Guest → host on skiff.stdout (port 2: tx queue 3 + 2·2 = 7).
  const out: string[] = [];
  s.dev.port(PORT_NAMES.stdout).onData = (b) => out.push(td.decode(b));
  s.q(7).add([{ data: te.encode("hello ") }, { data: te.encode("world") }]);
  s.q(7).add([{ data: te.encode("!") }], { indirect: true });
  s.drv.kick(7);
  deepStrictEqual(out, ["hello world", "!"]);
  strictEqual(s.q(7).takeUsed().length, 2);
  // Host → guest on skiff.stdin (port 1: rx queue 4): buffered first.
  const stdin = s.dev.port(PORT_NAMES.stdin);
  stdin.send(te.encode("abcdefghij"));
  stdin.close();
  strictEqual(stdin.pendingBytes, 10);
  const before = s.irqs();
  s.q(4).add([{ writable: 4 }]);
  s.q(4).add([{ writable: 4 }]);
  s.drv.kick(4);
  strictEqual(s.irqs(), before + 1);
  deepStrictEqual(s.q(4).takeUsed().map((u) => td.decode(u.written)), ["abcd", "efgh"]);
  s.pollCtl();
  strictEqual(s.received.length, 0, "no EOF while bytes remain");
  s.q(4).add([{ writable: 16 }]);
  s.drv.kick(4);
  deepStrictEqual(s.q(4).takeUsed().map((u) => td.decode(u.written)), ["ij"]);
  s.pollCtl();
  deepStrictEqual(s.received.map((c) => [c.id, c.event, c.value]), [
    [1, CONSOLE_EVENT.PORT_OPEN, 0],
  ]);
});

Deno.test("console: resize sends RESIZE on the console port and bumps config generation", () => {
  const s = setup();
  s.sendCtl(0, CONSOLE_EVENT.DEVICE_READY, 1);
  s.repost();
  s.sendCtl(0, CONSOLE_EVENT.PORT_READY, 1);
  s.received.length = 0;
  const gen = s.drv.r32(0x0fc);
  s.dev.resize({ columns: 132, rows: 43 });
  s.pollCtl();
  strictEqual(s.received.length, 1);
  strictEqual(s.received[0].event, CONSOLE_EVENT.RESIZE);
  const r = new DataView(s.received[0].extra.slice().buffer);
  deepStrictEqual([r.getUint16(0, true), r.getUint16(2, true)], [43, 132]);
  strictEqual(s.drv.r32(0x0fc), gen + 1);
  strictEqual(new DataView(s.drv.config(0, 4).buffer).getUint16(0, true), 132);
});

Deno.test("console: hvc0 output and input on port 0 queues", () => {
  const s = setup([]);
  s.sendCtl(0, CONSOLE_EVENT.DEVICE_READY, 1);
  s.repost();
  s.sendCtl(0, CONSOLE_EVENT.PORT_READY, 1);
  let out = "";
  s.dev.console.onData = (b) => out += td.decode(b);
  s.q(1).add([{ data: te.encode("login: ") }]);
  s.drv.kick(1);
  strictEqual(out, "login: ");
  s.q(0).add([{ writable: 32 }]);
  s.drv.kick(0);
  s.dev.console.send(te.encode("root\n"));
  deepStrictEqual(s.q(0).takeUsed().map((u) => td.decode(u.written)), ["root\n"]);
});

Deno.test("console: save/restore keeps pending bytes and port state", () => {
  const s = setup();
  s.sendCtl(0, CONSOLE_EVENT.DEVICE_READY, 1);
  s.repost();
  s.sendCtl(1, CONSOLE_EVENT.PORT_READY, 1);
  s.dev.port(PORT_NAMES.stdin).send(te.encode("later"));
  const state = JSON.parse(JSON.stringify(s.t.save()));
  const dev2 = new VirtioConsole({
    portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr],
  });
  const t2 = new VirtioMmioTransport(dev2, s.mem, () => {});
  t2.restore(state);
  strictEqual(dev2.port(PORT_NAMES.stdin).pendingBytes, 5);
  ok(dev2.port(PORT_NAMES.stdin).ready);
  s.q(4).add([{ writable: 8 }]);
  t2.notify(4);
  deepStrictEqual(s.q(4).takeUsed().map((u) => td.decode(u.written)), ["later"]);
});
