// L1: vCPU Workers taken at createVcpu, kept for the next VM, prewarmed, and
// ended when nobody keeps them (tiny guests on /dev/kvm).
import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Assembler } from "../init/asm/mod.ts";
import { debugExitSpec } from "../devices/legacy/debug_exit.ts";
import { hostTest } from "../tests/requirements.ts";
import { codeAddr, testGuest } from "./testing/guest.ts";
import { vcpuWorkers } from "./vcpu_worker.ts";

/** A guest that powers off at once with exit code `code` (debug-exit port 0x501). */
function exitWith(code: number): Uint8Array {
  const a = new Assembler();
  a.mov("al", code);
  a.mov("dx", 0x501);
  a.out("dx", "al");
  a.hlt();
  return a.assemble({ origin: codeAddr(0) }).bytes;
}

async function runGuest(code: number): Promise<void> {
  await using g = testGuest({ programs: [exitWith(code)], devices: [debugExitSpec()] });
  await g.vm.start();
  const stop = await g.vm.wait();
  deepStrictEqual([stop.kind, stop.code], ["poweroff", code]);
}

hostTest("vcpuWorkers: a Worker whose vCPU stopped runs the next VM's vCPU", ["kvm"], async () => {
  vcpuWorkers.keepIdle(1);
  try {
    await runGuest(7);
    strictEqual(vcpuWorkers.idle, 1, "the Worker went back to the pool");
    const spawned = vcpuWorkers.spawned;
    // The first VM's device asked for a stop: the reused Worker must not carry it over.
    await runGuest(42);
    await runGuest(43);
    strictEqual(vcpuWorkers.spawned, spawned, "no Worker started for the later VMs");
    strictEqual(vcpuWorkers.idle, 1);
  } finally {
    vcpuWorkers.drain();
  }
  strictEqual(vcpuWorkers.idle, 0);
});

hostTest("vcpuWorkers: by default a Worker ends with its VM, started or not", ["kvm"], async () => {
  const spawned = vcpuWorkers.spawned;
  await runGuest(1);
  strictEqual(vcpuWorkers.idle, 0);
  {
    // createVcpu took a Worker; closing the never-started VM hands it back (and it ends).
    await using _g = testGuest({ programs: [exitWith(2)] });
  }
  strictEqual(vcpuWorkers.idle, 0);
  strictEqual(vcpuWorkers.spawned, spawned + 2);
});

hostTest("vcpuWorkers.prewarm: Workers wait for the next createVcpu while leased", [
  "kvm",
], async () => {
  const spawned = vcpuWorkers.spawned;
  {
    using _lease = vcpuWorkers.prewarm(1);
    strictEqual(vcpuWorkers.idle, 1);
    await runGuest(3); // takes the prewarmed Worker
    strictEqual(vcpuWorkers.spawned, spawned + 1);
    strictEqual(vcpuWorkers.idle, 1, "kept while the lease lasts");
  }
  strictEqual(vcpuWorkers.idle, 0, "the lease's surplus ended with it");
  {
    using _unused = vcpuWorkers.prewarm(2);
    strictEqual(vcpuWorkers.idle, 2);
  }
  strictEqual(vcpuWorkers.idle, 0);
  throws(() => vcpuWorkers.prewarm(-1), RangeError);
  throws(() => vcpuWorkers.keepIdle(1.5), RangeError);
  ok(vcpuWorkers.spawned === spawned + 3);
});
