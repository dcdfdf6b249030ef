/**
 * L0 tests of the {@link OverflowGate} that wakes helper `/dev/fuse` readers:
 * one wake-up wakes one helper, a stop releases all of them, the negotiated
 * protocol passes through, and the primary can wait for helpers to leave.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { OverflowGate } from "./dev_fuse_loop.ts";

/** Polls `cond` (every 5 ms, up to 30 s: only catches hangs). */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 6000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

Deno.test("overflow gate: each wake-up wakes one helper; stop releases all", async () => {
  const gate = new OverflowGate();
  const HELPERS = 3;
  const src = `
    import { OverflowGate } from "${new URL("./dev_fuse_loop.ts", import.meta.url).href}";
    self.onmessage = (e) => {
      const gate = new OverflowGate(e.data);
      let wakes = 0;
      while (gate.park()) self.postMessage({ wake: ++wakes });
      gate.leave();
      self.postMessage({ left: wakes });
    };`;
  const url = `data:application/typescript;base64,${btoa(src)}`;
  const wakes: number[] = [];
  const left: number[] = [];
  const workers = Array.from({ length: HELPERS }, () => {
    gate.addHelper();
    const w = new Worker(url, { type: "module" });
    w.onmessage = (e) => {
      if (e.data.wake) wakes.push(e.data.wake);
      else left.push(e.data.left);
    };
    w.postMessage(gate.buffer);
    return w;
  });
  try {
    strictEqual(gate.alive, HELPERS);
    await until(() => gate.parked, "a parked helper");
    for (let i = 0; i < 5; i++) gate.wakeOne();
    await until(() => wakes.length === 5, "five wake-ups");
    // No more than one helper per ticket: nothing else wakes.
    await until(() => gate.parked, "helpers parked again");
    strictEqual(wakes.length, 5);
    ok(!gate.stopped);
    gate.stop();
    await until(() => left.length === HELPERS, "every helper leaving");
    strictEqual(left.reduce((a, b) => a + b, 0), 5, "each ticket taken once");
    strictEqual(gate.alive, 0);
    ok(gate.waitHelpers(1000));
  } finally {
    for (const w of workers) w.terminate();
  }
});

Deno.test("overflow gate: the protocol passes from the primary to helpers", () => {
  const gate = new OverflowGate();
  strictEqual(gate.proto(), null);
  const p = { major: 7, minor: 38, flags: String((1n << 33n) | 0x40001n), maxWrite: 1 << 20 };
  gate.publish(p);
  deepStrictEqual(new OverflowGate(gate.buffer).proto(), p);
});
