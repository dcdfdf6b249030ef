/**
 * A stand-in "vmlinux" for L1 tests of the kvm engine's mailbox mode: an
 * ELF64 whose code (entered in 64-bit mode per the boot protocol, at 16 MiB)
 * plays the mailbox-mode init without a kernel — it prints `boot` on the
 * UART, rings READY on the mailbox, waits on CMD_SEQ (blocked host-side by
 * the device), and answers each COMMAND by printing `cmd <argv[0]>` and
 * returning argv[0]'s first character minus '0' as the result (so argv
 * `["3"]` "exits" 3). The record is read through its offsets as the host
 * encoded it (init/RECORD.md). SHUTDOWN powers off through the ACPI sleep
 * port. A cold boot therefore prints `boot`, a restored snapshot does not.
 *
 * @module
 */

import { Assembler, mem } from "../../../init/asm/mod.ts";
import { MAILBOX_LAYOUT, MB_CMD, MB_REG, MB_STATE } from "../../../devices/mailbox/registers.ts";
import { REC } from "../../../init/record.ts";
import { LAYOUT } from "../../boot/layout.ts";
import { SLEEP } from "../../acpi/tables.ts";

const LOAD = 16 << 20;
const COM1 = 0x3f8;

/** The stand-in's code, assembled for {@link LOAD}. */
export function mailboxKernelCode(): Uint8Array {
  const a = new Assembler();
  const r = (off: number, size: 32 | 64 = 32) => mem({ base: "rbx", disp: off, size });
  const putc = (c: number | "al") => {
    a.mov("dx", COM1);
    if (c !== "al") a.mov("al", c);
    a.out("dx", "al");
  };
  const puts = (s: string) => {
    for (const ch of s) putc(ch.charCodeAt(0));
  };
  puts("boot\n");
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
  a.cmp("ecx", MB_CMD.COMMAND);
  a.jne("finish");
  // argv[0] = data + *(data + *(data + REC.ARGV))
  a.mov("esi", MAILBOX_LAYOUT.DATA_BASE);
  a.mov("rax", mem({ base: "rsi", disp: REC.ARGV, size: 64 }));
  a.mov("rax", mem({ base: "rsi", index: "rax", size: 64 }));
  a.lea("r15", mem({ base: "rsi", index: "rax" }));
  puts("cmd ");
  a.label("print");
  a.mov("al", mem({ base: "r15", size: 8 }));
  a.test("al", "al");
  a.je("printed");
  putc("al");
  a.inc("r15");
  a.jmp("print");
  a.label("printed");
  puts("\n");
  a.mov("rax", mem({ base: "rsi", disp: REC.ARGV, size: 64 }));
  a.mov("rax", mem({ base: "rsi", index: "rax", size: 64 }));
  a.movzx("eax", mem({ base: "rsi", index: "rax", size: 8 }));
  a.sub("eax", 0x30);
  a.mov("r14", "rax");
  a.label("finish");
  a.mov(r(MB_REG.RESULT, 64), "r14");
  a.mov(r(MB_REG.DONE_SEQ), "r13d");
  a.mov("r12d", "r13d");
  a.jmp("wait");
  a.label("shutdown");
  a.mov(r(MB_REG.RESULT, 64), 0);
  a.mov(r(MB_REG.DONE_SEQ), "r13d");
  a.mov("dx", LAYOUT.SLEEP_PORT);
  a.mov("al", SLEEP.SLP_EN | (SLEEP.S5_TYPE << SLEEP.SLP_TYP_SHIFT));
  a.out("dx", "al");
  a.label("spin");
  a.jmp("spin");
  return a.assemble({ origin: LOAD }).bytes;
}

/** Wraps `code` in an ELF64 x86-64 EXEC with one PT_LOAD at 16 MiB and a physical entry. */
export function standInElf(code: Uint8Array): Uint8Array {
  const off = 0x1000;
  const b = new Uint8Array(off + code.length);
  const dv = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(LOAD), true);
  dv.setBigUint64(32, 64n, true);
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  dv.setUint32(64, 1, true); // PT_LOAD
  dv.setUint32(68, 5, true); // R+X
  dv.setBigUint64(72, BigInt(off), true);
  dv.setBigUint64(80, 0xffffffff81000000n, true);
  dv.setBigUint64(88, BigInt(LOAD), true);
  dv.setBigUint64(96, BigInt(code.length), true);
  dv.setBigUint64(104, BigInt(code.length + 0x1000), true);
  dv.setBigUint64(112, 0x1000n, true);
  b.set(code, off);
  return b;
}
