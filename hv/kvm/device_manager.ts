/**
 * The kvm engine's device manager (after Firecracker's `MmioDeviceManager`
 * and its `DeviceStates`): puts every device on the VM the same way — one
 * `#place` that adds its Worker spec, routes its messages and keeps its
 * record — allocates virtio MMIO windows and GSIs by slot, gives the DSDT
 * its entries, and records for each device what it is (kind), what it is
 * made from (constructor arguments), where it sits (placement), its
 * transport state and its own state. A snapshot holds those records, so a
 * restore **constructs** each device from them (`restoreDevices`) instead of
 * re-planning the configuration and patching state into existing objects.
 * Host resources behind devices (FUSE servers, the network stack) are not
 * in a record: the engine hands them in ({@link DeviceBackends}).
 *
 * @module
 */

import { VirtioConsole } from "../../devices/virtio/console/device.ts";
import { VirtioFs } from "../../devices/virtio/fs/device.ts";
import { VirtioNet } from "../../devices/virtio/net/device.ts";
import { VirtioVsock } from "../../devices/virtio/vsock/device.ts";
import { attachVirtioNet } from "../../devices/net/virtio.ts";
import { VirtioMmioHost } from "../../devices/virtio/mmio_host.ts";
import { MMIO_WINDOW } from "../../devices/virtio/mmio_regs.ts";
import type { MmioTransportState } from "../../devices/virtio/mmio_persist.ts";
import type { VirtioDevice } from "../../devices/virtio/device.ts";
import { COM1, Uart } from "../../devices/legacy/uart.ts";
import { I8042, I8042Device } from "../../devices/legacy/i8042.ts";
import { sleepSpec } from "../../devices/legacy/acpi_sleep.ts";
import type { AcpiVirtioDevice } from "../acpi/tables.ts";
import { LAYOUT, MemoryLayout } from "../boot/layout.ts";
import type { AddressRange, DeviceSpec } from "../device.ts";
import type { RegionMemory } from "../memory.ts";
import type { Vm } from "../vm.ts";
import type { Persist } from "../../snapshot/vm_snapshot.ts";
import type { DeviceBackends } from "./backends.ts";
import type { MachinePlan } from "./plan.ts";

/** One virtio device of a machine: where it is, and its host half. */
export interface VirtioSlot {
  /** Device name (its snapshot id and `vm.onDeviceMessage` key). */
  name: string;
  /** MMIO window base. */
  base: number;
  /** Interrupt (GSI). */
  gsi: number;
  host: VirtioMmioHost;
}

/** The device kinds the kvm engine builds. */
export const DEVICE_KINDS = [
  "uart",
  "i8042",
  "acpi-sleep",
  "virtio-console",
  "virtio-fs",
  "virtio-net",
  "virtio-vsock",
] as const;
/** One of {@link DEVICE_KINDS}. */
export type DeviceKind = typeof DEVICE_KINDS[number];

/** The virtio device kinds (a record's kind without the `virtio-` prefix). */
export type VirtioKind = "console" | "fs" | "net" | "vsock";

/** Where a device sits. */
export interface Placement {
  ports?: AddressRange[];
  mmio?: AddressRange[];
  gsi?: number;
}

/** A device in a snapshot: enough to construct it again (records.ts checks one). */
export interface DeviceRecord {
  kind: DeviceKind;
  /** Constructor arguments (what the device is made of, without host back-ends). */
  args: Record<string, unknown>;
  placement: Placement;
  /** virtio devices: the transport's registers and queues. */
  transport?: MmioTransportState;
  /** The device's own state (its persist file checks it). */
  state: unknown;
}

/** The devices of a machine, cold-booted or restored, as the engine uses them. */
export interface KvmDevices {
  vm: Vm;
  memory: RegionMemory;
  uart: Uart;
  /** The virtio console (port 0 is hvc0). */
  console: VirtioConsole | null;
  virtio: VirtioSlot[];
  /** The vsock device (agent mode). */
  vsock: VirtioVsock | null;
  /** The NIC (agent mode: attached to a network stack per session). */
  net: VirtioNet | null;
  /** Kernel command line (of the boot; a restored machine keeps its snapshot's). */
  cmdline: string;
  /** Whether guest code is emulated on this host (kvm_pvm). */
  emulated: boolean;
  /** Every device's snapshot record by name ({@link DeviceManager.persist}). */
  persist(): Map<string, Persist>;
  /** The last kernel log text (UART), for diagnostics. */
  log(): string;
}

