/**
 * One side of the notification litmus test (queue_notify_litmus_test.ts):
 * the device (skiff's {@link Queue} over guest memory) or the driver (what
 * a guest does: plain stores and loads around a full fence, as Linux's
 * `virtio_mb()` or the stand-in's `mfence`), each on its own thread,
 * meeting at a barrier before and after every round so the two racing
 * halves run at the same moment on two CPUs.
 *
 * Per round the device arms notifications and looks for work while the
 * driver publishes work and looks whether the device asked for a kick
 * (`avail` mode), or the device returns a buffer and looks whether the driver
 * asked for an interrupt while the driver arms one and looks for returned
 * buffers (`used` mode). A round where neither side sees the other is a lost
 * wake-up: both would sleep.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { RegionMemory } from "../../../hv/memory.ts";
import { Queue, USED_ELEM_SIZE, VIRTQ_DESC_F_WRITE } from "../queue.ts";

/** Queue geometry shared by both sides. */
export const LITMUS = {
  SIZE: 16,
  DESC: 0x1000,
  /** The rings on their own cache lines, as a guest lays them out. */
  AVAIL: 0x2000,
  USED: 0x3000,
  BUF: 0x4000,
  MEM: 0x8000,
} as const;

/** Control words (Int32 indices). */
export const CTL = { DEV: 0, DRV: 1, DEV_SAW: 2, DRV_SAW: 3, LOST: 4, GO: 5, WORDS: 8 } as const;

/** What the test posts to each side. */
export interface LitmusStart {
  role: "device" | "driver";
  mode: "avail" | "used";
  rounds: number;
  memory: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

const AVAIL_IDX = LITMUS.AVAIL + 2;
const USED_IDX = LITMUS.USED + 2;
/** §2.7.6/§2.7.8: used_event after the avail ring's entries, avail_event after the used ring's. */
const USED_EVENT = LITMUS.AVAIL + 4 + 2 * LITMUS.SIZE;
const AVAIL_EVENT = LITMUS.USED + 4 + USED_ELEM_SIZE * LITMUS.SIZE;

/** Spins before sleeping at the barrier, and the most a side spins waiting to start a round together. */
const SPIN = 20_000;

/**
 * Phase barrier: publishes `phase` as this side's and waits until the other
 * side's reaches it — spinning first, then on a futex, so that a busy
 * machine (the other side not running) costs no CPU.
 */
function meet(ctl: Int32Array, mine: number, theirs: number, phase: number): void {
  Atomics.store(ctl, mine, phase);
  Atomics.notify(ctl, mine);
  for (let n = 0;; n++) {
    const seen = Atomics.load(ctl, theirs);
    if (seen >= phase) return;
    if (n >= SPIN) Atomics.wait(ctl, theirs, seen);
  }
}

/**
 * Starts round `k` together: both sides are awake after {@link meet}, so a
 * short spin on a second pair of words lets them leave within nanoseconds of
 * each other. Bounded, so a side whose peer lost its CPU meanwhile goes on
 * (that round simply races less).
 */
function start(ctl: Int32Array, mine: number, theirs: number, k: number): void {
  meet(ctl, mine, theirs, 2 * k);
  Atomics.store(ctl, mine + CTL.GO, k);
  for (let n = 0; n < SPIN && Atomics.load(ctl, theirs + CTL.GO) < k; n++) {
    // spin
  }
}

function device(s: LitmusStart, ctl: Int32Array): void {
  const bytes = new Uint8Array(s.memory);
  // Shared with the driver thread, as guest RAM is with vCPUs.
  const mem = new RegionMemory([
    { guestAddr: 0, size: bytes.length, bytes: bytes as unknown as Uint8Array<ArrayBuffer> },
  ]);
  const dv = new DataView(s.memory);
  const q = new Queue(LITMUS.SIZE);
  q.descTable = LITMUS.DESC;
  q.availRing = LITMUS.AVAIL;
  q.usedRing = LITMUS.USED;
  q.eventIdx = true;
  q.ready = true;
  for (let i = 0; i < LITMUS.SIZE; i++) {
    const d = LITMUS.DESC + 16 * i;
    dv.setBigUint64(d, BigInt(LITMUS.BUF + 64 * i), true);
    dv.setUint32(d + 8, 64, true);
    dv.setUint16(d + 12, VIRTQ_DESC_F_WRITE, true);
    dv.setUint16(LITMUS.AVAIL + 4 + 2 * i, i, true);
  }
  let lost = 0;
  for (let k = 1; k <= s.rounds; k++) {
    let saw: boolean;
    if (s.mode === "avail") {
      // Before: k-1 buffers published and consumed; avail_event still at k-2.
      q.setPositions((k - 1) & 0xffff);
      dv.setUint16(AVAIL_EVENT, (k - 2) & 0xffff, true);
      start(ctl, CTL.DEV, CTL.DRV, k);
      saw = q.setNotification(mem, true);
    } else {
      // Before: buffer k published and popped; the driver's used_event still at k-2.
      dv.setUint16(AVAIL_IDX, k & 0xffff, true);
      dv.setUint16(USED_EVENT, (k - 2) & 0xffff, true);
      const chain = q.pop(mem);
      if (!chain) throw new Error(`round ${k}: no buffer to return`);
      start(ctl, CTL.DEV, CTL.DRV, k);
      q.addUsed(mem, chain.head, 0);
      saw = q.needsNotification(mem);
    }
    Atomics.store(ctl, CTL.DEV_SAW, saw ? 1 : 0);
    meet(ctl, CTL.DEV, CTL.DRV, 2 * k + 1);
    if (!saw && Atomics.load(ctl, CTL.DRV_SAW) === 0) lost++;
  }
  Atomics.store(ctl, CTL.LOST, lost);
}

function driver(s: LitmusStart, ctl: Int32Array): void {
  const u16 = new Uint16Array(s.memory);
  for (let k = 1; k <= s.rounds; k++) {
    start(ctl, CTL.DRV, CTL.DEV, k);
    let saw: boolean;
    // Atomics.store is a store and a full fence (xchg on x86), then a plain load: mov; mfence; mov.
    if (s.mode === "avail") {
      // Publish buffer k, then kick if the device's avail_event asks (vring_need_event, old = k-1).
      Atomics.store(u16, AVAIL_IDX / 2, k & 0xffff);
      saw = u16[AVAIL_EVENT / 2] === ((k - 1) & 0xffff);
    } else {
      // Ask for an interrupt after used index k-1, then look whether buffer k came back already.
      Atomics.store(u16, USED_EVENT / 2, (k - 1) & 0xffff);
      saw = u16[USED_IDX / 2] === (k & 0xffff);
    }
    Atomics.store(ctl, CTL.DRV_SAW, saw ? 1 : 0);
    meet(ctl, CTL.DRV, CTL.DEV, 2 * k + 1);
  }
}

self.onmessage = (ev: MessageEvent<LitmusStart>) => {
  const s = ev.data;
  const ctl = new Int32Array(s.control);
  try {
    if (s.role === "device") device(s, ctl);
    else driver(s, ctl);
    self.postMessage({ ok: true });
  } catch (e) {
    self.postMessage({ ok: false, error: (e as Error).stack ?? String(e) });
  }
};
