import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { ChainReader, ChainWriter } from "./chain.ts";
import { bit, type DeviceContext, FEATURE, STATUS, type VirtioDevice } from "./device.ts";
import { MockMmioDriver } from "./mock_driver.ts";
import { INT, MMIO, MMIO_MAGIC, VirtioMmioTransport } from "./mmio.ts";
import { VirtqueueError } from "./queue.ts";

const te = new TextEncoder();
const td = new TextDecoder();

/** Echoes each chain's readable bytes into its writable bytes; 8 bytes of config. */
class EchoDevice implements VirtioDevice {
  readonly deviceType = 42;
  readonly queueMaxSizes = [8, 4];
  readonly features = bit(0) | bit(5);
  ctx: DeviceContext | null = null;
  cfg = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  resets = 0;
  activations = 0;
  notified: number[] = [];
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.cfg[offset + i] ?? 0;
  }
  writeConfig(offset: number, data: Uint8Array): void {
    this.cfg.set(data.subarray(0, Math.max(0, 8 - offset)), offset);
  }
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
  }
  queueNotify(index: number): void {
    this.notified.push(index);
    const ctx = this.ctx!;
    const q = ctx.queues[index];
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      const data = new ChainReader(ctx.mem, c).readAll();
      const w = new ChainWriter(ctx.mem, c);
      w.writeSome(data);
      q.addUsed(ctx.mem, c.head, w.written);
    }
    ctx.signalUsed(index);
  }
  reset(): void {
    this.ctx = null;
    this.resets++;
  }
  save(): unknown {
    return { cfg: [...this.cfg] };
  }
  restore(state: unknown): void {
    this.cfg = Uint8Array.from((state as { cfg: number[] }).cfg);
  }
}

function setup() {
  const mem = RegionMemory.fromBytes(1 << 20);
  const dev = new EchoDevice();
  const irqs: boolean[] = [];
  const errors: unknown[] = [];
  const t = new VirtioMmioTransport(dev, mem, (a) => irqs.push(a), {
    onDeviceError: (e) => errors.push(e),
  });
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x80000);
  return { mem, dev, t, drv, irqs, errors };
}

const ALL = (1n << 64n) - 1n;

Deno.test("mmio: identification registers and features", () => {
  const { drv, t } = setup();
  strictEqual(drv.r32(MMIO.MAGIC_VALUE), MMIO_MAGIC);
  strictEqual(drv.r32(MMIO.VERSION), 2);
  strictEqual(drv.r32(MMIO.DEVICE_ID), 42);
  const f = drv.deviceFeatures();
  strictEqual(
    f,
    bit(0) | bit(5) | bit(FEATURE.VERSION_1) | bit(FEATURE.RING_INDIRECT_DESC) |
      bit(FEATURE.RING_EVENT_IDX),
  );
  strictEqual(t.deviceFeatures, f);
  // Unaligned / narrow register reads give 0 and do not throw.
  const b = new Uint8Array(2);
  t.read(MMIO.MAGIC_VALUE, b);
  deepStrictEqual([...b], [0, 0]);
  t.write(MMIO.STATUS + 1, new Uint8Array(4).fill(0xff));
  strictEqual(t.status, 0);
});

