/**
 * Counts torn 16/32-bit guest-memory accesses: another thread flips a word
 * between two values that differ in every byte (Atomics, one store each)
 * while this one reads it through {@link RegionMemory} (`read` mode), or
 * this one flips it through {@link RegionMemory} while the other reads it
 * with Atomics (`write` mode). Any value that is neither is half old, half
 * new. Run with `--v8-flags=--jitless` (memory_test.ts): unoptimised code is
 * where byte-wise moves would show. Prints `{"torn": n}`.
 *
 * Usage: `tearing_probe.ts read|write 16|32 ROUNDS`
 *
 * @module
 */

import { RegionMemory } from "../memory.ts";

const [mode, widthArg, roundsArg] = Deno.args;
const width = Number(widthArg);
const rounds = Number(roundsArg);
const A = width === 16 ? 0x00ff : 0x00ff00ff;
const B = width === 16 ? 0xff00 : 0xff00ff00;
const ADDR = 8;

const sab = new SharedArrayBuffer(64);
// Shared with the other thread, as guest RAM is with vCPUs.
const mem = new RegionMemory([
  { guestAddr: 0, size: 64, bytes: new Uint8Array(sab) as unknown as Uint8Array<ArrayBuffer> },
]);
const ctl = new Int32Array(new SharedArrayBuffer(8));

if (!("WorkerGlobalScope" in globalThis)) {
  const peer = new Worker(new URL(import.meta.url).href, { type: "module" });
  const replies: ((v: number) => void)[] = [];
  peer.onmessage = (e) => replies.shift()!(e.data);
  const reply = () => new Promise<number>((resolve) => replies.push(resolve));
  const started = reply();
  const peerDone = reply();
  peer.postMessage({ sab, ctl: ctl.buffer, mode, width });
  await started;
  let torn = 0;
  for (let i = 0; i < rounds; i++) {
    if (mode === "read") {
      const v = width === 16 ? mem.readU16(ADDR) : mem.readU32(ADDR);
      if (v !== A && v !== B) torn++;
    } else if (width === 16) mem.writeU16(ADDR, i & 1 ? B : A);
    else mem.writeU32(ADDR, i & 1 ? B : A);
  }
  Atomics.store(ctl, 1, 1);
  torn += await peerDone;
  peer.terminate();
  console.log(JSON.stringify({ torn }));
} else {
  self.onmessage = (e: MessageEvent) => {
    const { sab, ctl: c, mode, width } = e.data;
    const ctl = new Int32Array(c);
    const w = width === 16 ? new Uint16Array(sab) : new Uint32Array(sab);
    const i0 = ADDR / (width / 8);
    let torn = 0;
    Atomics.store(w, i0, A);
    self.postMessage(0);
    for (let i = 0; Atomics.load(ctl, 1) === 0; i++) {
      if (mode === "read") Atomics.store(w, i0, i & 1 ? B : A);
      else {
        const v = Atomics.load(w, i0) >>> 0;
        if (v !== A && v !== B) torn++;
      }
    }
    self.postMessage(torn);
  };
}