/** The {@link KvmDevices} fields a device manager provides. */
export function devicesOf(dm: DeviceManager): Omit<KvmDevices, "cmdline" | "emulated"> {
  if (!dm.uart) throw new Error("the machine has no UART");
  return {
    vm: dm.vm,
    memory: dm.memory,
    uart: dm.uart,
    console: dm.console,
    virtio: dm.virtio,
    vsock: dm.vsock,
    net: dm.net,
    persist: () => dm.persist(),
    log: () => dm.log(),
  };
}

/** Runs `cleanups` in reverse order, each once, ignoring failures (one must not keep the others). */
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

/** Options of {@link DeviceManager}. */
export interface DeviceManagerOptions {
  /** Host resources behind devices. */
  backends: DeviceBackends;
  /** Releases (run in reverse order with the machine). */
  cleanups: (() => void | Promise<void>)[];
  /** Serial console (ttyS0) output. */
  onConsole?: (bytes: Uint8Array) => void;
  /** Guest errors that put a virtio device into DEVICE_NEEDS_RESET (logs). */
  onDeviceError?: (device: string, error: unknown) => void;
}

/** Runs `fn`; a failure's message gets `what: ` in front (which part of a record was bad). */
function step<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof Error) e.message = `${what}: ${e.message}`;
    throw e;
  }
}

/** A device a record names cannot be made here (its back-end is missing); the message says which. */
export class DeviceBackendError extends Error {}

/** The devices of one machine, cold-booted or restored. */
export class DeviceManager {
  readonly vm: Vm;
  readonly memory: RegionMemory;
  /** The serial console. */
  uart: Uart | null = null;
  /** The virtio console (port 0 is hvc0). */
  console: VirtioConsole | null = null;
  /** The vsock device (the guest agent's transport), when the machine has one. */
  vsock: VirtioVsock | null = null;
  /** The NIC, when the machine has one (attached to a network stack, or not). */
  net: VirtioNet | null = null;
  /** The virtio devices in slot order. */
  readonly virtio: VirtioSlot[] = [];
  readonly #opts: DeviceManagerOptions;
  readonly #records = new Map<string, { save: () => DeviceRecord; resume?: () => void }>();
  #log = "";

  constructor(vm: Vm, memory: RegionMemory, opts: DeviceManagerOptions) {
    this.vm = vm;
    this.memory = memory;
    this.#opts = opts;
  }

