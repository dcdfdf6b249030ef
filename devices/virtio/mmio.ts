/**
 * The virtio-mmio transport in one thread: the shared register file's
 * semantics (mmio_regs.ts) and the device's host half (mmio_host.ts) wired
 * with direct calls instead of Worker messages. It is the same code the kvm
 * engine runs split across vCPU Workers and the main thread — one
 * implementation of the register semantics — used by L0 tests and the mock
 * driver, where register accesses come from the test's own thread.
 *
 * No guest action makes the accesses throw: bad accesses are ignored (reads
 * give 0), and a device error while serving a queue sets DEVICE_NEEDS_RESET
 * and sends a configuration-change interrupt (§2.1.2).
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import type { VirtioDevice } from "./device.ts";
import { VirtioMmioHost } from "./mmio_host.ts";
import type { MmioState } from "./mmio_persist.ts";
import { MmioRegisters } from "./mmio_regs.ts";
import type { Queue } from "./queue.ts";
import { HOST_OWNER } from "./shared_lock.ts";

export { INT, MMIO, MMIO_MAGIC, MMIO_WINDOW, SKIFF_VENDOR_ID } from "./mmio_regs.ts";
export type { MmioState, MmioTransportState } from "./mmio_persist.ts";

/**
 * The interrupt line: called with true on every interrupt the device raises
 * (an edge-triggered line or irqfd pulses each time), and with false when the
 * driver's acknowledge clears InterruptStatus (a level-triggered line drops).
 */
export type IrqCallback = (asserted: boolean) => void;

/** Options of {@link VirtioMmioTransport}. */
export interface MmioOptions {
  /** Told about guest errors that put the device into DEVICE_NEEDS_RESET (logging). */
  onDeviceError?: (error: unknown) => void;
}

/** One virtio-mmio device window, both halves on the calling thread. */
export class VirtioMmioTransport {
  readonly device: VirtioDevice;
  /** The device's host half (queues, activation, interrupts, state). */
  readonly host: VirtioMmioHost;
  /** The register half. */
  readonly registers: MmioRegisters;
  readonly #irq: IrqCallback;

  constructor(device: VirtioDevice, mem: GuestMemory, irq: IrqCallback, opts: MmioOptions = {}) {
    this.device = device;
    this.#irq = irq;
    this.host = new VirtioMmioHost(device, mem, {
      irq: () => irq(true),
      onDeviceError: opts.onDeviceError,
    });
    const host = this.host;
    this.registers = new MmioRegisters(host.shared, host.info, mem, HOST_OWNER, {
      statusChanged: () => host.reconcile(),
      notify: (index) => host.notify(index),
      configWrite: (offset, data) => host.configWrite(offset, data),
      raise: () => irq(true),
      lower: () => irq(false),
      error: (e) => host.reportError(e),
    });
  }

  /** The queues (those of the current activation). */
  get queues(): readonly Queue[] {
    return this.host.queues;
  }
  /** Features offered to the driver. */
  get deviceFeatures(): bigint {
    return this.registers.deviceFeatures;
  }
  /** Features the driver accepted (valid once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.registers.driverFeatures;
  }
  /** The Status register. */
  get status(): number {
    return this.registers.status;
  }
  /** InterruptStatus. */
  get interruptStatus(): number {
    return this.registers.interruptStatus;
  }
  /** Whether the device is activated (DRIVER_OK and not failed). */
  get active(): boolean {
    return this.host.active;
  }
  /** Last error that set DEVICE_NEEDS_RESET (for diagnostics). */
  get lastError(): unknown {
    return this.host.lastError;
  }

  /** A register read of `data.length` bytes at `offset` in the window. */
  read(offset: number, data: Uint8Array): void {
    this.registers.read(offset, data);
  }
  /** A register write of `data.length` bytes at `offset` in the window. */
  write(offset: number, data: Uint8Array): void {
    this.registers.write(offset, data);
  }
  /** A 32-bit register read. */
  readRegister(offset: number): number {
    return this.registers.readRegister(offset);
  }
  /** A 32-bit register write. */
  writeRegister(offset: number, value: number): void {
    this.registers.writeRegister(offset, value);
  }

  /** The driver notified queue `index` (as from an ioeventfd). Nothing throws. */
  notify(index: number): void {
    this.host.notify(index);
  }

  /** Config space changed: bumps ConfigGeneration (§2.5.1) and sends a config interrupt. */
  signalConfig(): void {
    this.host.signalConfig();
  }

  /** Device reset (Status written 0, §2.4). */
  reset(): void {
    this.registers.reset();
  }

  /** Serialisable state of the transport, its queues and its device. */
  save(): MmioState {
    return { ...this.host.save(), device: this.device.save() };
  }

  /** Restores {@link save}'s state; re-activates the device when it was active. */
  restore(s: MmioState): void {
    this.host.restore(s, () => this.device.restore(s.device));
    if (this.registers.interruptStatus !== 0) this.#irq(true);
  }
}
