/**
 * A port device for exit-cost measurements: writes to offset 0 are swallowed
 * (the measured exit), offset 1 records a start and offset 2 an end
 * timestamp (`performance.now()` of the vCPU thread) in a shared buffer.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../device.ts";

/** Host side: the timestamps and the spec. */
export class TimerDeviceHost {
  readonly buffer = new SharedArrayBuffer(16);
  readonly spec: DeviceSpec;
  constructor(base: number, name = "timer") {
    this.spec = {
      name,
      module: new URL("./timer_device.ts", import.meta.url).href,
      config: { buffer: this.buffer },
      ports: [{ base, length: 3 }],
    };
  }
  /** Milliseconds between the start and end marks. */
  elapsedMs(): number {
    const t = new Float64Array(this.buffer);
    return t[1] - t[0];
  }
}

/** Worker factory. */
export function create(config: unknown, _ctx: DeviceContext): WorkerDevice {
  const t = new Float64Array((config as { buffer: SharedArrayBuffer }).buffer);
  return {
    read(_offset: number, data: Uint8Array) {
      data.fill(0);
    },
    write(offset: number) {
      if (offset === 1) t[0] = performance.now();
      else if (offset === 2) t[1] = performance.now();
    },
  };
}
