/**
 * L1: the shared virtio-mmio transport with several vCPUs on /dev/kvm
 * (guest programs in testdata/smp_guest.ts). Every vCPU reads the device's
 * registers and config and has requests served on its own queue (one
 * register file answered by every vCPU's Worker, one device on the main
 * thread, notifications through ioeventfds, interrupts through an irqfd to
 * every vCPU); a reset from one vCPU while another keeps notifying, with a
 * back-end completion arriving after it; and a 2-vCPU snapshot restored in
 * a new process that finishes as an uninterrupted run.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { RegionMemory } from "../../hv/memory.ts";
import { hostTest } from "../../tests/requirements.ts";
import {
  F,
  L,
  loadPrograms,
  OK,
  RESET_AFTER_NOTIFIES,
  resetPrograms,
  smpPrograms,
} from "./testdata/smp_guest.ts";
import { smpMachine, waitOrStop } from "./testdata/smp_machine.ts";

/** Only catches hangs: the guests need well under a second alone. */
const HANG_MS = 120_000;

function results(memory: RegionMemory, cpus: number): string {
  return Array.from(
    { length: cpus },
    (_, i) =>
      `vCPU ${i}: result 0x${memory.readU32(F.result(i)).toString(16)} done ${
        memory.readU32(F.done(i))
      } rounds ${memory.readU32(F.progress(i))}`,
  ).join("; ");
}

for (const cpus of [2, 4]) {
  hostTest(
    `virtio-mmio SMP L1: ${cpus} vCPUs each read the registers and get requests served on their queue`,
    ["kvm"],
    async () => {
      const rounds = 6;
      using memory = RegionMemory.memfd([{ guestAddr: 0, size: L.RAM }], "skiff-smp-test");
      await using m = smpMachine(memory, cpus);
      loadPrograms(memory, m.vm.vcpus.map((v) => v.fd), smpPrograms({ cpus, rounds }));
      await m.vm.start();
      const stop = await waitOrStop(m.vm, HANG_MS, () => results(memory, cpus));
      deepStrictEqual([stop.kind, stop.code], ["poweroff", 0x55], results(memory, cpus));
      for (let i = 0; i < cpus; i++) {
        strictEqual(memory.readU32(F.result(i)), OK, results(memory, cpus));
      }
      deepStrictEqual(m.device.served, new Array(cpus).fill(rounds));
      deepStrictEqual(m.errors, []);
      ok(m.host.active);
    },
  );
}

hostTest(
  "virtio-mmio SMP L1: a reset from one vCPU while another notifies; the late completion is refused",
  ["kvm"],
  async () => {
    const rounds = 4;
    using memory = RegionMemory.memfd([{ guestAddr: 0, size: L.RAM }], "skiff-smp-test");
    await using m = smpMachine(memory, 2);
    m.device.hold = true;
    m.device.heldFlag = F.HELD;
    m.onDoorbell(() => {
      // vCPU 0 reset the device and put markers in the old used ring: the
      // back-end's late answer must not land there.
      m.device.hold = false;
      m.device.flush();
      memory.writeU32(F.HOST_FLUSHED, 1);
    });
    loadPrograms(memory, m.vm.vcpus.map((v) => v.fd), resetPrograms({ rounds }));
    await m.vm.start();
    const stop = await waitOrStop(m.vm, HANG_MS, () => results(memory, 2));
    deepStrictEqual([stop.kind, stop.code], ["poweroff", 0x55], results(memory, 2));
    strictEqual(memory.readU32(F.result(0)), OK, `vCPU 0: ${results(memory, 2)}`);
    strictEqual(memory.readU32(F.result(1)), OK, `vCPU 1: ${results(memory, 2)}`);
    ok(m.device.refused >= 1, "the held completion ran after the reset and was refused");
    deepStrictEqual(m.device.served, [0, rounds], "only the re-initialised queue was served");
    ok(
      memory.readU32(F.progress(1)) >= RESET_AFTER_NOTIFIES,
      "vCPU 1 was notifying when vCPU 0 reset",
    );
    deepStrictEqual(m.errors, []);
  },
);

const HELPER = new URL("./testdata/smp_run.ts", import.meta.url).pathname;

async function helper(dir: string, ...args: string[]): Promise<Record<string, unknown>> {
  const out = join(dir, `out-${crypto.randomUUID()}.json`);
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HELPER, ...args, out],
    stdout: "piped",
    stderr: "piped",
  }).output();
  strictEqual(p.code, 0, `smp_run ${args.join(" ")}:\n${new TextDecoder().decode(p.stderr)}`);
  return JSON.parse(await Deno.readTextFile(out));
}

hostTest(
  "virtio-mmio SMP L1: 2 vCPUs captured at a quiet point, restored in a new process, same result",
  ["kvm"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-smp-snap-" });
    try {
      const snap = join(dir, "snap");
      const full = await helper(dir, "full");
      const captured = await helper(dir, "capture", snap);
      deepStrictEqual(captured.final, full.final);
      const atCapture = captured.atCapture as { served: number[]; progress: number[] };
      deepStrictEqual(atCapture.served, [4, 4], "each vCPU was at its barrier");
      const restored = await helper(dir, "restore", snap);
      deepStrictEqual(restored.final, full.final);
      deepStrictEqual((full.final as { served: number[] }).served, [8, 8]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
