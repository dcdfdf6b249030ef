/**
 * A port device for timing guest code from the host: a byte write of N to
 * the base port records `performance.now()` (on the vCPU's thread) in slot
 * N of a shared buffer; writes to base + 1 are swallowed (a measured exit).
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../device.ts";

/** Slots of timestamps. */
export const MARKS = 64;

/** Host side: the timestamps and the spec. */
export class MarksDevice {
  readonly buffer = new SharedArrayBuffer(MARKS * 8);
  readonly spec: DeviceSpec;
  constructor(base: number, name = "marks") {
    this.spec = {
      name,
      module: new URL("./marks_device.ts", import.meta.url).href,
      config: { buffer: this.buffer },
      ports: [{ base, length: 2 }],
    };
  }
  /** Milliseconds from mark `a` to mark `b` (NaN when either is missing). */
  between(a: number, b: number): number {
    const t = new Float64Array(this.buffer);
    return t[a] && t[b] ? t[b] - t[a] : NaN;
  }
}

/** Worker factory. */
export function create(config: unknown, _ctx: DeviceContext): WorkerDevice {
  const t = new Float64Array((config as { buffer: SharedArrayBuffer }).buffer);
  return {
    read(_offset: number, data: Uint8Array) {
      data.fill(0);
    },
    write(offset: number, data: Uint8Array) {
      if (offset === 0 && data[0] < MARKS) t[data[0]] = performance.now();
    },
  };
}
