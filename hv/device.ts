/**
 * How devices plug into the vCPU Workers.
 *
 * Register reads and writes are answered on the vCPU's own thread: a guest
 * `in`/`out` or MMIO access must not wait for another thread, because each
 * hop through the main thread's event loop costs tens of microseconds
 * against ~9 µs for the exit itself (DESIGN.md). Objects cannot cross
 * isolates, so a device reaches a Worker as a serialisable
 * {@link DeviceSpec}: the module URL of a factory, the factory's name, a
 * structured-cloneable `config`, and its port/MMIO ranges. Each vCPU Worker
 * imports the module and calls the factory once with the `config` and a
 * {@link DeviceContext}.
 *
 * - State that the main thread or other vCPUs must see lives in
 *   SharedArrayBuffers inside `config` (the same buffer arrives in every
 *   Worker). With more than one vCPU there is one device instance per
 *   Worker, so such state must be guarded with Atomics (the UART does).
 * - Slow back-end work (files, sockets) belongs on the main thread or its own
 *   Worker: the device posts a message with {@link DeviceContext.post} and the
 *   host side listens with `Vm.onDeviceMessage(name, fn)`; completions come
 *   back through shared memory and an interrupt (`setIrqLine`, or an irqfd
 *   the host signals).
 * - A device ends the VM (guest reboot, power-off) with `requestStop`.
 *
 * @module
 */

import type { BusDevice } from "./bus.ts";
import type { GuestMemory } from "./memory.ts";

/** A range of ports or guest-physical addresses. */
export interface AddressRange {
  base: number;
  length: number;
}

/** A device as data: what a vCPU Worker needs to instantiate it. */
export interface DeviceSpec {
  /** Unique per VM; names the device in errors and routes its messages. */
  name: string;
  /** Absolute URL of the module exporting the factory (use `new URL("./x.ts", import.meta.url).href`). */
  module: string;
  /** Name of the exported {@link DeviceFactory} (default `"create"`). */
  factory?: string;
  /** Passed to the factory; must be structured-cloneable (SharedArrayBuffers are shared). */
  config?: unknown;
  /** Port-I/O ranges the device answers. */
  ports?: AddressRange[];
  /** MMIO ranges the device answers. */
  mmio?: AddressRange[];
}

/** Why a device ends the VM. */
export type DeviceStopRequest =
  | { kind: "reset"; source: string }
  | { kind: "poweroff"; source: string; code?: number };

/** What a device gets inside the vCPU Worker. */
export interface DeviceContext {
  /** The device's name from its spec. */
  readonly name: string;
  /** Which vCPU's Worker this instance lives in. */
  readonly vcpuId: number;
  /** Guest RAM, mapped into this Worker (same pages as the main thread's). */
  readonly memory: GuestMemory;
  /** Drives GSI `gsi` of the in-kernel irqchip (`KVM_IRQ_LINE`). */
  setIrqLine(gsi: number, level: 0 | 1): void;
  /** Posts `message` to the host's `Vm.onDeviceMessage(name, …)` listener. */
  post(message: unknown, transfer?: Transferable[]): void;
  /** Ends the VM after the current exit (guest reboot or power-off). */
  requestStop(request: DeviceStopRequest): void;
}

/** A device instance in a Worker: a bus device, optionally with a teardown. */
export interface WorkerDevice extends BusDevice {
  /** Called when the vCPU loop ends. */
  close?(): void;
}

/** What a device module exports: builds the Worker-side instance. */
export type DeviceFactory = (config: unknown, ctx: DeviceContext) => WorkerDevice;
