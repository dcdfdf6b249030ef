import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { ASYNC_SLOT_MIN_BYTES, Kvm } from "./kvm.ts";
import { KVM_CAP, KVM_MP_STATE, MSR } from "./kvm_sys.ts";
import { MAP, mmap, munmap, PROT, SysError } from "./libc.ts";
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

hostTest("VmFd.setUserMemoryRegionAsync: a big slot on another thread; a refusal names errno", [
  "kvm",
], async () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const size = ASYNC_SLOT_MIN_BYTES; // the smallest slot that goes to another thread
  const ptr = mmap(size, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE);
  try {
    const host = Deno.UnsafePointer.value(ptr) as bigint;
    const slot = (n: number, gpa: bigint, bytes: number) => ({
      slot: n,
      flags: 0,
      guestPhysAddr: gpa,
      memorySize: BigInt(bytes),
      userspaceAddr: host,
    });
    await vm.setUserMemoryRegionAsync(slot(0, 0n, size));
    // Slot 1 over the same guest range: KVM refuses it (EEXIST) and the error says so.
    await rejects(
      vm.setUserMemoryRegionAsync(slot(1, 0n, size)),
      (e) => e instanceof SysError && e.code === "EEXIST" && /slot 1/.test(e.message),
    );
    // A small one is made at once (synchronously), refusals alike.
    await vm.setUserMemoryRegionAsync(slot(2, BigInt(size), 1 << 20));
    await rejects(
      vm.setUserMemoryRegionAsync(slot(3, BigInt(size), 1 << 20)),
      (e) => e instanceof SysError && e.code === "EEXIST",
    );
  } finally {
    munmap(ptr, size);
  }
});
