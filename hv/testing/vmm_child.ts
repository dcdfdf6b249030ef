/**
 * A minimal skiff VMM process for start-up and memory benchmarks
 * (hv/start_bench.ts): a 1-vCPU VM over `MIB` MiB of memfd memory with the
 * in-kernel irqchip, running the program given as hex at 0x10000 in long
 * mode, with a {@link StampDeviceHost} at port 0x510.
 *
 *   deno run -A vmm_child.ts first MIB HEX   prints the stamp of the guest's
 *                                            first write to 0x510 (it powers off)
 *   deno run -A vmm_child.ts idle MIB HEX    prints "ready <json>" when the guest
 *                                            writes 0x511, then waits for stdin to
 *                                            close and stops the VM
 *
 * It starts the VM the way the library does: `Vm.createVcpu` takes the vCPU's
 * Worker, whose modules load while the rest is set up.
 *
 * @module
 */

import { RegionMemory } from "../memory.ts";
import { Vm } from "../vm.ts";
import { setupLongMode } from "../x86/long_mode.ts";
import { StampDeviceHost } from "./stamp_device.ts";

/** Where the program is loaded. */
export const CODE = 0x10000;
/** The stamp device's base port. */
export const STAMP_PORT = 0x510;

if (import.meta.main) {
  const [mode, mib, hex] = Deno.args;
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: Number(mib) << 20 }], "skiff-guest");
  await using vm = Vm.create({ memory });
  const stamp = new StampDeviceHost(STAMP_PORT);
  vm.addDevice(stamp.spec);
  const vcpu = vm.createVcpu();
  vcpu.fd.setCpuid2(vm.kvm.supportedCpuid());
  memory.write(CODE, Uint8Array.fromHex(hex));
  setupLongMode(memory, vcpu.fd, { entry: CODE, stack: 0x80000 });
  if (mode === "first") {
    await vm.start();
    const stop = await vm.wait();
    if (stop.kind !== "poweroff") throw new Error(`the guest stopped with ${stop.kind}`);
    console.log(stamp.stamp.toFixed(3));
  } else if (mode === "idle") {
    const ready = new Promise<void>((r) => vm.onDeviceMessage("stamp", () => r()));
    await vm.start();
    await ready;
    console.log(`ready ${JSON.stringify(Deno.memoryUsage())}`);
    for await (const _ of Deno.stdin.readable) {
      // nothing is sent: the parent closes stdin when it has measured
    }
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}
