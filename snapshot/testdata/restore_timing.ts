// Bench helper: restores SNAPDIR once in this fresh process and prints the
// milliseconds from the start of restore to the first KVM_RUN.
import { restoreVmAsync } from "../vm_snapshot.ts";
import { prepareVm, releaseVm, TestMachine } from "./machine.ts";

const t0 = performance.now();
let t1 = 0;
const m = await restoreVmAsync(Deno.args[0], {
  prepare: prepareVm,
  release: releaseVm,
  build: ({ memory, snapshot }, prepared) =>
    new TestMachine(
      memory,
      snapshot.manifest.vcpus.length,
      !snapshot.manifest.vcpus.every((v) => v.cpuid),
      prepared,
    ),
  dispose: (m) => m[Symbol.dispose](),
});
try {
  m.run(() => t1 = performance.now());
} finally {
  m[Symbol.dispose]();
}
console.log((t1 - t0).toFixed(3));
