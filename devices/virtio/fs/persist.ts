/**
 * virtio-fs's saved state, checked ({@link parseVirtioFsState}): the FUSE
 * server's protocol state and its back-end's node table. The shape is
 * checked here; the node table by the back-end that restores it.
 *
 * @module
 */

import * as check from "../../../hv/state.ts";
import type { FuseServerState } from "../../fuse/server.ts";
import type { VirtioFsState } from "./device.ts";

/** Checks a saved virtio-fs state; throws `StateError` naming the bad field. */
export function parseVirtioFsState(v: unknown, path = "$"): VirtioFsState {
  const o = check.object(v, path);
  const server = check.field(o, "server", path, check.object);
  const sp = `${path}.server`;
  check.field(server, "version", sp, (x, p) => check.int(x, p, 1, 1));
  if (server.proto !== null) {
    const proto = check.field(server, "proto", sp, check.object);
    const pp = `${sp}.proto`;
    check.field(proto, "major", pp, check.u32);
    check.field(proto, "minor", pp, check.u32);
    check.field(proto, "flags", pp, check.u64String);
    check.field(proto, "maxWrite", pp, check.u32);
  }
  return { server: server as unknown as FuseServerState };
}
