/**
 * A port device for start-up measurements, two ports from `base`:
 *
 * - `base`: the first write stamps the wall-clock time (epoch ms, µs
 *   resolution: `performance.timeOrigin + performance.now()` of the vCPU
 *   thread, comparable across processes) and powers the VM off;
 * - `base + 1`: each write posts `"ready"` to the host (the guest reached an
 *   idle point it announces).
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../device.ts";

/** Host side: the stamp and the spec. */
export class StampDeviceHost {
  readonly buffer = new SharedArrayBuffer(8);
  readonly spec: DeviceSpec;
  constructor(base: number, name = "stamp") {
    this.spec = {
      name,
      module: new URL("./stamp_device.ts", import.meta.url).href,
      config: { buffer: this.buffer },
      ports: [{ base, length: 2 }],
    };
  }
  /** Epoch milliseconds of the guest's first write to `base` (0 before it). */
  get stamp(): number {
    return new Float64Array(this.buffer)[0];
  }
}

/** Worker factory. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const t = new Float64Array((config as { buffer: SharedArrayBuffer }).buffer);
  return {
    read(_offset: number, data: Uint8Array) {
      data.fill(0);
    },
    write(offset: number) {
      if (offset === 0) {
        if (t[0] === 0) t[0] = performance.timeOrigin + performance.now();
        ctx.requestStop({ kind: "poweroff", source: ctx.name, code: 0 });
      } else {
        ctx.post("ready");
      }
    },
  };
}
