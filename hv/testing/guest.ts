/**
 * Tiny long-mode guests for tests on /dev/kvm: one program per vCPU, loaded at
 * {@link GUEST_CODE} + 0x1000 × vCPU id, identity-mapped, entered in 64-bit
 * mode with interrupts off and a private stack.
 *
 * @module
 */

import type { DeviceSpec } from "../device.ts";
import { RegionMemory } from "../memory.ts";
import { Vm } from "../vm.ts";
import { setupLongMode } from "../x86/mod.ts";

/** Where vCPU 0's program is loaded (above the boot page tables). */
export const GUEST_CODE = 0x10000;
/** Guest RAM size of test guests. */
export const GUEST_RAM = 2 << 20;

/** Load address of vCPU `id`'s program. */
export function codeAddr(id: number): number {
  return GUEST_CODE + id * 0x1000;
}

/** Options of {@link testGuest}. */
export interface TestGuestOptions {
  /** Machine code per vCPU (assemble each with `origin: codeAddr(i)`). */
  programs: Uint8Array[];
  /** In-kernel irqchip (default false: HLT then exits to the host). */
  irqchip?: boolean;
  devices?: DeviceSpec[];
}

/** A VM with its memory, ready to start; dispose with `await using`. */
export interface TestGuest extends AsyncDisposable {
  vm: Vm;
  memory: RegionMemory;
}

/** Builds the VM, loads the programs and puts each vCPU at its program in long mode. */
export function testGuest(opts: TestGuestOptions): TestGuest {
  const memory = RegionMemory.memfd([{ guestAddr: 0, size: GUEST_RAM }], "skiff-test-guest");
  let vm: Vm;
  try {
    vm = Vm.create({ memory, irqchip: opts.irqchip ?? false });
  } catch (e) {
    memory[Symbol.dispose]();
    throw e;
  }
  for (const d of opts.devices ?? []) vm.addDevice(d);
  opts.programs.forEach((code, i) => {
    if (code.length > 0x1000) {
      throw new RangeError(`program ${i} is ${code.length} bytes (max 4096)`);
    }
    memory.write(codeAddr(i), code);
    const vcpu = vm.createVcpu();
    setupLongMode(memory, vcpu.fd, { entry: codeAddr(i), stack: 0x80000 - i * 0x4000 });
  });
  return {
    vm,
    memory,
    async [Symbol.asyncDispose]() {
      await vm.close();
      memory[Symbol.dispose]();
    },
  };
}
