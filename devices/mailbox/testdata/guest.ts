/**
 * A tiny guest "init" for L1 tests on /dev/kvm, assembled with init/asm: it
 * speaks the mailbox protocol the way `init/mailbox_loop.ts` does, minus the
 * kernel — rings READY, waits on CMD_SEQ (the device blocks the read
 * host-side), copies a PAYLOAD into RAM and calls it (rdi = arg, rsi = data,
 * rdx = registers), writes RESULT and rings DONE; SHUTDOWN powers off
 * through the debug-exit port with code {@link SHUTDOWN_CODE}. Other kinds
 * answer -EINVAL.
 *
 * @module
 */

import { Assembler, mem } from "../../../init/asm/mod.ts";
import { codeAddr, type TestGuest, testGuest } from "../../../hv/testing/guest.ts";
import { debugExitSpec } from "../../legacy/debug_exit.ts";
import { MAILBOX_LAYOUT, MB_CMD, MB_REG, MB_STATE } from "../registers.ts";
import { Mailbox } from "../mailbox.ts";

/** Where payloads are copied and run (guest RAM, below the test stack). */
export const EXEC_ADDR = 0x40000;
/** Largest payload the guest copies. */
export const EXEC_MAX = 0x30000;
/** The debug-exit code of an acknowledged SHUTDOWN. */
export const SHUTDOWN_CODE = 0x2a;

/** The guest program (origin `codeAddr(0)`), with its labels. */
export function mailboxGuest(): { bytes: Uint8Array; labels: Map<string, number> } {
  const a = new Assembler();
  const r = (off: number, size: 32 | 64 = 32) => mem({ base: "rbx", disp: off, size });
  a.mov("ebx", MAILBOX_LAYOUT.REGS_BASE);
  a.mov("r12d", r(MB_REG.DONE_SEQ));
  a.mov(r(MB_REG.STATE), MB_STATE.READY);
  a.label("wait");
  a.mov("eax", r(MB_REG.CMD_SEQ));
  a.cmp("eax", "r12d");
  a.jne("got");
  a.pause();
  a.jmp("wait");
  a.label("got");
  a.mov("r13d", "eax");
  a.mov("ecx", r(MB_REG.CMD_KIND));
  a.cmp("ecx", MB_CMD.SHUTDOWN);
  a.je("shutdown");
  a.mov("r14", -22);
  a.cmp("ecx", MB_CMD.PAYLOAD);
  a.jne("finish");
  a.mov("rcx", r(MB_REG.CMD_LEN, 64));
  a.test("rcx", "rcx");
  a.je("finish");
  a.cmp("rcx", EXEC_MAX);
  a.ja("finish");
  a.mov("esi", MAILBOX_LAYOUT.DATA_BASE);
  a.mov("edi", EXEC_ADDR);
  a.repMovsb();
  a.mov("rdi", r(MB_REG.CMD_ARG, 64));
  a.mov("esi", MAILBOX_LAYOUT.DATA_BASE);
  a.mov("rdx", "rbx");
  a.mov("eax", EXEC_ADDR);
  a.call("rax");
  a.mov("r14", "rax");
  a.label("finish");
  a.mov(r(MB_REG.RESULT, 64), "r14");
  a.mov(r(MB_REG.DONE_SEQ), "r13d");
  a.mov("r12d", "r13d");
  a.jmp("wait");
  a.label("shutdown");
  a.mov(r(MB_REG.RESULT, 64), 0);
  a.mov(r(MB_REG.DONE_SEQ), "r13d");
  a.mov("dx", 0x501);
  a.mov("al", SHUTDOWN_CODE);
  a.out("dx", "al");
  a.hlt();
  return a.assemble({ origin: codeAddr(0) });
}

/** A test VM running {@link mailboxGuest} with a mailbox attached (not started). */
export function mailboxTestGuest(waitMs = 10): { guest: TestGuest; mailbox: Mailbox } {
  const guest = testGuest({
    programs: [mailboxGuest().bytes],
    irqchip: true,
    devices: [debugExitSpec()],
  });
  const mailbox = new Mailbox({ dataSize: 1 << 20, waitMs });
  mailbox.attach(guest.vm);
  return { guest, mailbox };
}
