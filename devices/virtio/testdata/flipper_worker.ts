/**
 * A racing vCPU for tests: a Worker that keeps rewriting a few bytes of
 * shared guest memory (a SharedArrayBuffer) between two values, truly
 * concurrently with the device on the main thread, until told to stop.
 *
 * Message in: `{ memory, at, values: [a, b], control }`; `control` is an
 * Int32Array over a SharedArrayBuffer: [0] stop flag (set by the test),
 * [1] flips done so far (published by the worker). Posts "done" when it
 * has stopped.
 *
 * @module
 */

/// <reference lib="deno.worker" />

interface Start {
  memory: SharedArrayBuffer;
  at: number;
  values: [Uint8Array, Uint8Array];
  control: SharedArrayBuffer;
}

self.onmessage = (e: MessageEvent<Start>) => {
  const { memory, at, values, control } = e.data;
  const bytes = new Uint8Array(memory);
  const ctl = new Int32Array(control);
  const [a, b] = values;
  let flips = 0;
  while (Atomics.load(ctl, 0) === 0) {
    bytes.set(a, at);
    bytes.set(b, at);
    flips += 2;
    if ((flips & 0x3ff) === 0) Atomics.store(ctl, 1, flips);
  }
  Atomics.store(ctl, 1, flips);
  self.postMessage("done");
};
