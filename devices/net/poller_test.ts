/** L0: the poll loop's epoll, timers and deferred work, on real eventfds. */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { EFD, eventfd, libc } from "../../kvm_ffi/libc.ts";
import { EPOLL, Poller } from "./poller.ts";

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/** Turns `p` until `cond()` holds; the bound only catches a hang. */
function turnUntil(p: Poller, cond: () => boolean): void {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("the poller never got there");
    p.turn(50);
  }
}

Deno.test("poller: a readable fd calls its handler; set(0) and close stop the calls", () => {
  const p = new Poller();
  const fd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
  try {
    let calls = 0;
    const w = p.watch(fd, EPOLL.IN, (ev) => {
      ok(ev & EPOLL.IN);
      calls++;
    });
    strictEqual(p.turn(0), 0);
    libc.write(fd, ONE, 8n);
    strictEqual(p.turn(-1), 1);
    strictEqual(calls, 1);
    // Level-triggered: still readable (nobody read the counter).
    p.turn(-1);
    strictEqual(calls, 2);
    w.set(0);
    strictEqual(p.turn(0), 0);
    w.set(EPOLL.IN);
    p.turn(-1);
    strictEqual(calls, 3);
    w.close();
    strictEqual(p.turn(0), 0);
    strictEqual(calls, 3);
    // The number is free for a new watch once the old one is closed.
    p.watch(fd, EPOLL.IN, () => calls++).close();
  } finally {
    libc.close(fd);
    p.close();
  }
});

Deno.test("poller: timers fire in deadline order, cancelled ones never; deferred work runs after events", () => {
  const p = new Poller();
  try {
    const order: string[] = [];
    p.after(20, () => order.push("b"));
    const cancel = p.after(10, () => order.push("cancelled"));
    p.after(5, () => order.push("a"));
    p.after(20, () => order.push("c")); // same deadline: in the order set
    cancel();
    p.defer(() => {
      order.push("deferred");
      p.defer(() => order.push("deferred by deferred"));
    });
    strictEqual(p.turn(0), 0); // deferred work means no wait
    deepStrictEqual(order, ["deferred", "deferred by deferred"]);
    turnUntil(p, () => order.length === 5);
    deepStrictEqual(order.slice(2), ["a", "b", "c"]);
    ok(p.now() >= 0);
  } finally {
    p.close();
  }
});

Deno.test("poller: a throwing handler is reported and the loop goes on", () => {
  const errors: unknown[] = [];
  const p = new Poller((e) => errors.push(e));
  try {
    let ran = false;
    p.defer(() => {
      throw new Error("boom");
    });
    p.defer(() => ran = true);
    p.turn(0);
    strictEqual(errors.length, 1);
    ok(ran);
  } finally {
    p.close();
  }
});
