import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { Kvm } from "./kvm.ts";
import { KVM_CAP, KVM_MP_STATE, MSR } from "./kvm_sys.ts";
import { SysError } from "./libc.ts";
import { decodeRegs, emptyRegs, encodeRegs } from "./structs.ts";

Deno.test("regs encode/decode round-trips every register", () => {
  const r = emptyRegs();
  let i = 1n;
  for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0x0101010100000000n * i++ + i;
  deepStrictEqual(decodeRegs(encodeRegs(r)), r);
});

hostTest("Kvm: API version, capabilities, MSR list, CPUID", ["kvm"], () => {
  using kvm = Kvm.open();
  strictEqual(kvm.apiVersion(), 12);
  ok(kvm.vcpuMmapSize() >= 4096);
  ok(kvm.checkExtension(KVM_CAP.USER_MEMORY) > 0);
  // EFER travels in kvm_sregs; LSTAR is one of the MSRs KVM saves.
  ok(kvm.msrIndexList().includes(MSR.LSTAR));
  ok(kvm.supportedCpuid().some((e) => e.function === 0));
});

hostTest("VmFd/VcpuFd: ioctl errors name the call; state round-trips", ["kvm"], () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  vm.setTssAddr(0xfffbd000);
  vm.createIrqchip();
  vm.createPit2();
  using vcpu = vm.createVcpu(0);
  throws(
    () => vm.createVcpu(0),
    (e: unknown) => e instanceof SysError && e.message === "KVM_CREATE_VCPU failed: EEXIST",
  );
  const regs = vcpu.getRegs();
  regs.rax = 0x1234n;
  regs.rip = 0x1000n;
  vcpu.setRegs(regs);
  strictEqual(vcpu.getRegs().rax, 0x1234n);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  strictEqual(vcpu.getSregs().cs.selector, 0);

  const msrs = kvm.msrIndexList();
  const state = vcpu.saveState(msrs, {
    lapic: true,
    xsave: kvm.checkExtension(KVM_CAP.XSAVE) > 0,
    xcrs: kvm.checkExtension(KVM_CAP.XCRS) > 0,
  });
  ok(state.msrs.byteLength > 8);
  strictEqual(vcpu.getMpState(), KVM_MP_STATE.RUNNABLE);
  regs.rax = 0n;
  vcpu.setRegs(regs);
  vcpu.restoreState(state);
  strictEqual(vcpu.getRegs().rax, 0x1234n);

  const vmState = vm.saveState({ irqchip: true, pit: true });
  strictEqual(vmState.irqchip!.ioapic.byteLength, 520);
  vm.restoreState(vmState);
  vm.irqLine(4, 1);
  vm.irqLine(4, 0);
});
