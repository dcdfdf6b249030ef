// Bench helper: restores SNAPDIR (an hv VM snapshot of the test guest) once in
// this fresh process and prints the milliseconds from the start of the restore
// to the vCPU Worker entering its KVM_RUN loop (Worker start included).
import { Vm } from "../../hv/vm.ts";
import { restoreHvVm } from "../hv_snapshot.ts";
import { HvTestDevices } from "./hv_device.ts";

const t0 = performance.now();
const r = await restoreHvVm(Deno.args[0], ({ memory, snapshot, vm: made }) => {
  const vm = made ?? Vm.create({ memory });
  const dev = new HvTestDevices(1);
  vm.addDevice(dev.spec);
  const v = vm.createVcpu();
  if (!snapshot.manifest.vcpus.every((c) => c.cpuid)) v.fd.setCpuid2(vm.kvm.supportedCpuid());
  return { vm, devices: new Map([["test", dev]]) };
}, { vm: {} });
try {
  await r.vm.start();
  console.log((performance.now() - t0).toFixed(3));
} finally {
  await r.vm.close();
  r.memory[Symbol.dispose]();
}
