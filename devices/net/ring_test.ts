/** L0: the shared-memory frame ring (order, wrap-around, full, oversize). */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { FrameRing } from "./ring.ts";

function frame(n: number, fill: number): Uint8Array {
  return new Uint8Array(n).fill(fill);
}

Deno.test("ring: frames come out in order and intact across many wrap-arounds", () => {
  const producer = new FrameRing(4096);
  const consumer = new FrameRing(producer.buffers);
  let next = 0;
  let want = 0;
  for (let round = 0; round < 2000; round++) {
    // Odd sizes so records end at every alignment and wrap at every offset.
    for (let k = 0; k < 3; k++) {
      const len = 1 + ((next * 37) % 700);
      if (!producer.push(frame(len, next & 255))) break;
      next++;
    }
    for (let f = consumer.peek(); f; f = consumer.peek()) {
      const len = 1 + ((want * 37) % 700);
      strictEqual(f.length, len);
      ok(f.every((b) => b === (want & 255)), `frame ${want}`);
      consumer.release();
      want++;
    }
  }
  strictEqual(want, next);
  ok(next > 5000);
  strictEqual(producer.dropped, 0);
  ok(consumer.empty);
});

Deno.test("ring: a full ring refuses (and counts) frames until the consumer releases", () => {
  const r = new FrameRing(4096);
  let pushed = 0;
  while (r.push(frame(1000, pushed))) pushed++;
  strictEqual(pushed, 4); // 4 × (4 + 1000) bytes fit in 4096
  strictEqual(r.dropped, 1);
  const f = r.peek()!;
  strictEqual(f[0], 0);
  ok(!r.push(frame(1000, 9)), "not released yet");
  r.release();
  ok(r.push(frame(1000, 9)));
  deepStrictEqual([r.peek()![0]], [1]);
  // Larger than half the ring: never accepted.
  ok(!r.push(frame(r.maxFrame + 1, 0)));
  throws(() => new FrameRing(5000), /power of two/);
});
