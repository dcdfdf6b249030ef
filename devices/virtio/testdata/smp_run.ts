// Helper run as its own process by mmio_smp_kvm_test.ts: the 2-vCPU request
// guest of smp_guest.ts with a barrier after 4 of 8 rounds.
//   full    OUT.json             run through (GO at the barrier)
//   capture SNAPDIR OUT.json     at the barrier: pause, capture, resume, GO
//   restore SNAPDIR OUT.json     restore (the device constructed from its state), GO
import { RegionMemory } from "../../../hv/memory.ts";
import type { VmStop } from "../../../hv/vm.ts";
import { captureHvVm, restoreHvVm } from "../../../snapshot/hv_snapshot.ts";
import { F, L, loadPrograms, smpPrograms } from "./smp_guest.ts";
import { type SmpDeviceState, type SmpMachine, smpMachine, waitOrStop } from "./smp_machine.ts";

const CPUS = 2;
const HANG_MS = 120_000;

function final(m: SmpMachine, memory: RegionMemory, stop: VmStop) {
  return {
    stop: [stop.kind, stop.code ?? null],
    results: Array.from({ length: CPUS }, (_, i) => memory.readU32(F.result(i))),
    progress: Array.from({ length: CPUS }, (_, i) => memory.readU32(F.progress(i))),
    used: Array.from({ length: CPUS }, (_, q) => memory.readU16(L.ring(q).used + 2)),
    replies: Array.from({ length: CPUS }, (_, q) => memory.readU32(L.resp(q))),
    served: [...m.device.served],
    errors: m.errors.map(String),
  };
}

const [mode, ...args] = Deno.args;
const out = args[args.length - 1];
let result: Record<string, unknown>;
if (mode === "full" || mode === "capture") {
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: L.RAM }], "skiff-smp-snap");
  await using m = smpMachine(memory, CPUS);
  loadPrograms(
    memory,
    m.vm.vcpus.map((v) => v.fd),
    smpPrograms({ cpus: CPUS, rounds: 8, barrierAt: 4 }),
  );
  let rung = 0;
  const barrier = new Promise<void>((r) => m.onDoorbell(() => ++rung === CPUS && r()));
  await m.vm.start();
  const early = m.vm.wait().then((s) => {
    throw new Error(`the guest stopped before the barrier: ${JSON.stringify(s)}`);
  });
  await Promise.race([barrier, early]);
  let atCapture = null;
  if (mode === "capture") {
    await m.vm.pause();
    atCapture = {
      served: [...m.device.served],
      progress: Array.from({ length: CPUS }, (_, i) => memory.readU32(F.progress(i))),
    };
    await captureHvVm(m.vm, args[0], { devices: m.persist(), source: { test: "smp_run" } });
    m.vm.resume();
  }
  memory.writeU32(F.GO, 1);
  const stop = await waitOrStop(m.vm, HANG_MS, () => JSON.stringify(m.device.served));
  result = { final: final(m, memory, stop), atCapture };
} else if (mode === "restore") {
  let machine: SmpMachine | null = null;
  const r = await restoreHvVm(args[0], ({ memory, snapshot }) => {
    const saved = snapshot.manifest.devices.smp as unknown as SmpDeviceState;
    machine = smpMachine(memory, snapshot.manifest.vcpus.length, saved);
    return { vm: machine.vm, devices: machine.persist() };
  });
  const m = machine! as SmpMachine;
  try {
    r.memory.writeU32(F.GO, 1);
    await r.vm.start();
    const stop = await waitOrStop(r.vm, HANG_MS, () => JSON.stringify(m.device.served));
    result = { final: final(m, r.memory, stop) };
  } finally {
    await m[Symbol.asyncDispose]();
    r.memory[Symbol.dispose]();
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}
await Deno.writeTextFile(out, JSON.stringify(result));
