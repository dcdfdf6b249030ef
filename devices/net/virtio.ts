/**
 * The virtio-net attachment: joins a {@link VirtioNet} device and a
 * {@link NetStack} (guest frames into the stack, the stack's frames into
 * the receive queue).
 *
 * @module
 */

import type { VirtioNet } from "../virtio/net/device.ts";
import type { NetStack } from "./service.ts";

/** Connects `dev` and `stack` both ways; returns a function that detaches them. */
export function attachVirtioNet(stack: NetStack, dev: VirtioNet): () => void {
  dev.link = { fromGuest: (frame) => stack.input(frame) };
  stack.attach({ send: (frame) => void dev.toGuest(frame) });
  return () => {
    dev.link = { fromGuest: () => {} };
    stack.detach();
  };
}
