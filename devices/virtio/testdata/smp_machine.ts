/**
 * The VM of the SMP virtio L1 tests: `cpus` vCPUs, the {@link SmpTestDevice}
 * at {@link L.BASE} behind the shared virtio-mmio transport (register half in
 * every vCPU Worker, host half here, notifications through ioeventfds,
 * interrupts through an irqfd), a doorbell and a debug-exit port. Built cold
 * or from a saved device state (a snapshot restore constructs the device
 * from it).
 *
 * @module
 */

import { debugExitSpec } from "../../legacy/debug_exit.ts";
import type { DeviceSpec } from "../../../hv/device.ts";
import type { RegionMemory } from "../../../hv/memory.ts";
import { Vm, type VmStop } from "../../../hv/vm.ts";
import { DoorbellHost } from "../../../hv/testing/doorbell_device.ts";
import { signalEventfd } from "../../../kvm_ffi/eventfd.ts";
import { close, EFD, eventfd } from "../../../kvm_ffi/libc.ts";
import { VirtioMmioHost } from "../mmio_host.ts";
import type { MmioTransportState } from "../mmio_persist.ts";
import { SmpTestDevice } from "./smp_device.ts";
import { L } from "./smp_guest.ts";

/** The device's saved state in a snapshot. */
export interface SmpDeviceState {
  transport: MmioTransportState;
  device: { served: number[] };
}

/** A built machine (not started). */
export interface SmpMachine extends AsyncDisposable {
  vm: Vm;
  device: SmpTestDevice;
  host: VirtioMmioHost;
  /** Guest errors the device reported. */
  errors: unknown[];
  /** Called for each doorbell write (from any vCPU). */
  onDoorbell(fn: () => void): void;
  /** The snapshot adapter for the device. */
  persist(): Map<string, { save(): unknown; restore(state: unknown): void }>;
}

/** Options of {@link smpMachine}. */
export interface SmpMachineOptions {
  /** Interrupts through an irqfd (default) or `KVM_IRQ_LINE`. */
  irq?: "irqfd" | "irq-line";
  /** More devices (a benchmark's timer). */
  devices?: DeviceSpec[];
}

/** Builds the VM over `memory`; with `saved`, the device is constructed from that state. */
export function smpMachine(
  memory: RegionMemory,
  cpus: number,
  saved?: SmpDeviceState,
  opts: SmpMachineOptions = {},
): SmpMachine {
  const vm = Vm.create({ memory, pit: false });
  const irqfd = eventfd(0, EFD.CLOEXEC);
  const errors: unknown[] = [];
  try {
    const line = opts.irq === "irq-line";
    if (!line) vm.irqfd(irqfd, L.GSI);
    const device = new SmpTestDevice(cpus);
    if (saved) device.restore(saved.device);
    const host = new VirtioMmioHost(device, memory, {
      irq: line ? () => vm.pulseIrq(L.GSI) : () => signalEventfd(irqfd),
      onDeviceError: (e) => errors.push(e),
      state: saved?.transport,
    });
    vm.addDevice(host.spec("smp", L.BASE, L.GSI, line ? undefined : irqfd));
    for (const d of opts.devices ?? []) vm.addDevice(d);
    vm.onDeviceMessage("smp", (m) => host.handle(m));
    const ioeventfds = host.attachIoeventfds(vm, L.BASE);
    const doorbell = new DoorbellHost("doorbell", L.DOORBELL, true);
    vm.addDevice(doorbell.spec);
    vm.addDevice(debugExitSpec());
    const cpuid = vm.kvm.supportedCpuid();
    for (let i = 0; i < cpus; i++) vm.createVcpu().fd.setCpuid2(cpuid);
    return {
      vm,
      device,
      host,
      errors,
      onDoorbell: (fn) => vm.onDeviceMessage("doorbell", fn),
      persist: () =>
        new Map([["smp", {
          save: () => ({ transport: host.save(), device: device.save() }),
          // Constructed from its state (above); once the VM state is back,
          // notifications lost with the eventfds are replayed.
          restore: () => host.resumeAfterRestore(),
        }]]),
      async [Symbol.asyncDispose]() {
        await ioeventfds[Symbol.asyncDispose]();
        await vm.close();
        close(irqfd);
      },
    };
  } catch (e) {
    void vm.close();
    close(irqfd);
    throw e;
  }
}

/** Waits for the VM to stop; after `ms` (a hang), stops it and throws with `state()`. */
export async function waitOrStop(vm: Vm, ms: number, state: () => string): Promise<VmStop> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), ms));
  try {
    const first = await Promise.race([vm.wait(), timeout]);
    if (first !== "timeout") return first;
    await vm.stop();
    throw new Error(`guest did not finish within ${ms} ms: ${state()}`);
  } finally {
    clearTimeout(timer);
  }
}
