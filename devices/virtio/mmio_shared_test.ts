/**
 * L0 tests of the split virtio-mmio transport across real threads: the
 * register half in a Worker (testdata/mmio_driver_worker.ts plays a vCPU),
 * the device and its queues on this thread behind VirtioMmioHost, guest
 * memory shared. Proves: activation from the shared queue configuration, a
 * notify served on the host with the interrupt bit visible to the Worker, a
 * reset that waits for the batch in progress (not for this thread's event
 * loop) and after which the old activation's accesses are refused, and the
 * transport state's save/restore round trip with its checks.
 */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { StateError } from "../../hv/state.ts";
import { ChainReader, ChainWriter } from "./chain.ts";
import { type DeviceContext, STATUS, type VirtioDevice } from "./device.ts";
import { DeviceResetError, VirtioMmioHost } from "./mmio_host.ts";
import { VirtioMmioTransport } from "./mmio.ts";
import { parseMmioTransportState } from "./mmio_persist.ts";
import { INT, W } from "./mmio_regs.ts";
import { MockMmioDriver } from "./mock_driver.ts";
import { FLAG } from "./testdata/mmio_driver_worker.ts";

const MEM = 1 << 20;
const HANG_MS = 120_000;

/** Echoes readable bytes into writable ones; `hook` may take over one batch. */
class EchoDevice implements VirtioDevice {
  readonly deviceType = 42;
  readonly queueMaxSizes = [8, 8];
  readonly features = 0n;
  ctx: DeviceContext | null = null;
  activations = 0;
  hook: ((ctx: DeviceContext) => void) | null = null;
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = (offset + i) & 0xff;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
  }
  queueNotify(index: number): void {
    const ctx = this.ctx!;
    const hook = this.hook;
    if (hook) {
      this.hook = null;
      return hook(ctx);
    }
    const q = ctx.queues[index];
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      const w = new ChainWriter(ctx.mem, c);
      w.writeSome(new ChainReader(ctx.mem, c).readAll());
      q.addUsed(ctx.mem, c.head, w.written);
    }
    ctx.signalUsed(index);
  }
  reset(): void {
    this.ctx = null;
  }
  save(): unknown {
    return null;
  }
  restore(): void {}
}

/** The Worker playing vCPU 0, with a request/reply helper; device messages go to `host`. */
async function vcpuWorker(host: VirtioMmioHost, memory: SharedArrayBuffer, flags: Int32Array) {
  const worker = new Worker(new URL("./testdata/mmio_driver_worker.ts", import.meta.url).href, {
    type: "module",
  });
  let pending: ((r: Record<string, unknown>) => void) | null = null;
  worker.onmessage = (ev) => {
    const m = ev.data;
    if (m.type === "device") host.handle(m.msg);
    else pending?.(m);
  };
  const call = (cmd: Record<string, unknown>) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      pending = (r) => r.error ? reject(new Error(String(r.error))) : resolve(r);
      worker.postMessage(cmd);
    });
  await call({
    type: "start",
    memory,
    flags: flags.buffer,
    vcpuId: 0,
    config: host.workerConfig(5),
  });
  return { call, [Symbol.dispose]: () => worker.terminate() };
}

function sharedMemory() {
  const sab = new SharedArrayBuffer(MEM);
  const bytes = new Uint8Array(sab) as unknown as Uint8Array<ArrayBuffer>;
  return { sab, memory: new RegionMemory([{ guestAddr: 0, size: MEM, bytes }]) };
}

Deno.test("mmio split: a Worker's driver activates the device here; notify served, interrupt bit seen there", async () => {
  const { sab, memory } = sharedMemory();
  const dev = new EchoDevice();
  let irqs = 0;
  const host = new VirtioMmioHost(dev, memory, { irq: () => irqs++ });
  using w = await vcpuWorker(host, sab, new Int32Array(new SharedArrayBuffer(16)));
  const init = await w.call({ type: "init" });
  strictEqual(init.status, 15);
  ok(host.active, "activated from the shared queue configuration");
  strictEqual(host.queues[0].size, 8);
  await w.call({ type: "ping", text: "ping" });
  const r = await w.call({ type: "used" });
  deepStrictEqual(r.used, ["ping"]);
  strictEqual(r.interrupt, INT.USED_BUFFER);
  strictEqual(irqs, 1);
});

