/**
 * The 8250 UART's saved state, checked ({@link parseUartSnapshot}).
 *
 * @module
 */

import * as check from "../../hv/state.ts";
import { RX_RING, type UartSnapshot } from "./uart.ts";

/** Checks a saved UART state; throws `StateError` naming the bad field. */
export function parseUartSnapshot(v: unknown, path = "$"): UartSnapshot {
  const o = check.object(v, path);
  const u8 = (k: string) => check.field(o, k, path, check.u8);
  return {
    ier: u8("ier"),
    lcr: u8("lcr"),
    mcr: u8("mcr"),
    lsrErr: u8("lsrErr"),
    scr: u8("scr"),
    dll: u8("dll"),
    dlm: u8("dlm"),
    thri: check.field(o, "thri", path, (x, p) => check.int(x, p, 0, 1)),
    fcr: u8("fcr"),
    rx: [...check.field(o, "rx", path, (x, p) => check.bytes(x, p, RX_RING))],
  };
}