  /**
   * The one way a device goes onto the VM: its spec, its messages, its
   * record, and what a restore does once the VM state is back (`resume`).
   */
  #place(
    spec: DeviceSpec,
    record: () => DeviceRecord,
    onMessage?: (m: unknown) => void,
    resume?: () => void,
  ): void {
    if (this.#records.has(spec.name)) throw new Error(`device ${spec.name} is placed twice`);
    this.vm.addDevice(spec);
    if (onMessage) this.vm.onDeviceMessage(spec.name, onMessage);
    this.#records.set(spec.name, { save: record, resume });
  }

  /** The 8250 UART (ttyS0) at `port` with interrupt `gsi`; `state` from a snapshot. */
  addUart(name: string, port: number = COM1.base, gsi: number = COM1.irq, state?: unknown): void {
    const dec = new TextDecoder();
    const uart = new Uart({
      name,
      base: port,
      irq: gsi,
      output: (b) => {
        this.#log = (this.#log + dec.decode(b, { stream: true })).slice(-8192);
        this.#opts.onConsole?.(b);
      },
    });
    if (state !== undefined) step("state", () => uart.restore(state));
    // The Uart's own attach wires its interrupt line and output to the VM.
    let onMessage: ((m: unknown) => void) | undefined;
    uart.attach({
      addDevice: (spec) =>
        this.#place(spec, () => ({
          kind: "uart",
          args: {},
          placement: { ports: [{ base: port, length: 8 }], gsi },
          state: uart.save(),
        }), (m) => onMessage?.(m)),
      onDeviceMessage: (_n, fn) => onMessage = fn,
      setIrqLine: (g, level) => this.vm.setIrqLine(g, level),
    });
    this.uart = uart;
  }

  /** The i8042 (reset line) at ports 0x60/0x64; `state` from a snapshot. */
  addI8042(name: string, state?: unknown): void {
    const dev = new I8042Device(name);
    if (state !== undefined) step("state", () => dev.restore(state));
    this.#place(dev.spec(), () => ({
      kind: "i8042",
      args: {},
      placement: { ports: [{ base: I8042.DATA, length: 1 }, { base: I8042.COMMAND, length: 1 }] },
      state: dev.save(),
    }));
  }

  /** The ACPI sleep registers at `port` (power-off); stateless. */
  addSleep(name: string, port: number = LAYOUT.SLEEP_PORT): void {
    this.#place(sleepSpec(port, name), () => ({
      kind: "acpi-sleep",
      args: {},
      placement: { ports: [{ base: port, length: 2 }] },
      state: null,
    }));
  }

  /** The next free virtio slot: window and GSI (as Firecracker's MMIO allocator). */
  allocateVirtio(): { base: number; gsi: number } {
    const i = this.virtio.length;
    const gsi = LAYOUT.DEVICE_IRQ_FIRST + i;
    if (gsi > LAYOUT.DEVICE_IRQ_LAST) {
      throw new RangeError(
        `too many virtio devices: GSIs ${LAYOUT.DEVICE_IRQ_FIRST}–${LAYOUT.DEVICE_IRQ_LAST}`,
      );
    }
    return { base: MemoryLayout.virtioMmioBase(i), gsi };
  }

  #virtioDevice(name: string, kind: VirtioKind, args: Record<string, unknown>) {
    if (kind === "vsock") {
      const dev = new VirtioVsock({ guestCid: args.guestCid as number });
      this.vsock = dev;
      return dev;
    }
    if (kind === "console") {
      const dev = new VirtioConsole({ portNames: args.ports as string[] });
      this.console = dev;
      return dev;
    }
    if (kind === "fs") {
      const tag = args.tag as string;
      const server = this.#opts.backends.fs(tag);
      if (!server) throw new DeviceBackendError(`${name}: this run has no share tagged ${tag}`);
      return new VirtioFs({ tag, server });
    }
    const net = new VirtioNet({ mac: Uint8Array.from(args.mac as number[]) });
    this.net = net;
    // Without a stack (a machine whose network is attached per session) the NIC drops frames.
    const stack = this.#opts.backends.net();
    if (stack) this.#opts.cleanups.push(attachVirtioNet(stack, net));
    return net;
  }

  /**
   * A virtio device of `kind` made from `args`, behind the shared MMIO
   * transport at `at` (default: the next slot). `saved` (a restore) holds
   * its state and its transport's: the device is constructed from them.
   * Notifications come through ioeventfds; interrupts go out through
   * `KVM_IRQ_LINE` (an irqfd to an IOAPIC pin is injected from a kernel
   * workqueue, slower here: hv/notify_cost_bench.ts).
   */
  addVirtio(
    name: string,
    kind: VirtioKind,
    args: Record<string, unknown>,
    at: { base: number; gsi: number } = this.allocateVirtio(),
    saved?: { transport: unknown; state: unknown },
  ): VirtioSlot {
    const { base, gsi } = at;
    const device: VirtioDevice = this.#virtioDevice(name, kind, args);
    if (saved) step("state", () => device.restore(saved.state));
    const vm = this.vm;
    const host = step("transport", () =>
      new VirtioMmioHost(device, this.memory, {
        irq: () => vm.pulseIrq(gsi),
        onDeviceError: (e) => this.#opts.onDeviceError?.(name, e),
        state: saved?.transport as MmioTransportState | undefined,
      }));
    this.#place(
      host.spec(name, base, gsi),
      () => ({
        kind: `virtio-${kind}`,
        args,
        placement: { mmio: [{ base, length: MMIO_WINDOW }], gsi },
        transport: host.save(),
        state: device.save(),
      }),
      (m) => host.handle(m),
      () => host.resumeAfterRestore(),
    );
    const io = host.attachIoeventfds(vm, base);
    this.#opts.cleanups.push(async () => await io[Symbol.asyncDispose]());
    const slot = { name, base, gsi, host };
    this.virtio.push(slot);
    return slot;
  }

  /** The DSDT's virtio entries, in slot order. */
  dsdtEntries(): AcpiVirtioDevice[] {
    return this.virtio.map((v) => ({ base: v.base, gsi: v.gsi }));
  }

  /**
   * Each device's record by name, for `captureHvVm`. Nothing is put back
   * by `restore`: a restore constructs the devices from these records; a
   * virtio device's `restore` only replays the notifications that were
   * still in its eventfds at capture, once the VM state is back.
   */
  persist(): Map<string, Persist> {
    return new Map(
      [...this.#records].map(([name, r]) => [name, {
        save: r.save,
        ...(r.resume ? { restore: r.resume } : {}),
      }]),
    );
  }

  /** The last kernel log text (UART), for diagnostics. */
  log(): string {
    return this.#log;
  }
}

/** The devices of plan `p` on a cold boot, in the order a restore finds them. */
export function createDevices(
  vm: Vm,
  memory: RegionMemory,
  p: MachinePlan,
  opts: DeviceManagerOptions,
): DeviceManager {
  const dm = new DeviceManager(vm, memory, opts);
  dm.addUart("uart0");
  dm.addI8042("i8042");
  dm.addSleep("acpi-sleep");
  for (const v of p.virtio) dm.addVirtio(v.name, v.kind, v.args);
  return dm;
}
