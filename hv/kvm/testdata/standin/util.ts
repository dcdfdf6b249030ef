/**
 * Small user-mode routines of the stand-in agent (System V-like convention:
 * arguments in rdi, rsi, rdx, rcx; result in rax; rax, rcx, rdx, rsi, rdi and
 * r8–r11 may be clobbered; rbx, rbp, r12–r15 are kept).
 *
 * @module
 */

import { type Assembler, mem } from "../../../../init/asm/mod.ts";
import { G } from "./structs.ts";
import { STANDIN } from "./layout.ts";
import { VEC } from "./ring3.ts";

/** Emits the routines `u_memcpy`, `u_strlen`, `u_streq`, `u_utoa`, `u_atou`, `u_puts`. */
export function emitUtil(a: Assembler): void {
  // u_memcpy(rdi dst, rsi src, rdx n): rep movsb runs natively at CPL3.
  a.label("u_memcpy");
  a.mov("rcx", "rdx");
  a.cld();
  a.repMovsb();
  a.ret();

  // u_strlen(rdi) → rax
  a.label("u_strlen");
  a.xor("eax", "eax");
  a.label("u_strlen_l");
  a.cmp(mem({ base: "rdi", index: "rax", size: 8 }), 0);
  a.je("u_strlen_d");
  a.inc("rax");
  a.jmp("u_strlen_l");
  a.label("u_strlen_d");
  a.ret();

  // u_streq(rdi, rsi) → eax 1 when the NUL-terminated strings are equal
  a.label("u_streq");
  a.mov("al", mem({ base: "rdi", size: 8 }));
  a.cmp("al", mem({ base: "rsi", size: 8 }));
  a.jne("u_streq_no");
  a.test("al", "al");
  a.je("u_streq_yes");
  a.inc("rdi");
  a.inc("rsi");
  a.jmp("u_streq");
  a.label("u_streq_yes");
  a.mov("eax", 1);
  a.ret();
  a.label("u_streq_no");
  a.xor("eax", "eax");
  a.ret();

  // u_utoa(rdi dst, rsi value, edx base) → rax digits written (no NUL)
  a.label("u_utoa");
  a.mov("r9", "rdi");
  a.mov("rax", "rsi");
  a.mov("ecx", "edx");
  a.mov("r8d", STANDIN.GLOBALS + G.NUMBUF + 63);
  a.mov("r10", "r8");
  a.label("u_utoa_l");
  a.xor("edx", "edx");
  a.div("rcx");
  a.add("dl", 0x30);
  a.mov(mem({ base: "r8", size: 8 }), "dl");
  a.dec("r8");
  a.test("rax", "rax");
  a.jnz("u_utoa_l");
  a.mov("rcx", "r10");
  a.sub("rcx", "r8");
  a.mov("rax", "rcx");
  a.lea("rsi", mem({ base: "r8", disp: 1 }));
  a.mov("rdi", "r9");
  a.cld();
  a.repMovsb();
  a.ret();

  // u_atou(rdi) → rax: the decimal digits at rdi (stops at the first non-digit)
  a.label("u_atou");
  a.xor("eax", "eax");
  a.label("u_atou_l");
  a.movzx("ecx", mem({ base: "rdi", size: 8 }));
  a.sub("ecx", 0x30);
  a.cmp("ecx", 9);
  a.ja("u_atou_d");
  a.imul("rax", "rax", 10);
  a.add("rax", "rcx");
  a.inc("rdi");
  a.jmp("u_atou_l");
  a.label("u_atou_d");
  a.ret();

  // u_puts(rdi): the NUL-terminated string on COM1, through the out gate
  a.label("u_puts");
  a.mov("rsi", "rdi");
  a.label("u_puts_l");
  a.mov("al", mem({ base: "rsi", size: 8 }));
  a.test("al", "al");
  a.je("u_puts_d");
  a.mov("dx", 0x3f8);
  a.int(VEC.OUT);
  a.inc("rsi");
  a.jmp("u_puts_l");
  a.label("u_puts_d");
  a.ret();
}
