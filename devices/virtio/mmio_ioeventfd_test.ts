/**
 * L0 tests of {@link VirtioMmioHost.attachIoeventfds} with real eventfds and
 * a stand-in VM: the registrations (QueueNotify address, 4 bytes, one
 * datamatch per queue), notifies reaching the device, a restored device's
 * queues served once when its restore is finished, and deassignment on
 * dispose. The L1 test on /dev/kvm is in console/console_kvm_test.ts.
 */

import { deepStrictEqual, ok } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import type { DeviceContext, VirtioDevice } from "./device.ts";
import { MMIO, VirtioMmioTransport } from "./mmio.ts";
import { type IoeventfdVm, VirtioMmioHost } from "./mmio_host.ts";
import { MockMmioDriver } from "./mock_driver.ts";
import { signalEventfd } from "../../kvm_ffi/eventfd.ts";
import { libc, POLL } from "../../kvm_ffi/libc.ts";
import { HANG_MS } from "../../tests/waits.ts";

const BASE = 0xd000_0000;

class SpyDevice implements VirtioDevice {
  readonly deviceType = 42;
  readonly queueMaxSizes = [8, 8];
  readonly features = 1n << 32n;
  notified: number[] = [];
  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  writeConfig(): void {}
  activate(_ctx: DeviceContext): void {}
  queueNotify(index: number): void {
    this.notified.push(index);
  }
  reset(): void {}
  save(): unknown {
    return null;
  }
  restore(): void {}
}

interface Call {
  fd: number;
  addr: number;
  len: number;
  datamatch?: bigint;
  deassign?: boolean;
}

class FakeVm implements IoeventfdVm {
  calls: Call[] = [];
  ioeventfd(
    fd: number,
    addr: number,
    len: number,
    opts: { datamatch?: bigint; deassign?: boolean } = {},
  ): void {
    this.calls.push({ fd, addr, len, ...opts });
  }
}

/** Whether `fd` has something to read (poll(2) without waiting). */
function readable(fd: number): boolean {
  const pfd = new Uint8Array(8);
  const dv = new DataView(pfd.buffer);
  dv.setInt32(0, fd, true);
  dv.setInt16(4, POLL.IN, true);
  return libc.poll(pfd, 1n, 0) > 0 && (dv.getInt16(6, true) & POLL.IN) !== 0;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + HANG_MS; // only catches a hang
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("mmio ioeventfds: one per queue at QueueNotify; notifies reach the device; dispose deassigns", async () => {
  const dev = new SpyDevice();
  const mem = RegionMemory.fromBytes(1 << 20);
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const vm = new FakeVm();
  const io = t.host.attachIoeventfds(vm, BASE);
  try {
    deepStrictEqual(
      vm.calls.map((c) => [c.addr, c.len, c.datamatch, c.deassign]),
      [[BASE + MMIO.QUEUE_NOTIFY, 4, 0n, undefined], [BASE + MMIO.QUEUE_NOTIFY, 4, 1n, undefined]],
    );
    // Before DRIVER_OK a notify finds no active device and is dropped.
    signalEventfd(vm.calls[1].fd);
    // The host has read (and handled) the notify once the eventfd is empty again.
    await until("the early notify read", () => !readable(vm.calls[1].fd));
    deepStrictEqual(dev.notified, []);
    new MockMmioDriver(t, mem, 0x10000, 0x80000).init((1n << 64n) - 1n, 2, 8);
    ok(t.active);
    signalEventfd(vm.calls[1].fd);
    await until("notify of queue 1", () => dev.notified.length === 1);
    signalEventfd(vm.calls[0].fd);
    signalEventfd(vm.calls[0].fd); // two writes before the host looks: one notify
    await until("notify of queue 0", () => dev.notified.length === 2);
    await until("both writes read", () => !readable(vm.calls[0].fd));
    deepStrictEqual(dev.notified, [1, 0]);
  } finally {
    await io[Symbol.asyncDispose]();
  }
  const assigned = vm.calls.slice(0, 2);
  deepStrictEqual(
    vm.calls.slice(2).map((c) => [c.fd, c.addr, c.datamatch, c.deassign]),
    assigned.map((c) => [c.fd, c.addr, c.datamatch, true]),
  );
});

Deno.test("mmio: a restored active device gets every ready queue served once after the VM state", () => {
  const mem = RegionMemory.fromBytes(1 << 20);
  const t = new VirtioMmioTransport(new SpyDevice(), mem, () => {});
  new MockMmioDriver(t, mem, 0x10000, 0x80000).init((1n << 64n) - 1n, 2, 8);
  const state = JSON.parse(JSON.stringify(t.host.save()));
  const dev = new SpyDevice();
  let irqs = 0;
  const host = new VirtioMmioHost(dev, mem, { irq: () => irqs++, state });
  ok(host.active);
  deepStrictEqual(dev.notified, [], "nothing served while the VM state is not back");
  host.resumeAfterRestore();
  deepStrictEqual(dev.notified, [0, 1], "notifications lost with the eventfds are replayed");
  deepStrictEqual(irqs, 0, "no interrupt was pending");
});

Deno.test("mmio ioeventfds: a failing registration undoes the ones before it", () => {
  const host = new VirtioMmioHost(new SpyDevice(), RegionMemory.fromBytes(1 << 16), {
    irq: () => {},
  });
  const vm = new FakeVm();
  const failing: IoeventfdVm = {
    ioeventfd(fd, addr, len, opts = {}) {
      vm.ioeventfd(fd, addr, len, opts);
      if (opts.datamatch === 1n && !opts.deassign) throw new Error("KVM_IOEVENTFD failed: ENOSPC");
    },
  };
  let threw = false;
  try {
    host.attachIoeventfds(failing, BASE);
  } catch (e) {
    threw = /ENOSPC/.test(String(e));
  }
  ok(threw);
  deepStrictEqual(
    vm.calls.map((c) => [c.datamatch, c.deassign ?? false]),
    [[0n, false], [1n, false], [0n, true], [1n, true]],
  );
});
