/** L0: the virtio-net attachment joins the device and the stack both ways. */

import { strictEqual } from "node:assert/strict";
import { VirtioNet } from "../virtio/net/device.ts";
import { NetStack } from "./stack.ts";
import { arpRequest, GUEST_MAC } from "./testdata/frames.ts";
import { attachVirtioNet } from "./virtio.ts";

Deno.test("virtio attach: guest frames reach the stack; replies queue for the guest", async () => {
  await using stack = new NetStack();
  const dev = new VirtioNet({ mac: GUEST_MAC });
  const detach = attachVirtioNet(stack, dev);
  dev.link.fromGuest(arpRequest());
  strictEqual(stack.counters().arpReplies, 1);
  // No driver yet: the reply waits in the device's pending queue.
  strictEqual((dev.save() as { pending: number }).pending, 1);
  detach();
  dev.link.fromGuest(arpRequest());
  strictEqual(stack.counters().rxFrames, 1);
});
