/**
 * The kvm engine's device manager: puts the vCPUs, the legacy devices and
 * each planned virtio device on the VM (MMIO window and GSI by slot, as
 * Firecracker's `MmioDeviceManager`), builds their back-ends, and gives
 * every device's state to snapshots by name.
 *
 * @module
 */

import { PORT_NAMES, VirtioConsole } from "../../devices/virtio/console/device.ts";
import { shareFileSystem } from "../engine/share_fs.ts";
import { VirtioFs } from "../../devices/virtio/fs/device.ts";
import { VirtioNet } from "../../devices/virtio/net/device.ts";
import { NetStack } from "../../devices/net/stack.ts";
import { attachVirtioNet } from "../../devices/net/virtio.ts";
import { VirtioMmioHost } from "../../devices/virtio/mmio_host.ts";
import { type MmioState } from "../../devices/virtio/mmio.ts";
import { type VirtioDevice } from "../../devices/virtio/device.ts";
import { FuseServer } from "../../devices/fuse/server.ts";
import { Uart, type UartSnapshot } from "../../devices/legacy/uart.ts";
import { I8042Device } from "../../devices/legacy/i8042.ts";
import { Mailbox } from "../../devices/mailbox/mailbox.ts";
import { LAYOUT, MemoryLayout } from "../boot/layout.ts";
import { sleepSpec } from "../../devices/legacy/acpi_sleep.ts";
import { RegionMemory } from "../memory.ts";
import { Vm } from "../vm.ts";
import { type Persist } from "../../snapshot/vm_snapshot.ts";
import { MachineOptions, MachinePlan } from "./plan.ts";

/** One virtio device of a machine: where it is, and its host half. */
export interface VirtioSlot {
  /** Device name (also the vm.onDeviceMessage key and its snapshot id). */
  name: string;
  /** MMIO window base. */
  base: number;
  /** Interrupt (GSI). */
  gsi: number;
  host: VirtioMmioHost;
}
/** The devices of a machine, cold-booted or restored. */
export interface KvmDevices {
  vm: Vm;
  memory: RegionMemory;
  uart: Uart;
  /** The virtio console (port 0 is hvc0), or null when the machine has no virtio devices. */
  console: VirtioConsole | null;
  virtio: VirtioSlot[];
  /** skiff's mailbox, when the machine has one ({@link MachineOptions.mailbox}). */
  mailbox: Mailbox | null;
  /** Kernel command line (of the boot; a restored machine keeps its snapshot's). */
  cmdline: string;
  /** Whether guest code is emulated on this host (kvm_pvm). */
  emulated: boolean;
  /** Device state adapters by snapshot id: the UART, each virtio device, the mailbox. */
  persist(): Map<string, Persist>;
  /** The last kernel log text (UART), for diagnostics. */
  log(): string;
}
/**
 * Adds the vCPUs and devices of `p` to `vm` over `memory`. With `states` (a
 * restore), each virtio transport gets its saved state before its Worker
 * spec is made, and the mailbox uses the data region already in `memory`.
 */
export function attachDevices(
  vm: Vm,
  memory: RegionMemory,
  p: MachinePlan,
  opts: MachineOptions,
  cleanups: (() => void | Promise<void>)[],
  states?: Record<string, unknown>,
  savedCpuid = false,
): Omit<KvmDevices, "vm" | "memory" | "cmdline" | "emulated"> {
  // A restore whose snapshot has every vCPU's CPUID sets that table itself;
  // fetching and setting the supported one would add ~0.8 ms to it.
  const cpuid = savedCpuid ? null : vm.kvm.supportedCpuid();
  for (let i = 0; i < p.cpus; i++) {
    const v = vm.createVcpu();
    if (cpuid) v.fd.setCpuid2(cpuid);
  }

  let log = "";
  const dec = new TextDecoder();
  const uart = new Uart({
    output: (b) => {
      log = (log + dec.decode(b, { stream: true })).slice(-8192);
      opts.onConsole?.(b);
    },
  });
  uart.attach(vm);
  vm.addDevice(new I8042Device().spec());
  vm.addDevice(sleepSpec());

  const virtio: VirtioSlot[] = [];
  let consoleDev: VirtioConsole | null = null;
  p.virtio.forEach((slot, i) => {
    let device: VirtioDevice;
    if (slot.kind === "console") {
      consoleDev = new VirtioConsole(
        p.workload
          ? {
            portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr, PORT_NAMES.status],
          }
          : {},
      );
      device = consoleDev;
    } else if (slot.kind === "fs") {
      const s = slot.share!;
      const fs = shareFileSystem(s);
      cleanups.push(() => fs.close());
      device = new VirtioFs({ tag: s.tag, server: new FuseServer(fs) });
    } else {
      // skiff's user-mode network stack terminates the guest's frames.
      const net = new VirtioNet({ mac: new Uint8Array([0x52, 0x54, 0, 0x6b, 0x69, 0x66]) });
      const options = p.config.net!;
      const stack = new NetStack({
        hostLoopback: options.hostLoopback,
        publish: options.publish.map((r) => ({
          hostIp: r.hostIp,
          hostPort: r.hostPort,
          guestPort: r.guestPort,
          proto: r.protocol,
        })),
      });
      stack.ready.catch((e) => console.error(`skiff: --publish: ${(e as Error).message}`));
      const detach = attachVirtioNet(stack, net);
      cleanups.push(async () => {
        detach();
        await stack[Symbol.asyncDispose]();
      });
      device = net;
    }
    const base = MemoryLayout.virtioMmioBase(i);
    const gsi = LAYOUT.DEVICE_IRQ_FIRST + i;
    const host = new VirtioMmioHost(device, memory, {
      irq: () => vm.pulseIrq(gsi),
      onDeviceError: (e) => {
        if (p.config.verbose) console.error(`skiff: ${slot.name}: ${(e as Error).message ?? e}`);
      },
    });
    // A restored transport's state must be in its Worker config (host.spec).
    const saved = states?.[slot.name];
    if (saved) {
      device.restore((saved as MmioState).device);
      host.restore(saved);
    }
    vm.onDeviceMessage(slot.name, (m) => host.handle(m));
    vm.addDevice(host.spec(slot.name, base, gsi));
    virtio.push({ name: slot.name, base, gsi, host });
  });

  let mailbox: Mailbox | null = null;
  if (p.mailbox) {
    const mb = new Mailbox(p.mailbox);
    cleanups.push(() => mb[Symbol.dispose]());
    // A restore's memory already holds the data region (it is saved with RAM).
    mb.attach(vm, states ? memory : undefined);
    mailbox = mb;
  }

  const persist = () => {
    const m = new Map<string, Persist>();
    m.set("uart", { save: () => uart.save(), restore: (s) => uart.restore(s as UartSnapshot) });
    for (const v of virtio) {
      // Restored before the Workers were made (above); nothing more to do then.
      m.set(v.name, {
        save: () => ({ ...v.host.save(), device: v.host.device.save() }),
        restore: () => {},
      });
    }
    if (mailbox) m.set("mailbox", mailbox);
    return m;
  };
  return { uart, console: consoleDev, virtio, mailbox, persist, log: () => log };
}
export function disposer(cleanups: (() => void | Promise<void>)[]): () => Promise<void> {
  return async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // releasing one resource must not keep the others
      }
    }
    cleanups.length = 0;
  };
}
