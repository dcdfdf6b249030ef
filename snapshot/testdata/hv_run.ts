// Test helper run as its own process by hv_snapshot_test.ts, with hv's Vm
// (one Worker per vCPU):
//   full    CPUS ITERATIONS DOORBELL OUT.json
//   capture CPUS ITERATIONS DOORBELL SNAPDIR OUT.json
//   restore SNAPDIR OUT.json
//   restore-made SNAPDIR OUT.json   the VM made by restoreHvVm (`vm` option: Vm.createAsync)
//   restore-pooled SNAPDIR OUT.json three restore-made with restorePool on (restore_pool.ts)
import { RegionMemory } from "../../hv/memory.ts";
import { Vm } from "../../hv/vm.ts";
import { sha256Hex } from "../codec.ts";
import { captureHvVm, restoreHvVm } from "../hv_snapshot.ts";
import { HvTestDevices } from "./hv_device.ts";
import { setupGuest } from "./machine.ts";
import { restorePool } from "../restore_pool.ts";

const MEM = 4 << 20;

function build(memory: RegionMemory, cpus: number, made?: Vm) {
  const vm = made ?? Vm.create({ memory });
  const dev = new HvTestDevices(cpus);
  vm.addDevice(dev.spec);
  const cpuid = vm.kvm.supportedCpuid();
  for (let i = 0; i < cpus; i++) vm.createVcpu().fd.setCpuid2(cpuid);
  return { vm, dev, devices: new Map([["test", dev]]) };
}

function result(vm: Vm, dev: HvTestDevices, memory: RegionMemory) {
  return {
    uart: dev.text(),
    counter: dev.counter(),
    memory: memory.regions.map((r) => sha256Hex(r.bytes)),
    rax: vm.vcpus.map((v) => v.fd.getRegs().rax.toString(16)),
  };
}

async function finish(vm: Vm): Promise<void> {
  const stop = await vm.wait();
  if (stop.kind !== "poweroff") throw new Error(`VM stopped with ${JSON.stringify(stop)}`);
}

/** Restores `snap`, runs it to its power-off and returns its result. */
async function restoreAndFinish(snap: string, made: boolean): Promise<Record<string, unknown>> {
  let dev: HvTestDevices | null = null;
  const r = await restoreHvVm(snap, ({ memory, snapshot, vm }) => {
    if (made !== (vm !== undefined)) throw new Error("ctx.vm is wrong");
    const b = build(memory, snapshot.manifest.vcpus.length, vm);
    dev = b.dev;
    return b;
  }, made ? { vm: {} } : {});
  try {
    dev!.go();
    await r.vm.start();
    await finish(r.vm);
    return result(r.vm, dev!, r.memory);
  } finally {
    await r.vm.close();
    r.memory[Symbol.dispose]();
  }
}

const [mode, ...args] = Deno.args;
let out: Record<string, unknown>;
if (mode === "full" || mode === "capture") {
  const [cpus, iterations, doorbell] = args.slice(0, 3).map(Number);
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: MEM }]);
  const { vm, dev, devices } = build(memory, cpus);
  try {
    setupGuest(memory, vm.vcpus.map((v) => v.fd), iterations, doorbell);
    const rang = new Promise<void>((r) => vm.onDeviceMessage("test", () => r()));
    await vm.start();
    await Promise.race([rang, vm.wait()]);
    let atCapture = null;
    if (mode === "capture") {
      await vm.pause();
      atCapture = result(vm, dev, memory);
      await captureHvVm(vm, args[3], { devices, source: { test: "hv_run", cpus } });
      vm.resume();
    }
    dev.go();
    await finish(vm);
    out = { ...result(vm, dev, memory), atCapture };
  } finally {
    await vm.close();
  }
} else if (mode === "restore" || mode === "restore-made") {
  out = await restoreAndFinish(args[0], mode === "restore-made");
} else if (mode === "restore-pooled") {
  // Three restores with restorePool on: the later two take what it made ahead.
  restorePool.keepReady(true);
  const results = [], taken = [];
  try {
    for (let i = 0; i < 3; i++) {
      const before = restorePool.taken;
      results.push(await restoreAndFinish(args[0], true));
      taken.push(restorePool.taken - before);
      // The pool's next one, due at once, starts before this wait ends.
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await restorePool.drain();
  }
  out = { results, taken };
} else {
  throw new Error(`unknown mode ${mode}`);
}
Deno.writeTextFileSync(Deno.args[Deno.args.length - 1], JSON.stringify(out));
