/**
 * virtio-net's saved state, checked ({@link parseNetState}). Frames in flight
 * are not part of it: TCP retransmits, and the stack resets connections on
 * restore anyway.
 *
 * @module
 */

import * as check from "../../../hv/state.ts";

/** What {@link VirtioNet.save} returns. */
export interface NetState {
  /** The link status the guest sees (config space, §5.1.4). */
  linkUp: boolean;
  /** Frames that were waiting for receive buffers (counted, not kept). */
  pending: number;
}

/** Checks a saved virtio-net state; throws `StateError` naming the bad field. */
export function parseNetState(v: unknown, path = "$"): NetState {
  const o = check.object(v, path);
  return {
    linkUp: check.field(o, "linkUp", path, check.bool),
    pending: check.field(o, "pending", path, (x, p) => check.int(x, p, 0, 1 << 20)),
  };
}
