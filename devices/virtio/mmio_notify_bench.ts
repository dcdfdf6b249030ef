/**
 * A virtio request round trip through skiff's shared virtio-mmio transport
 * against the bare mechanism it is built on, in one run:
 *
 * - **virtio**: a guest driver (devices/virtio/testdata/smp_guest.ts, one
 *   vCPU) puts a request on its queue and writes QueueNotify (an ioeventfd:
 *   no exit); the device's host half on the main thread pops the chain
 *   through the guarded memory, writes the reply, adds a used entry and
 *   raises the interrupt (`KVM_IRQ_LINE`); the guest sleeps in `hlt` until
 *   its handler acknowledged InterruptStatus (two register exits on the
 *   shared register file) and then checks the reply;
 * - **reference**: hv/notify_cost_bench.ts's ioeventfd + `KVM_IRQ_LINE`
 *   doorbell round trip, with no virtio on either side.
 *
 * Prints `virtio-notify shared-transport=<µs> reference=<µs> ratio=<r>`
 * (medians of alternating rounds, µs per round trip; ratio = reference /
 * virtio, so 1 would mean the transport and device cost nothing on top).
 *
 * @module
 */

import { RegionMemory } from "../../hv/memory.ts";
import { TimerDeviceHost } from "../../hv/testing/timer_device.ts";
import { runVariant } from "../../hv/notify_cost_bench.ts";
import { F, L, loadPrograms, OK, smpPrograms } from "./testdata/smp_guest.ts";
import { smpMachine, waitOrStop } from "./testdata/smp_machine.ts";

/** Round trips per measurement. */
export const TRIPS = 2_000;
/** Alternating rounds per variant. */
export const ROUNDS = 5;

async function virtioRoundTrip(trips: number): Promise<number> {
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: L.RAM }], "skiff-virtio-bench");
  const timer = new TimerDeviceHost(0x80);
  await using m = smpMachine(memory, 1, undefined, { irq: "irq-line", devices: [timer.spec] });
  loadPrograms(
    memory,
    m.vm.vcpus.map((v) => v.fd),
    smpPrograms({ cpus: 1, rounds: trips, marks: true }),
  );
  await m.vm.start();
  const stop = await waitOrStop(m.vm, 600_000, () => `${m.device.served}`);
  if (stop.kind !== "poweroff" || memory.readU32(F.result(0)) !== OK) {
    throw new Error(
      `virtio guest ended ${JSON.stringify(stop)} with result 0x${
        memory.readU32(F.result(0)).toString(16)
      }`,
    );
  }
  return timer.elapsedMs() * 1000 / trips;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Alternates both variants {@link ROUNDS} times; returns the `virtio-notify` line. */
export async function bench(): Promise<string[]> {
  const virtio: number[] = [];
  const reference: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    virtio.push(await virtioRoundTrip(TRIPS));
    reference.push(await runVariant({ notify: "ioeventfd", irq: "irq-line" }, TRIPS));
  }
  const v = median(virtio), ref = median(reference);
  return [
    `virtio-notify shared-transport=${v.toFixed(2)} reference=${ref.toFixed(2)} ratio=${
      (ref / v).toFixed(2)
    } min-ratio=${(Math.min(...reference) / Math.min(...virtio)).toFixed(2)}`,
  ];
}

if (import.meta.main) console.log((await bench()).join("\n"));
