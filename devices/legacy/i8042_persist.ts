/**
 * The i8042's saved state, checked ({@link parseI8042Snapshot}).
 *
 * @module
 */

import * as check from "../../hv/state.ts";
import type { I8042Snapshot } from "./i8042.ts";

/** Checks a saved i8042 state; throws `StateError` naming the bad field. */
export function parseI8042Snapshot(v: unknown, path = "$"): I8042Snapshot {
  const o = check.object(v, path);
  return {
    status: check.field(o, "status", path, check.u8),
    ctr: check.field(o, "ctr", path, check.u8),
    out: check.field(o, "out", path, check.u8),
    outFull: check.field(o, "outFull", path, (x, p) => check.int(x, p, 0, 1)),
    pendingCmd: check.field(o, "pendingCmd", path, check.u8),
  };
}
