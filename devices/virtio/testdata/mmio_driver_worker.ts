/**
 * A Worker that plays a vCPU for the L0 tests of the split transport
 * (mmio_shared_test.ts): it instantiates the register half (mmio_worker.ts)
 * with a stand-in Worker context and drives it with the mock driver over
 * guest memory shared with the main thread, on the main thread's commands.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import type { DeviceContext } from "../../../hv/device.ts";
import { RegionMemory } from "../../../hv/memory.ts";
import { create } from "../mmio_worker.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { MMIO } from "../mmio_regs.ts";

/** Flag words shared with the test. */
export const FLAG = { IN_BATCH: 0, BATCH_DONE: 1, SCRATCH: 2 } as const;

const ALL = (1n << 64n) - 1n;
const td = new TextDecoder();

let drv: MockMmioDriver;
let flags: Int32Array;

function waitFlag(i: number): void {
  const deadline = Date.now() + 120_000;
  while (Atomics.load(flags, i) === 0) {
    if (Date.now() > deadline) throw new Error(`worker: flag ${i} never set`);
    Atomics.wait(flags, i, 0, 100);
  }
}

self.onmessage = (ev: MessageEvent) => {
  const m = ev.data;
  const reply = (r: Record<string, unknown> = {}) => self.postMessage({ type: "reply", ...r });
  try {
    switch (m.type) {
      case "start": {
        const bytes = new Uint8Array(m.memory) as unknown as Uint8Array<ArrayBuffer>;
        const memory = new RegionMemory([{ guestAddr: 0, size: bytes.length, bytes }]);
        const ctx: DeviceContext = {
          name: "test",
          vcpuId: m.vcpuId,
          memory,
          setIrqLine() {},
          post: (msg) => self.postMessage({ type: "device", msg }),
          requestStop() {},
        };
        const regs = create(m.config, ctx);
        const window = {
          read: (o: number, d: Uint8Array) => regs.read(o, d, 0),
          write: (o: number, d: Uint8Array) => regs.write(o, d, 0),
        };
        drv = new MockMmioDriver(window, memory, 0x10000, 0x80000);
        flags = new Int32Array(m.flags);
        return reply();
      }
      case "init":
        drv.init(ALL, 2, 8);
        return reply({ status: drv.r32(MMIO.STATUS) });
      case "ping":
        drv.queues[0].add([{ data: new TextEncoder().encode(m.text) }, { writable: 16 }]);
        drv.kick(0);
        return reply();
      case "used":
        return reply({
          used: drv.queues[0].takeUsed().map((u) => td.decode(u.written)),
          interrupt: drv.ackInterrupt(),
        });
      case "reset-during-batch": {
        drv.queues[0].add([{ data: new TextEncoder().encode("late") }, { writable: 16 }]);
        drv.kick(0);
        waitFlag(FLAG.IN_BATCH);
        drv.w32(MMIO.STATUS, 0); // waits for the batch in progress
        const doneAtReset = Atomics.load(flags, FLAG.BATCH_DONE);
        const statusAfterReset = drv.r32(MMIO.STATUS);
        drv.init(ALL, 2, 8);
        const q = drv.queues[0];
        return reply({ doneAtReset, statusAfterReset, usedRing: q.rings.used });
      }
    }
    throw new Error(`unknown command ${m.type}`);
  } catch (e) {
    self.postMessage({ type: "reply", error: String((e as Error).stack ?? e) });
  }
};