Deno.test("mmio: negotiation, queue setup, notify and used interrupt", () => {
  const { drv, dev, t, irqs } = setup();
  const f = drv.init(ALL, 2, 8);
  ok(f & bit(FEATURE.VERSION_1));
  strictEqual(t.driverFeatures, f);
  strictEqual(t.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  strictEqual(dev.activations, 1);
  strictEqual(t.queues[0].size, 8);
  strictEqual(t.queues[1].size, 4);
  ok(t.queues[0].eventIdx);
  const q = drv.queues[0];
  q.add([{ data: te.encode("ping") }, { writable: 8 }]);
  drv.kick(0);
  deepStrictEqual(dev.notified, [0]);
  const used = q.takeUsed();
  strictEqual(td.decode(used[0].written), "ping");
  // EVENT_IDX (§2.7.10): the device moved avail_event past what it consumed, so
  // the driver notifies for the next buffer (unmoved, Linux would stay silent).
  strictEqual(q.availEvent, 1);
  q.add([{ data: te.encode("pong") }, { writable: 8 }]);
  drv.kick(0);
  strictEqual(q.availEvent, 2);
  strictEqual(td.decode(q.takeUsed()[0].written), "pong");
  deepStrictEqual(irqs, [true]);
  strictEqual(drv.r32(MMIO.INTERRUPT_STATUS), INT.USED_BUFFER);
  strictEqual(drv.ackInterrupt(), INT.USED_BUFFER);
  strictEqual(drv.r32(MMIO.INTERRUPT_STATUS), 0);
  deepStrictEqual(irqs, [true, false]);
  // Queue address registers read back.
  drv.w32(MMIO.QUEUE_SEL, 0);
  strictEqual(drv.r32(MMIO.QUEUE_DESC_LOW), q.rings.desc);
  strictEqual(drv.r32(MMIO.QUEUE_NUM_MAX), 8);
  drv.w32(MMIO.QUEUE_SEL, 7);
  strictEqual(drv.r32(MMIO.QUEUE_NUM_MAX), 0, "non-existent queue");
  drv.kick(7); // ignored
});

Deno.test("mmio: FEATURES_OK refused without VERSION_1 or with unoffered bits", () => {
  const { drv, t } = setup();
  let refused = false;
  try {
    drv.init(bit(0), 1);
  } catch {
    refused = true;
  }
  ok(refused);
  strictEqual(t.status & STATUS.FEATURES_OK, 0);
  // Unoffered feature bit 7.
  drv.w32(MMIO.STATUS, 0);
  drv.w32(MMIO.STATUS, 1);
  drv.w32(MMIO.STATUS, 3);
  drv.w32(MMIO.DRIVER_FEATURES_SEL, 0);
  drv.w32(MMIO.DRIVER_FEATURES, 1 << 7);
  drv.w32(MMIO.DRIVER_FEATURES_SEL, 1);
  drv.w32(MMIO.DRIVER_FEATURES, 1);
  drv.w32(MMIO.STATUS, 11);
  strictEqual(t.status, 3);
});

Deno.test("mmio: status state machine ignores skipped steps and resets on 0", () => {
  const { drv, t, dev } = setup();
  drv.w32(MMIO.STATUS, STATUS.DRIVER_OK); // skipping everything: ignored
  strictEqual(t.status, 0);
  drv.w32(MMIO.STATUS, 1);
  drv.w32(MMIO.STATUS, 1 | 2 | 8); // skipping DRIVER: ignored
  strictEqual(t.status, 1);
  drv.init(ALL, 2);
  strictEqual(dev.activations, 1);
  drv.w32(MMIO.STATUS, 1); // clearing bits is not allowed except by 0
  strictEqual(t.status & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
  // Queue registers are frozen after DRIVER_OK.
  drv.w32(MMIO.QUEUE_SEL, 0);
  drv.w32(MMIO.QUEUE_NUM, 2);
  strictEqual(t.queues[0].size, 8);
  drv.w32(MMIO.STATUS, 0);
  strictEqual(t.status, 0);
  strictEqual(dev.resets, 1);
  strictEqual(t.queues[0].ready, false);
  strictEqual(t.driverFeatures, 0n);
  drv.w32(MMIO.QUEUE_SEL, 0);
  strictEqual(drv.r32(MMIO.QUEUE_READY), 0);
  // FAILED stops the device.
  drv.init(ALL, 2);
  drv.w32(MMIO.STATUS, t.status | STATUS.FAILED);
  ok(t.status & STATUS.FAILED);
  strictEqual(dev.resets, 2);
  strictEqual(t.active, false);
});

Deno.test("mmio: config space and ConfigGeneration", () => {
  const { drv, dev, t, irqs } = setup();
  deepStrictEqual([...drv.config(2, 4)], [3, 4, 5, 6]);
  deepStrictEqual([...drv.config(6, 4)], [7, 8, 0, 0]);
  const g0 = drv.r32(MMIO.CONFIG_GENERATION);
  drv.init(ALL, 2);
  dev.cfg[0] = 99;
  dev.ctx!.signalConfig();
  strictEqual(drv.r32(MMIO.CONFIG_GENERATION), g0 + 1);
  strictEqual(drv.r32(MMIO.INTERRUPT_STATUS), INT.CONFIG_CHANGE);
  deepStrictEqual(irqs, [true]);
  t.write(MMIO.CONFIG + 1, new Uint8Array([42]));
  strictEqual(dev.cfg[1], 42);
});

Deno.test("mmio: a bad chain sets DEVICE_NEEDS_RESET and a config interrupt, never throws", () => {
  const { drv, t, errors } = setup();
  drv.init(ALL, 2, 8);
  const q = drv.queues[0];
  q.writeDesc(q.rings.desc, 0, 0x1000, 4, 1, 0); // NEXT to itself: a loop
  q.pushAvail(0);
  drv.kick(0);
  ok(t.status & STATUS.DEVICE_NEEDS_RESET);
  ok(errors[0] instanceof VirtqueueError);
  strictEqual(drv.r32(MMIO.INTERRUPT_STATUS) & INT.CONFIG_CHANGE, INT.CONFIG_CHANGE);
  strictEqual(t.active, false);
  // The driver resets and starts over.
  drv.init(ALL, 2, 8);
  strictEqual(t.status & STATUS.DEVICE_NEEDS_RESET, 0);
  ok(t.active);
});

Deno.test("mmio: a ring outside memory at DRIVER_OK sets DEVICE_NEEDS_RESET", () => {
  const { drv, t } = setup();
  drv.w32(MMIO.STATUS, 1);
  drv.w32(MMIO.STATUS, 3);
  drv.w32(MMIO.DRIVER_FEATURES_SEL, 1);
  drv.w32(MMIO.DRIVER_FEATURES, 1);
  drv.w32(MMIO.STATUS, 11);
  drv.w32(MMIO.QUEUE_SEL, 0);
  drv.w32(MMIO.QUEUE_NUM, 8);
  drv.w32(MMIO.QUEUE_DESC_HIGH, 0x10);
  drv.w32(MMIO.QUEUE_READY, 1);
  drv.w32(MMIO.STATUS, 15);
  ok(t.status & STATUS.DEVICE_NEEDS_RESET);
  strictEqual(t.active, false);
});

Deno.test("mmio: save/restore round-trips an active device", () => {
  const a = setup();
  a.drv.init(ALL, 2, 8);
  a.drv.queues[0].add([{ data: te.encode("one") }, { writable: 3 }]);
  a.drv.kick(0);
  const state = JSON.parse(JSON.stringify(a.t.save()));
  // A fresh transport over the same memory continues where the first stopped.
  const dev2 = new EchoDevice();
  const t2 = new VirtioMmioTransport(dev2, a.mem, () => {});
  t2.restore(state);
  ok(t2.active);
  strictEqual(dev2.activations, 1);
  deepStrictEqual(t2.save(), a.t.save());
  a.drv.queues[0].add([{ data: te.encode("two") }, { writable: 3 }]);
  t2.notify(0);
  const used = a.drv.queues[0].takeUsed();
  deepStrictEqual(used.map((u) => td.decode(u.written)), ["one", "two"]);
});
