// L0: the device half of virtio's notification handshake (§2.7.10) against
// a driver on another CPU. Each side stores its own index and then loads the
// other's; x86 lets a load pass an earlier store to another address (store
// buffering), so without a full fence between the two both sides can read
// the old value and both go to sleep: the guest waits for an interrupt, the
// device for a kick. The driver fences (Linux's virtio_mb, the stand-in's
// mfence); these tests catch a device that does not.
import { strictEqual } from "node:assert/strict";
import { CTL, LITMUS, type LitmusStart } from "./testdata/notify_litmus_worker.ts";

/**
 * Rounds per mode. Without the device's fence, four runs of 50 000 rounds on
 * this machine (2 CPUs) lost 25–84 wake-ups in "avail" mode and 1–35 in
 * "used" mode; twice as many rounds make a missing fence fail every time.
 */
const ROUNDS = 100_000;

function runSide(start: LitmusStart): Promise<void> {
  const w = new Worker(new URL("./testdata/notify_litmus_worker.ts", import.meta.url).href, {
    type: "module",
  });
  return new Promise<void>((resolve, reject) => {
    w.onmessage = (ev) => {
      w.terminate();
      if (ev.data.ok) resolve();
      else reject(new Error(ev.data.error));
    };
    w.onerror = (ev) => {
      ev.preventDefault();
      w.terminate();
      reject(new Error(ev.message));
    };
    w.postMessage(start);
  });
}

async function lostWakeups(mode: "avail" | "used"): Promise<number> {
  const memory = new SharedArrayBuffer(LITMUS.MEM);
  const control = new SharedArrayBuffer(4 * CTL.WORDS);
  const base = { mode, rounds: ROUNDS, memory, control };
  await Promise.all([
    runSide({ role: "device", ...base }),
    runSide({ role: "driver", ...base }),
  ]);
  return new Int32Array(control)[CTL.LOST];
}

Deno.test("queue notify: arming notifications and looking for buffers never misses a racing kick", async () => {
  strictEqual(await lostWakeups("avail"), 0);
});

Deno.test("queue notify: returning a buffer and looking at used_event never misses a racing arm", async () => {
  strictEqual(await lostWakeups("used"), 0);
});