Deno.test("mmio split: a reset waits for the batch in progress only; the old activation is then refused", async () => {
  const { sab, memory } = sharedMemory();
  const dev = new EchoDevice();
  const host = new VirtioMmioHost(dev, memory, { irq: () => {} });
  const flags = new Int32Array(new SharedArrayBuffer(16));
  using w = await vcpuWorker(host, sab, flags);
  await w.call({ type: "init" });
  const words = host.shared.words;
  const epoch = Atomics.load(words, W.EPOCH);
  let stale: unknown = "not tried";
  let staleUsed = 0;
  dev.hook = (ctx) => {
    const q = ctx.queues[0];
    const c = q.pop(ctx.mem)!;
    Atomics.store(flags, FLAG.IN_BATCH, 1);
    Atomics.notify(flags, FLAG.IN_BATCH);
    // Hold the batch until the Worker sleeps on the device lock in its reset.
    const deadline = Date.now() + HANG_MS;
    while (Atomics.load(words, W.DEV_WAITERS) === 0) {
      if (Date.now() > deadline) throw new Error("the Worker never waited for the device lock");
      Atomics.wait(flags, FLAG.SCRATCH, 0, 1);
    }
    const wr = new ChainWriter(ctx.mem, c);
    wr.writeSome(new TextEncoder().encode("served"));
    q.addUsed(ctx.mem, c.head, wr.written);
    Atomics.store(flags, FLAG.BATCH_DONE, 1);
    // After this turn (the lock released), once the reset went through: a
    // stale access of this activation, before the host heard of the reset.
    queueMicrotask(() => {
      const until = Date.now() + HANG_MS;
      while (Atomics.load(words, W.EPOCH) === epoch && Date.now() < until) {
        Atomics.wait(flags, FLAG.SCRATCH, 0, 1);
      }
      staleUsed = q.usedRing;
      try {
        ctx.mem.writeU16(q.usedRing + 2, 0x77);
        stale = "written";
      } catch (e) {
        stale = e;
      }
    });
  };
  const r = await w.call({ type: "reset-during-batch" });
  strictEqual(r.doneAtReset, 1, "the reset returned only after the batch");
  strictEqual(r.statusAfterReset, 0);
  ok(stale instanceof DeviceResetError, `stale access: ${stale}`);
  strictEqual(staleUsed, r.usedRing, "the re-initialised ring is at the same place");
  strictEqual(memory.readU16(staleUsed + 2), 0, "the new used ring was not touched");
  // The reset, then the driver init's own reset (Status 0 first).
  strictEqual(Atomics.load(words, W.EPOCH), epoch + 2);
  ok(host.active);
  strictEqual(dev.activations, 2);
});

Deno.test("mmio split: transport state round-trips, with a bad field named", () => {
  const memory = RegionMemory.fromBytes(MEM);
  const dev = new EchoDevice();
  const t = new VirtioMmioTransport(dev, memory, () => {});
  const drv = new MockMmioDriver(t, memory, 0x10000, 0x80000);
  drv.init((1n << 64n) - 1n, 2, 8);
  drv.queues[1].add([{ data: new TextEncoder().encode("x") }, { writable: 4 }]);
  drv.kick(1);
  const state = JSON.parse(JSON.stringify(t.host.save()));
  deepStrictEqual(parseMmioTransportState(state, dev.queueMaxSizes), state);
  const dev2 = new EchoDevice();
  const host2 = new VirtioMmioHost(dev2, memory, { irq: () => {}, state });
  ok(host2.active);
  deepStrictEqual(host2.save(), t.host.save());
  strictEqual(host2.queues[1].nextUsed, 1);
  strictEqual(host2.shared.load(W.STATUS), STATUS.DRIVER_OK | 11);
  const bad = structuredClone(state);
  bad.queues[1].nextAvail = 70000;
  throws(
    () => new VirtioMmioHost(new EchoDevice(), memory, { irq: () => {}, state: bad }),
    (e) => e instanceof StateError && e.path === "$.queues[1].nextAvail",
  );
  throws(
    () => parseMmioTransportState({ ...state, queues: [state.queues[0]] }, dev.queueMaxSizes),
    (e) => e instanceof StateError && /expected 2 elements/.test(e.message),
  );
  throws(
    () => parseMmioTransportState({ ...state, driverFeatures: 7 }, dev.queueMaxSizes),
    (e) => e instanceof StateError && e.path === "$.driverFeatures",
  );
});
