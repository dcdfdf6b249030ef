/**
 * The virtio console's saved state, checked ({@link parseConsoleState}).
 *
 * @module
 */

import * as check from "../../../hv/state.ts";
import type { ConsoleState } from "./device.ts";

/** Host bytes a saved port may hold (the device's own pending limit). */
const MAX_PENDING = 16 << 20;
/** Control messages a saved console may hold. */
const MAX_CONTROL = 4096;

/** Checks a saved console state for a console with `ports` ports; throws `StateError`. */
export function parseConsoleState(v: unknown, ports: number, path = "$"): ConsoleState {
  const o = check.object(v, path);
  const size = check.field(o, "size", path, check.object);
  const control = check.field(
    o,
    "control",
    path,
    (x, p) =>
      check.array(x, p, { maxLength: MAX_CONTROL }).map((
        m,
        i,
      ) => [...check.bytes(m, `${p}[${i}]`, 64)]),
  );
  const list = check.field(o, "ports", path, (x, p) => check.array(x, p, { length: ports }));
  return {
    ready: check.field(o, "ready", path, check.bool),
    control,
    ports: list.map((e, i) => {
      const p = `${path}.ports[${i}]`;
      const po = check.object(e, p);
      return {
        ready: check.field(po, "ready", p, check.bool),
        guestOpen: check.field(po, "guestOpen", p, check.bool),
        hostOpen: check.field(po, "hostOpen", p, check.bool),
        closing: check.field(po, "closing", p, check.bool),
        pending: [...check.field(po, "pending", p, (x, q) => check.bytes(x, q, MAX_PENDING))],
      };
    }),
    size: {
      columns: check.field(size, "columns", `${path}.size`, check.u16),
      rows: check.field(size, "rows", `${path}.size`, check.u16),
    },
  };
}
