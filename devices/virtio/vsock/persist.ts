/**
 * Saved state of a virtio-vsock device (after Firecracker's vsock
 * `Persist`): only what survives a snapshot. Connections do not: a restored
 * device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2 §5.10.6.4), the
 * guest drops its connected sockets and keeps its listeners, and the host
 * re-registers its own listeners on the restored device.
 *
 * @module
 */

import { CID_ANY, HOST_CID } from "./packet.ts";

/** Version of {@link VsockState}. */
export const VSOCK_STATE_VERSION = 1;

/** Serialisable virtio-vsock state. */
export interface VsockState {
  /** {@link VSOCK_STATE_VERSION}. */
  version: number;
  /** The guest's CID (config space, §5.10.4). */
  guestCid: number;
}

/** Whether `cid` can be a guest's CID: above VMADDR_CID_HOST, below VMADDR_CID_ANY (u32). */
export function isGuestCid(cid: unknown): cid is number {
  return Number.isInteger(cid) && (cid as number) > HOST_CID && (cid as number) < CID_ANY;
}

/** Checks `state` (e.g. from a snapshot file) and returns it typed; throws RangeError naming the problem. */
export function parseVsockState(state: unknown): VsockState {
  if (state === null || typeof state !== "object") {
    throw new RangeError(`vsock state is not an object: ${JSON.stringify(state)}`);
  }
  const s = state as Record<string, unknown>;
  if (s.version !== VSOCK_STATE_VERSION) {
    throw new RangeError(
      `vsock state version ${JSON.stringify(s.version)} is not ${VSOCK_STATE_VERSION}`,
    );
  }
  if (!isGuestCid(s.guestCid)) {
    throw new RangeError(`vsock state guest CID ${JSON.stringify(s.guestCid)} is not in 3..2^32-2`);
  }
  return { version: VSOCK_STATE_VERSION, guestCid: s.guestCid };
}
