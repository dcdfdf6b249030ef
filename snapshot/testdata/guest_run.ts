// Test helper run as its own process by vm_snapshot_test.ts:
//   full    CPUS ITERATIONS DOORBELL OUT.json           run uninterrupted
//   capture CPUS ITERATIONS DOORBELL SNAPDIR OUT.json   capture at the doorbell, then finish
//   restore SNAPDIR OUT.json                            restore in this fresh process, finish
// OUT.json gets the machine's result (plus, for capture, the result at capture time).
import { RegionMemory } from "../../hv/memory.ts";
import { captureVm, restoreVm } from "../vm_snapshot.ts";
import { TestMachine } from "./machine.ts";

const MEM = 4 << 20;
const [mode, ...args] = Deno.args;
let out: Record<string, unknown>;
if (mode === "full" || mode === "capture") {
  const [cpus, iterations, doorbell] = args.slice(0, 3).map(Number);
  using m = new TestMachine(RegionMemory.memfd([{ guestAddr: 0, size: MEM }]), cpus);
  m.boot(iterations, doorbell);
  let atCapture: Record<string, unknown> | null = null;
  while (m.run() === "doorbell") {
    if (mode === "capture") {
      atCapture = await m.result();
      await captureVm(m, args[3], { test: "guest_run", cpus });
    }
  }
  out = { ...(await m.result()), atCapture };
} else if (mode === "restore") {
  const m = restoreVm(
    args[0],
    ({ memory, snapshot }) => new TestMachine(memory, snapshot.manifest.vcpus.length),
    (m) => m[Symbol.dispose](),
  );
  try {
    while (m.run() === "doorbell");
    out = await m.result();
  } finally {
    m[Symbol.dispose]();
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}
Deno.writeTextFileSync(Deno.args[Deno.args.length - 1], JSON.stringify(out));
