/**
 * The device/transport split (after Firecracker's `VirtioDevice` and
 * `MmioTransport`): a {@link VirtioDevice} knows its type, features, config
 * space and queues' work; the transport owns the registers, feature
 * negotiation, the status state machine and interrupts.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import type { Queue } from "./queue.ts";

/** §2.1 device status bits. */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** §6 reserved feature bits (as bit numbers). */
export const FEATURE = {
  /** §2.7.5.3 indirect descriptors. */
  RING_INDIRECT_DESC: 28,
  /** §2.7.10 used_event / avail_event. */
  RING_EVENT_IDX: 29,
  /** §6.1: compliance with virtio 1.x; required by the mmio v2 transport here. */
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

/** §5 device IDs. */
export const DEVICE_ID = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  VSOCK: 19,
  FS: 26,
} as const;

/** Feature bit `n` as a mask. */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** What a device gets when the driver sets DRIVER_OK (or after a restore of an active device). */
export interface DeviceContext {
  /** Guest memory, to pass to the queue and chain calls. */
  readonly mem: GuestMemory;
  /** The device's queues, configured and ready (some may be unused: `ready` false). */
  readonly queues: readonly Queue[];
  /** Negotiated features. */
  readonly features: bigint;
  /**
   * Used buffers were added to queue `index`: interrupts the driver if the
   * queue's suppression state (flags / EVENT_IDX) asks for it.
   */
  signalUsed(index: number): void;
  /** The config space changed: bumps ConfigGeneration and sends a config interrupt. */
  signalConfig(): void;
  /**
   * The device hit a guest error outside a register access (e.g. while
   * serving a queue from a back-end callback): sets DEVICE_NEEDS_RESET.
   */
  fail(error: unknown): void;
}

/** A virtio device behind some transport. */
export interface VirtioDevice {
  /** §5 device ID. */
  readonly deviceType: number;
  /** QueueNumMax of each queue (the length is the number of queues). */
  readonly queueMaxSizes: readonly number[];
  /** Device-specific feature bits offered (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX). */
  readonly features: bigint;
  /** Reads device config space at `offset` into `data` (any width; out of range reads 0). */
  readConfig(offset: number, data: Uint8Array): void;
  /** Driver writes to config space (most devices ignore them). */
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver set DRIVER_OK: start serving the queues. */
  activate(ctx: DeviceContext): void;
  /**
   * The driver notified queue `index` (QueueNotify or an ioeventfd). May
   * throw {@link VirtqueueError} or GuestMemoryError; the transport turns that
   * into DEVICE_NEEDS_RESET.
   */
  queueNotify(index: number): void;
  /** Back to the pre-activation state (status written 0): drop the context, keep back-ends. */
  reset(): void;
  /** Device-specific state (JSON-serialisable), excluding queues (the transport saves those). */
  save(): unknown;
  /** Restores {@link save}'s state; the transport calls activate again if the device was active. */
  restore(state: unknown): void;
}
