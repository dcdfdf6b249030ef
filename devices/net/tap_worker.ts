/**
 * The TAP reader Worker: reads frames from the TAP fd into the shared ring
 * (see `tap.ts`) and wakes the main thread. Waits in poll(2) on the TAP fd
 * and a wake eventfd when the device has nothing to read.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { errno, libc, POLL } from "../../kvm_ffi/libc.ts";
import { CTRL, type TapWorkerInit } from "./tap.ts";

const EAGAIN = 11, EINTR = 4;

self.onmessage = (e: MessageEvent<TapWorkerInit>) => {
  const { fd, wakeFd, slots, slotSize } = e.data;
  const ctrl = new Int32Array(e.data.ctrl);
  const lens = new Int32Array(e.data.lens);
  const ring = new Uint8Array(e.data.ring);
  const pfd = new Uint8Array(16); // two struct pollfd
  const dv = new DataView(pfd.buffer);
  dv.setInt32(0, fd, true);
  dv.setInt16(4, POLL.IN, true);
  dv.setInt32(8, wakeFd, true);
  dv.setInt16(12, POLL.IN, true);
  let wp = 0;
  const views = Array.from(
    { length: slots },
    (_, i) => ring.subarray(i * slotSize, (i + 1) * slotSize) as unknown as Uint8Array<ArrayBuffer>,
  );
  // serve() waits for this: from here on every frame is read.
  self.postMessage("running");
  while (Atomics.load(ctrl, CTRL.STOP) === 0) {
    // Wait for a free slot.
    const rp = Atomics.load(ctrl, CTRL.READ);
    if (((wp - rp) | 0) >= slots) {
      Atomics.wait(ctrl, CTRL.READ, rp, 100);
      continue;
    }
    const slot = wp & (slots - 1); // slots is a power of two; wp wraps at 2^31
    const n = Number(libc.read(fd, views[slot], BigInt(slotSize)));
    if (n > 0) {
      lens[slot] = n;
      wp = (wp + 1) | 0;
      Atomics.store(ctrl, CTRL.WRITE, wp);
      Atomics.notify(ctrl, CTRL.WRITE);
      continue;
    }
    const err = n < 0 ? errno() : 0;
    if (n < 0 && err !== EAGAIN && err !== EINTR) break;
    libc.poll(pfd, 2n, -1);
  }
  self.postMessage("stopped");
};
