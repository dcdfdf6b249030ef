/** L0: the virtio-net attachment joins the device and the stack (in its loop) both ways. */

import { strictEqual } from "node:assert/strict";
import { VirtioNet } from "../virtio/net/device.ts";
import { NetStack } from "./service.ts";
import { arpRequest, GUEST_MAC, icmpEcho, ipv4 } from "./testdata/frames.ts";
import { PROTO } from "./wire.ts";
import { attachVirtioNet } from "./virtio.ts";

/** Waits until `cond()` holds; the bound only catches a hang. */
async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("virtio attach: guest frames reach the stack; replies queue for the guest", async () => {
  await using stack = new NetStack();
  await stack.ready;
  const dev = new VirtioNet({ mac: GUEST_MAC });
  const detach = attachVirtioNet(stack, dev);
  const pending = () => (dev.save() as { pending: number }).pending;
  dev.link.fromGuest(arpRequest());
  await until("the ARP reply", () => stack.counters().arpReplies === 1);
  // No driver yet: the reply waits in the device's pending queue.
  await until("the reply queued in the device", () => pending() === 1);
  strictEqual(stack.counters().rxFrames, 1);
  detach();
  dev.link.fromGuest(arpRequest());
  // Frames reach the loop in order: once an echo request sent after it is
  // answered, a frame that crossed the detached attachment would be counted.
  stack.input(ipv4(PROTO.ICMP, icmpEcho(new Uint8Array(8))));
  await until("the echo request", () => stack.counters().icmpEchoReplies === 1);
  strictEqual(stack.counters().rxFrames, 2);
  strictEqual(pending(), 1);
});
