/**
 * Builds a bootable machine per the Linux x86-64 boot protocol, as
 * Firecracker does: guest RAM around the 32-bit MMIO hole, the devices, the
 * kernel (ELF vmlinux or bzImage), boot_params with the e820 map and command
 * line, an initramfs, ACPI tables, and the boot vCPU in 64-bit mode.
 *
 * @module
 */

import { type E820Entry, LAYOUT, MemoryLayout } from "../boot/layout.ts";
import { type LoadedKernel, loadKernel, placeInitrd } from "../boot/loader.ts";
import { buildBootParams, writeCmdline } from "../boot/params.ts";
import { type AcpiTables, writeAcpiTables } from "../acpi/tables.ts";
import { ConfigError } from "../errors.ts";
import { type VmConfig } from "../config.ts";
import { RegionMemory } from "../memory.ts";
import { Vm } from "../vm.ts";
import { setupLongMode } from "../x86/long_mode.ts";
import { cpuidForVcpu } from "../x86/cpuid.ts";
import { MachineOptions, MachinePlan, planMachine } from "./plan.ts";
import {
  createDevices,
  type DeviceManagerOptions,
  devicesOf,
  disposer,
  KvmDevices,
} from "./device_manager.ts";
import { NO_BACKENDS } from "./backends.ts";

/** Bytes in a MiB. */
const MiB = 1 << 20;
/**
 * Everything of a built machine, for the engine and for snapshots (each
 * virtio host and the UART have save()/restore(); the Vm gives vCPU and VM state).
 */
export interface KvmMachine extends KvmDevices, AsyncDisposable {
  /** The kernel as loaded (format, entry, extent). */
  kernel: LoadedKernel;
  /** The kernel image file booted. */
  kernelPath: string;
  /** The e820 map handed to the kernel. */
  e820: E820Entry[];
  /** Where the ACPI tables are. */
  acpi: AcpiTables;
  /** Where the initramfs was placed, if one was given. */
  initrd?: { addr: number; size: number };
}
/**
 * Builds (but does not start) a machine for `config`. The caller disposes
 * it (`await using`), which stops the vCPUs and releases fds and memory.
 *
 * vCPUs: `config.cpus`, each listed in the MADT with its own APIC ID in
 * CPUID. vCPU 0 (the BSP) starts in long mode at the kernel's entry; the
 * others are left as KVM creates them with an in-kernel irqchip
 * (`KVM_MP_STATE_UNINITIALIZED`): their `KVM_RUN` waits in the kernel until
 * the guest's INIT/SIPI through the local APIC starts them.
 */
export async function buildKvmMachine(
  config: VmConfig,
  opts: MachineOptions = {},
): Promise<KvmMachine> {
  return buildPlanned(await planMachine(config, opts), opts);
}
export async function buildPlanned(p: MachinePlan, opts: MachineOptions): Promise<KvmMachine> {
  const progress = opts.progress ?? (() => {});
  const { config } = p;
  const size = (await Deno.stat(p.image.path)).size;
  progress(
    `skiff: loading kernel ${p.image.path} (${(size / MiB).toFixed(1)} MiB, ${p.image.format})`,
  );
  const kernelBytes = await Deno.readFile(p.image.path);

  const layout = MemoryLayout.fromMiB(config.memoryMiB);
  const memory = RegionMemory.memfd(layout.ramRegions, "skiff-guest");
  const cleanups: (() => void | Promise<void>)[] = [() => memory[Symbol.dispose]()];
  const dispose = disposer(cleanups);
  try {
    const vm = Vm.create({ memory });
    cleanups.push(() => vm.close());
    createVcpus(vm, p.cpus, true);
    const dm = createDevices(vm, memory, p, deviceOptions(p, opts, cleanups));
    const devices = devicesOf(dm);
    let kernel: LoadedKernel;
    try {
      kernel = loadKernel(memory, kernelBytes, p.image.path);
    } catch (e) {
      throw new ConfigError((e as Error).message, { cause: e });
    }
    const cmdlineMax = Math.min(kernel.cmdlineMax + 1, LAYOUT.CMDLINE_MAX);
    let cmdlineLen: number;
    try {
      cmdlineLen = writeCmdline(memory, LAYOUT.CMDLINE_START, p.cmdline, cmdlineMax);
    } catch (e) {
      throw new ConfigError((e as Error).message, { cause: e });
    }
    let initrd: { addr: number; size: number } | undefined;
    if (opts.initrd) {
      try {
        initrd = {
          addr: placeInitrd(memory, opts.initrd, kernel, layout.lowRamEnd),
          size: opts.initrd.length,
        };
      } catch (e) {
        throw new ConfigError((e as Error).message, { cause: e });
      }
    }
    const acpi = writeAcpiTables(memory, { cpus: p.cpus, virtio: dm.dsdtEntries() });
    const e820 = layout.e820();
    memory.write(
      LAYOUT.ZERO_PAGE,
      buildBootParams({
        setupHeader: kernel.setupHeaderBytes,
        cmdline: { addr: LAYOUT.CMDLINE_START, size: cmdlineLen },
        e820,
        rsdpAddr: acpi.rsdpAddr,
        initrd,
      }),
    );
    setupLongMode(memory, vm.vcpus[0].fd, {
      entry: kernel.entry,
      stack: LAYOUT.BOOT_STACK_POINTER,
      rsi: LAYOUT.ZERO_PAGE,
    });

    return {
      ...devices,
      cmdline: p.cmdline,
      kernel,
      kernelPath: p.image.path,
      e820,
      acpi,
      initrd,
      emulated: p.emulated,
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/**
 * Creates `cpus` vCPUs; with `cpuid`, each gets the supported CPUID with
 * its own APIC ID and the CPU count (hv/x86/cpuid.ts). A restore whose
 * snapshot carries every vCPU's CPUID skips it: the restore sets the saved
 * table, and fetching the supported one would add ~0.8 ms.
 */
export function createVcpus(vm: Vm, cpus: number, cpuid: boolean): void {
  const supported = cpuid ? vm.kvm.supportedCpuid() : null;
  for (let i = 0; i < cpus; i++) {
    const v = vm.createVcpu();
    if (supported) v.fd.setCpuid2(cpuidForVcpu(supported, i, cpus));
  }
}

/** The device manager's options for plan `p`: the back-ends, console and error log. */
export function deviceOptions(
  p: MachinePlan,
  opts: MachineOptions,
  cleanups: (() => void | Promise<void>)[],
): DeviceManagerOptions {
  return {
    backends: opts.backends ?? NO_BACKENDS,
    cleanups,
    onConsole: opts.onConsole,
    onDeviceError: (name, e) => {
      if (p.config.verbose) console.error(`skiff: ${name}: ${(e as Error).message ?? e}`);
    },
  };
}
