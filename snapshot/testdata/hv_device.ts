/**
 * The guest program's devices for `hv/` VMs (one instance per vCPU Worker),
 * with their state in a SharedArrayBuffer: per-vCPU UART text and counter,
 * the doorbell (posts `"doorbell"` to the host), the go flag the guest waits
 * on after ringing, and the done count (the last vCPU to finish powers off).
 * {@link HvTestDevices} is the host side and the snapshot `Persist` adapter.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import type { StateValue } from "../codec.ts";
import type { Persist } from "../vm_snapshot.ts";
import { COUNTER_PORT, DONE_PORT, DOORBELL_PORT, GO_PORT, UART_PORTS } from "./machine.ts";

const I = { GO: 0, RANG: 1, DONE: 2, CPUS: 3, COUNT: 4, SUM: 8, LEN: 12 } as const;
const TEXT = 64;
const TEXT_MAX = 256;
const BYTES = TEXT + 2 * TEXT_MAX;

/** Host side: the shared state, the spec to add to the VM, and save/restore. */
export class HvTestDevices implements Persist {
  readonly buffer = new SharedArrayBuffer(BYTES);
  readonly spec: DeviceSpec;
  #i32 = new Int32Array(this.buffer);
  #u8 = new Uint8Array(this.buffer);

  constructor(readonly cpus: number) {
    Atomics.store(this.#i32, I.CPUS, cpus);
    this.spec = {
      name: "test",
      module: new URL("./hv_device.ts", import.meta.url).href,
      config: { buffer: this.buffer },
      ports: [
        ...UART_PORTS.map((base) => ({ base, length: 1 })),
        { base: COUNTER_PORT, length: 8 },
        { base: DOORBELL_PORT, length: 3 },
      ],
    };
  }

  /** Lets the guest continue past the doorbell. */
  go(): void {
    Atomics.store(this.#i32, I.GO, 1);
  }

  text(): string[] {
    return Array.from({ length: this.cpus }, (_, c) => {
      const n = Atomics.load(this.#i32, I.LEN + c);
      return new TextDecoder().decode(this.#u8.slice(TEXT + c * TEXT_MAX, TEXT + c * TEXT_MAX + n));
    });
  }

  counter(): { sum: number[]; count: number[] } {
    const r = (base: number) =>
      Array.from({ length: this.cpus }, (_, c) => Atomics.load(this.#i32, base + c) >>> 0);
    return { sum: r(I.SUM), count: r(I.COUNT) };
  }

  save(): StateValue {
    return { text: this.text(), ...this.counter(), done: Atomics.load(this.#i32, I.DONE) };
  }

  restore(state: StateValue): void {
    const s = state as { text: string[]; sum: number[]; count: number[]; done: number };
    s.text.forEach((t, c) => {
      const b = new TextEncoder().encode(t);
      this.#u8.set(b, TEXT + c * TEXT_MAX);
      Atomics.store(this.#i32, I.LEN + c, b.length);
      Atomics.store(this.#i32, I.SUM + c, s.sum[c] | 0);
      Atomics.store(this.#i32, I.COUNT + c, s.count[c]);
    });
    Atomics.store(this.#i32, I.DONE, s.done);
  }
}

/** Worker factory. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const { buffer } = config as { buffer: SharedArrayBuffer };
  const i32 = new Int32Array(buffer);
  const u8 = new Uint8Array(buffer);
  const c = ctx.vcpuId;
  return {
    read(offset: number, data: Uint8Array, base: number) {
      data.fill(0);
      if (base + offset === GO_PORT) data[0] = Atomics.load(i32, I.GO);
    },
    write(offset: number, data: Uint8Array, base: number) {
      const port = base + offset;
      if (port === UART_PORTS[c]) {
        const n = Atomics.load(i32, I.LEN + c);
        if (n < TEXT_MAX) u8[TEXT + c * TEXT_MAX + n] = data[0];
        Atomics.store(i32, I.LEN + c, n + 1);
      } else if (port === COUNTER_PORT + 4 * c) {
        const v = new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(0, true);
        Atomics.store(i32, I.SUM + c, (Atomics.load(i32, I.SUM + c) + v) | 0);
        Atomics.add(i32, I.COUNT + c, 1);
      } else if (port === DOORBELL_PORT) {
        Atomics.store(i32, I.RANG, 1);
        ctx.post("doorbell");
      } else if (port === DONE_PORT) {
        if (Atomics.add(i32, I.DONE, 1) + 1 === Atomics.load(i32, I.CPUS)) {
          ctx.requestStop({ kind: "poweroff", source: "test", code: 0 });
        }
      } else {
        throw new Error(`vCPU ${c}: unexpected write to port 0x${port.toString(16)}`);
      }
    },
  };
}
