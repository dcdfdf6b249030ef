/**
 * The network stack's Worker: builds a {@link NetLoop} from the first
 * message and runs it. The loop blocks in epoll_wait, so this isolate's
 * event loop (and with it `onmessage`) only runs while the loop is stopped:
 * the host thread counts each command in shared memory before posting it
 * and then writes the control eventfd; the loop returns as soon as the
 * count is ahead of what it has handled, the messages are delivered, and
 * the last one restarts the loop.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { CONTROL, type LoopCommand, type LoopInit, NetLoop } from "./loop.ts";

let loop: NetLoop | null = null;
let control: Int32Array<SharedArrayBuffer> | null = null;
let handled = 0;
let failed = false;

self.onmessage = (e: MessageEvent<LoopInit | LoopCommand>) => {
  handled++;
  const msg = e.data;
  if (failed) return;
  try {
    if (msg.t === "init") {
      control = new Int32Array(msg.control);
      loop = new NetLoop(msg, (ev) => self.postMessage(ev));
      self.postMessage({ t: "ready" });
    } else {
      loop?.handle(msg);
    }
  } catch (err) {
    failed = msg.t === "init";
    self.postMessage({ t: "error", message: (err as Error).message ?? String(err) });
    if (failed) return;
  }
  const ctl = control!;
  if (loop && !loop.closed && Atomics.load(ctl, CONTROL.POSTED) === handled) {
    loop.run(() => Atomics.load(ctl, CONTROL.POSTED) !== handled);
  }
};
