/**
 * The virtio-mmio transport's saved state — its registers and each queue's
 * configuration and ring positions — and its checked parser. A snapshot
 * stores it beside (not inside) the device's own state, as Firecracker's
 * `MmioTransportState`.
 *
 * @module
 */

import * as check from "../../hv/state.ts";
import { StateError } from "../../hv/state.ts";
import { MAX_QUEUE_SIZE, type QueueState } from "./queue.ts";

/** Serialisable transport state. */
export interface MmioTransportState {
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  /** Negotiated features, decimal (a bigint does not survive plain JSON). */
  driverFeatures: string;
  queueSel: number;
  interruptStatus: number;
  configGeneration: number;
  queues: QueueState[];
}

/** Transport and device state together (the in-process transport's `save()`). */
export interface MmioState extends MmioTransportState {
  device: unknown;
}

/** Largest guest address a ring may be recorded at (JS numbers are exact below 2^53). */
const MAX_ADDR = Number.MAX_SAFE_INTEGER;

/** Checks a saved queue against the queue it is restored into (QueueNumMax `maxSize`). */
export function parseQueueState(v: unknown, maxSize: number, path = "$"): QueueState {
  const o = check.object(v, path);
  const max = check.field(o, "maxSize", path, check.u32);
  if (max !== maxSize) {
    throw new StateError(
      `${path}.maxSize`,
      `${max} differs from the device's queue size ${maxSize}`,
    );
  }
  const signalled = o.signalledUsed === null
    ? null
    : check.field(o, "signalledUsed", path, check.u16);
  return {
    maxSize,
    // A queue that is not ready may hold any QueueNum the driver wrote.
    size: check.field(o, "size", path, check.u32),
    ready: check.field(o, "ready", path, check.bool),
    descTable: check.field(o, "descTable", path, (x, p) => check.int(x, p, 0, MAX_ADDR)),
    availRing: check.field(o, "availRing", path, (x, p) => check.int(x, p, 0, MAX_ADDR)),
    usedRing: check.field(o, "usedRing", path, (x, p) => check.int(x, p, 0, MAX_ADDR)),
    nextAvail: check.field(o, "nextAvail", path, check.u16),
    nextUsed: check.field(o, "nextUsed", path, check.u16),
    eventIdx: check.field(o, "eventIdx", path, check.bool),
    signalledUsed: signalled,
    outstanding: check.field(o, "outstanding", path, (x, p) => check.int(x, p, 0, MAX_QUEUE_SIZE)),
  };
}

/**
 * Checks a saved transport state for a device with queues of
 * `queueMaxSizes`; throws {@link StateError} naming the bad field.
 */
export function parseMmioTransportState(
  v: unknown,
  queueMaxSizes: readonly number[],
  path = "$",
): MmioTransportState {
  const o = check.object(v, path);
  const queues = check.field(
    o,
    "queues",
    path,
    (x, p) => check.array(x, p, { length: queueMaxSizes.length }),
  );
  const features = check.field(o, "driverFeatures", path, check.u64String);
  return {
    status: check.field(o, "status", path, check.u8),
    deviceFeaturesSel: check.field(o, "deviceFeaturesSel", path, check.u32),
    driverFeaturesSel: check.field(o, "driverFeaturesSel", path, check.u32),
    driverFeatures: features.toString(),
    queueSel: check.field(o, "queueSel", path, check.u32),
    interruptStatus: check.field(o, "interruptStatus", path, (x, p) => check.int(x, p, 0, 3)),
    configGeneration: check.field(o, "configGeneration", path, check.u32),
    queues: queues.map((q, i) => parseQueueState(q, queueMaxSizes[i], `${path}.queues[${i}]`)),
  };
}
