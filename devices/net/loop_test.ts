/**
 * L0: the loop on this thread (no Worker), driven as loop_worker.ts drives
 * it, to pin the order of commands and frames deterministically.
 */

import { strictEqual } from "node:assert/strict";
import { EFD, eventfd, libc } from "../../kvm_ffi/libc.ts";
import { COUNTER_KEYS } from "./config.ts";
import { type LoopEvent, NetLoop } from "./loop.ts";
import { FrameRing } from "./ring.ts";
import { arpRequest } from "./testdata/frames.ts";

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

Deno.test("loop: a frame pushed after a `link` command waits for that command", () => {
  const controlFd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
  const wakeFd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
  const events: LoopEvent[] = [];
  const loop = new NetLoop({
    t: "init",
    config: {},
    prebound: [],
    counters: new SharedArrayBuffer(8 * COUNTER_KEYS.length),
    control: new SharedArrayBuffer(4),
    controlFd,
  }, (e) => events.push(e));
  try {
    const toLoop = new FrameRing(1 << 16), fromLoop = new FrameRing(1 << 16);
    loop.handle({ t: "port", id: 1, toLoop: toLoop.buffers, fromLoop: fromLoop.buffers, wakeFd });
    // The host thread posts `link on`, then pushes an ARP request and wakes
    // the loop; the loop's turn sees the frame before the command's message.
    toLoop.push(arpRequest());
    libc.write(wakeFd, ONE, 8n);
    let checks = 0;
    loop.run(() => checks++ > 0); // one turn, during which the command is waiting
    strictEqual(fromLoop.peek(), null, "no reply before the link is on");
    loop.handle({ t: "link", id: 2, on: true });
    // One more turn (the control eventfd makes sure it never blocks), with
    // no command waiting: the frame is taken now.
    libc.write(controlFd, ONE, 8n);
    checks = 0;
    loop.run(() => checks++ >= 2);
    const reply = fromLoop.peek();
    strictEqual(reply?.[12], 0x08, "the ARP reply reached the attached link");
    strictEqual(reply?.[13], 0x06);
  } finally {
    loop.close();
    libc.close(controlFd);
    libc.close(wakeFd);
  }
});
