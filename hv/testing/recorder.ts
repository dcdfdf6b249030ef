/**
 * Test devices for guest-program tests: a recorder whose writes land in a
 * SharedArrayBuffer the test reads back, and whose reads return a
 * deterministic pattern (`0xA0 + offset`, per byte) the guest can check.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../device.ts";

/** Layout of the shared log: Int32 count, then records of 16 bytes (offset u32, len u32, value u64). */
const HEADER = 8;
const RECORD = 16;

/** Host side of a recorder: the shared log and its spec. */
export class RecorderHost {
  readonly buffer: SharedArrayBuffer;
  readonly spec: DeviceSpec;
  constructor(
    name: string,
    ranges: {
      ports?: { base: number; length: number }[];
      mmio?: { base: number; length: number }[];
    },
    capacity = 256,
  ) {
    this.buffer = new SharedArrayBuffer(HEADER + capacity * RECORD);
    this.spec = {
      name,
      module: new URL("./recorder.ts", import.meta.url).href,
      config: { buffer: this.buffer, capacity },
      ...ranges,
    };
  }

  /** Writes seen so far, as `{ offset, len, value }`. */
  writes(): { offset: number; len: number; value: bigint }[] {
    const n = Atomics.load(new Int32Array(this.buffer), 0);
    const v = new DataView(this.buffer);
    const out = [];
    for (let i = 0; i < n; i++) {
      const at = HEADER + i * RECORD;
      out.push({
        offset: v.getUint32(at, true),
        len: v.getUint32(at + 4, true),
        value: v.getBigUint64(at + 8, true),
      });
    }
    return out;
  }
}

/** Worker factory. */
export function create(config: unknown, _ctx: DeviceContext): WorkerDevice {
  const { buffer, capacity } = config as { buffer: SharedArrayBuffer; capacity: number };
  const count = new Int32Array(buffer, 0, 1);
  const v = new DataView(buffer);
  return {
    read(offset: number, data: Uint8Array) {
      for (let i = 0; i < data.length; i++) data[i] = (0xa0 + offset + i) & 0xff;
    },
    write(offset: number, data: Uint8Array) {
      const i = Atomics.load(count, 0);
      if (i >= capacity) throw new Error(`recorder full (${capacity} writes)`);
      let value = 0n;
      for (let b = data.length - 1; b >= 0; b--) value = (value << 8n) | BigInt(data[b]);
      const at = HEADER + i * RECORD;
      v.setUint32(at, offset, true);
      v.setUint32(at + 4, data.length, true);
      v.setBigUint64(at + 8, value, true);
      Atomics.store(count, 0, i + 1);
    },
  };
}
