// L1: a VM made ahead (KVM_CREATE_VM and its slots off the main thread) runs a
// guest once Vm.fromPrepared builds on it, and one made for other memory is refused.
import { deepStrictEqual, throws } from "node:assert/strict";
import { Assembler } from "../init/asm/mod.ts";
import { debugExitSpec } from "../devices/legacy/debug_exit.ts";
import { hostTest } from "../tests/requirements.ts";
import { RegionMemory } from "./memory.ts";
import { memorySlots, prepareVmAsync } from "./prepared_vm.ts";
import { codeAddr, GUEST_RAM } from "./testing/guest.ts";
import { Vm } from "./vm.ts";
import { setupLongMode } from "./x86/long_mode.ts";

hostTest("Vm.fromPrepared: a prepared VM runs a guest to its power-off", ["kvm"], async () => {
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: GUEST_RAM }]);
  const prepared = await prepareVmAsync(memorySlots(memory));
  await using vm = Vm.fromPrepared({ memory, irqchip: false }, prepared);
  vm.addDevice(debugExitSpec());
  const a = new Assembler();
  a.mov("al", 9);
  a.mov("dx", 0x501);
  a.out("dx", "al");
  a.hlt();
  memory.write(codeAddr(0), a.assemble({ origin: codeAddr(0) }).bytes);
  setupLongMode(memory, vm.createVcpu().fd, { entry: codeAddr(0), stack: 0x80000 });
  await vm.start();
  const stop = await vm.wait();
  deepStrictEqual([stop.kind, stop.code], ["poweroff", 9]);
});

hostTest("Vm.fromPrepared: a VM prepared for other memory is refused", ["kvm"], async () => {
  using a = RegionMemory.memfd([{ guestAddr: 0, size: 2 << 20 }]);
  using b = RegionMemory.memfd([{ guestAddr: 0, size: 2 << 20 }]);
  const prepared = await prepareVmAsync(memorySlots(a));
  throws(() => Vm.fromPrepared({ memory: b }, prepared), /not one for this memory/);
  const again = await prepareVmAsync(memorySlots(a));
  throws(
    () => Vm.fromPrepared({ memory: a, kvmPath: "/dev/kvm-other" }, again),
    /not one for this memory and KVM device/,
  );
});
