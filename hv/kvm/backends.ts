/**
 * The host resources behind the kvm engine's devices: the FUSE server of
 * the one virtio-fs device (the share mux) and skiff's network stack. They
 * belong to the boot, not to a snapshot: the engine hands them to the
 * device manager, which asks for the one a device needs when it constructs
 * it — from the plan on a cold boot, from the snapshot's record on a
 * restore.
 *
 * @module
 */

import type { FuseServer } from "../../devices/fuse/server.ts";
import type { NetStack } from "../../devices/net/service.ts";

/** What the device manager may ask the engine for. */
export interface DeviceBackends {
  /** The FUSE server for the share tagged `tag`, or null when the boot has no such share. */
  fs(tag: string): FuseServer | null;
  /** The network stack, or null (the NIC then drops frames until one is attached). */
  net(): NetStack | null;
}

/** No back-ends: a machine with the plain console, or whose back-ends are attached later. */
export const NO_BACKENDS: DeviceBackends = { fs: () => null, net: () => null };
