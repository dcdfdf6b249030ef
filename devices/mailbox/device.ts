/**
 * The mailbox's vCPU-Worker side: answers the register page's MMIO accesses
 * from the shared register image and tells the host about guest doorbells.
 *
 * The wait: a 4-byte read of CMD_SEQ blocks this vCPU's thread (Atomics.wait)
 * while no command is pending, until the host posts or wakes, or `waitMs`
 * passes; then it returns the current CMD_SEQ. That makes the init's wait a
 * single exit per command instead of a polling loop, and the host's doorbell
 * reaches the guest in one thread wake-up. The bound keeps the vCPU
 * responsive: a host `vm.pause()` (snapshot) waits at most `waitMs`, or not
 * at all after `Mailbox.wake()`, and the guest takes its pending interrupts
 * between waits.
 *
 * @module
 */

import type { DeviceContext, WorkerDevice } from "../../hv/device.ts";
import { MailboxRegisters, MB_REG } from "./registers.ts";

/** The structured-cloneable config in the device spec. */
export interface MailboxDeviceConfig {
  /** The register image (shared with the host). */
  registers: SharedArrayBuffer;
  /** Longest host-side block of one wait read, in milliseconds. */
  waitMs: number;
}

/** Message posted to the host for each guest doorbell. */
export type MailboxMessage =
  | { kind: "state"; state: number }
  | { kind: "done"; seq: number; result: bigint };

/** Worker factory (`DeviceSpec.factory` "create"). */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const { registers, waitMs } = config as MailboxDeviceConfig;
  if (!(registers instanceof SharedArrayBuffer)) {
    throw new Error(`${ctx.name}: config.registers must be a SharedArrayBuffer`);
  }
  const regs = new MailboxRegisters(new Uint8Array(registers));
  return {
    read(offset: number, data: Uint8Array) {
      if (offset === MB_REG.CMD_SEQ && data.length === 4) regs.waitForCommand(waitMs);
      regs.read(offset, data);
    },
    write(offset: number, data: Uint8Array) {
      const ev = regs.write(offset, data);
      if (ev) ctx.post(ev satisfies MailboxMessage);
    },
  };
}
