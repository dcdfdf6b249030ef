import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { CONSOLE_EVENT, PORT_NAMES, VirtioConsole } from "./console/device.ts";
import { STATUS } from "./device.ts";
import { MockMmioDriver } from "./mock_driver.ts";
import { INT, MMIO } from "./mmio.ts";
import { type RemoteMessage, remoteTransport, VirtioMmioHost } from "./mmio_remote.ts";

const te = new TextEncoder();
const td = new TextDecoder();
const ALL = (1n << 64n) - 1n;

function ctl(id: number, event: number, value: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return b;
}

/** Both halves in one thread; messages are structured-cloned as between threads. */
function setup(mem = RegionMemory.fromBytes(2 << 20), host?: VirtioMmioHost) {
  const dev = host?.device as VirtioConsole ??
    new VirtioConsole({ portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout] });
  let irqs = 0;
  const errors: unknown[] = [];
  const h = host ?? new VirtioMmioHost(dev, mem, {
    irq: () => irqs++,
    onDeviceError: (e) => errors.push(e),
  });
  const messages: string[] = [];
  const t = remoteTransport(h.workerConfig(5), mem, (m: RemoteMessage) => {
    messages.push(m.type);
    h.handle(structuredClone(m));
  }, () => irqs++);
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x1e0000);
  return { mem, dev, host: h, t, drv, messages, errors, irqs: () => irqs };
}

Deno.test("mmio remote: console served on the host half, registers on the transport half", () => {
  const s = setup();
  s.drv.init(ALL, s.dev.queueMaxSizes.length, 16);
  ok(s.host.active);
  ok(s.messages.includes("activate"));
  // Config space comes from the shared mirror.
  strictEqual(new DataView(s.drv.config(4, 4).buffer).getUint32(0, true), 3);
  const q = s.drv.queues;
  for (let i = 0; i < 4; i++) q[2].add([{ writable: 64 }]);
  s.drv.kick(2);
  q[3].add([{ data: ctl(0, CONSOLE_EVENT.DEVICE_READY, 1) }]);
  s.drv.kick(3);
  strictEqual(q[2].takeUsed().length, 3, "DEVICE_ADD for 3 ports");
  // The host raised InterruptStatus in the shared words; the transport reads it.
  strictEqual(s.drv.r32(MMIO.INTERRUPT_STATUS) & INT.USED_BUFFER, INT.USED_BUFFER);
  s.drv.ackInterrupt();
  strictEqual(s.drv.r32(MMIO.INTERRUPT_STATUS), 0);
  q[3].add([{ data: ctl(1, CONSOLE_EVENT.PORT_READY, 1) }]);
  s.drv.kick(3);
  // Host → guest (stdin, port 1 → rx queue 4), pushed from the host thread.
  q[4].add([{ writable: 16 }]);
  s.drv.kick(4);
  const before = s.irqs();
  s.dev.port(PORT_NAMES.stdin).send(te.encode("input"));
  ok(s.irqs() > before);
  deepStrictEqual(q[4].takeUsed().map((u) => td.decode(u.written)), ["input"]);
  // Guest → host (stdout, port 2 → tx queue 7).
  let out = "";
  s.dev.port(PORT_NAMES.stdout).onData = (b) => out += td.decode(b);
  q[7].add([{ data: te.encode("output") }]);
  s.drv.kick(7);
  strictEqual(out, "output");
});

Deno.test("mmio remote: reset waits for the host; host-side errors set DEVICE_NEEDS_RESET", () => {
  const s = setup();
  s.drv.init(ALL, s.dev.queueMaxSizes.length, 16);
  s.drv.w32(MMIO.STATUS, 0);
  ok(!s.host.active);
  ok(s.messages.includes("reset"));
  s.drv.init(ALL, s.dev.queueMaxSizes.length, 16);
  ok(s.host.active);
  // A looping chain on the control transmit queue, served on the host.
  const q = s.drv.queues[3];
  q.writeDesc(q.rings.desc, 0, 0x1000, 8, 1, 0);
  q.pushAvail(0);
  s.drv.kick(3);
  ok(!s.host.active);
  strictEqual(s.errors.length, 1);
  ok(s.drv.r32(MMIO.STATUS) & STATUS.DEVICE_NEEDS_RESET);
  ok(s.drv.r32(MMIO.INTERRUPT_STATUS) & INT.CONFIG_CHANGE);
  strictEqual(s.t.active, false);
  s.drv.init(ALL, s.dev.queueMaxSizes.length, 16);
  ok(s.host.active);
  strictEqual(s.drv.r32(MMIO.STATUS) & STATUS.DEVICE_NEEDS_RESET, 0);
});

Deno.test("mmio remote: host save → restore into a fresh pair continues the queues", () => {
  const a = setup();
  a.drv.init(ALL, a.dev.queueMaxSizes.length, 16);
  const q = a.drv.queues;
  for (let i = 0; i < 4; i++) q[2].add([{ writable: 64 }]);
  a.drv.kick(2);
  q[3].add([{ data: ctl(0, CONSOLE_EVENT.DEVICE_READY, 1) }]);
  a.drv.kick(3);
  q[3].add([{ data: ctl(1, CONSOLE_EVENT.PORT_READY, 1) }]);
  a.drv.kick(3);
  a.dev.port(PORT_NAMES.stdin).send(te.encode("kept"));
  const state = JSON.parse(JSON.stringify(a.host.save()));
  ok(state);
  const dev2 = new VirtioConsole({ portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout] });
  const host2 = new VirtioMmioHost(dev2, a.mem, { irq: () => {} });
  host2.restore(state);
  const b = setup(a.mem, host2);
  ok(host2.active, "the restored transport re-activated the host device");
  strictEqual(b.t.status, a.t.status);
  q[4].add([{ writable: 16 }]);
  b.t.notify(4);
  deepStrictEqual(q[4].takeUsed().map((u) => td.decode(u.written)), ["kept"]);
});
