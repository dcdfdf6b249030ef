/**
 * An MMIO doorbell for notify-cost measurements: every guest write that
 * reaches it (i.e. was not absorbed by an ioeventfd in the kernel) is counted
 * in a shared word and, when `post` is set, posted to the host thread's
 * `Vm.onDeviceMessage` listener — the path a virtio QueueNotify that no
 * ioeventfd absorbed takes (devices/virtio/mmio_worker.ts).
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../device.ts";

/** The structured-cloneable config of the Worker half. */
interface DoorbellConfig {
  counter: SharedArrayBuffer;
  post: boolean;
}

/** Host side: the spec and the count of writes that exited to the vCPU thread. */
export class DoorbellHost {
  readonly counter = new SharedArrayBuffer(4);
  readonly spec: DeviceSpec;
  /** `post`: forward each write to the host thread as a device message. */
  constructor(name: string, base: number, post: boolean) {
    const config: DoorbellConfig = { counter: this.counter, post };
    this.spec = {
      name,
      module: new URL("./doorbell_device.ts", import.meta.url).href,
      config,
      mmio: [{ base, length: 0x1000 }],
    };
  }
  /** Guest writes that reached the device (exits to user space). */
  get exits(): number {
    return Atomics.load(new Int32Array(this.counter), 0);
  }
}

/** Worker factory. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const cfg = config as DoorbellConfig;
  const count = new Int32Array(cfg.counter);
  return {
    read(_offset: number, data: Uint8Array) {
      data.fill(0);
    },
    write() {
      Atomics.add(count, 0, 1);
      if (cfg.post) ctx.post(null);
    },
  };
}
