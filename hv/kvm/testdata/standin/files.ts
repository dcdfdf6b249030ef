/**
 * The stand-in's files: a table of paths with their mode and bytes, the
 * bytes in guest RAM from a bump allocator (so a snapshot carries them).
 * One WRITE_FILE at a time owns the top of the allocator and grows its file
 * there as data arrives; a file rewritten while it is the last one reuses
 * its space, otherwise its old bytes are left behind (a test stand-in:
 * WRITE_FILE answers ENOSPC when RAM runs out).
 *
 * @module
 */

import { type Assembler, mem } from "../../../../init/asm/mod.ts";
import { SIZES } from "./layout.ts";
import { at, F, G, g, TABLES } from "./structs.ts";

/** Emits `f_find`, `f_create`, `f_release_heap`. */
export function emitFiles(a: Assembler): void {
  // f_find(rdi path) → rax: the entry, or 0.
  a.label("f_find");
  a.push("rbx");
  a.push("r12");
  a.push("r13");
  a.mov("r12", "rdi");
  a.mov("ebx", TABLES.FILES);
  a.mov("r13d", SIZES.FILES);
  a.label("f_find_l");
  a.cmp(at("rbx", F.USED), 0);
  a.je("f_find_n");
  a.mov("rdi", "r12");
  a.lea("rsi", at("rbx", F.PATH));
  a.call("u_streq");
  a.test("eax", "eax");
  a.jnz("f_find_yes");
  a.label("f_find_n");
  a.add("rbx", SIZES.FILE);
  a.dec("r13d");
  a.jnz("f_find_l");
  a.xor("eax", "eax");
  a.jmp("f_find_ret");
  a.label("f_find_yes");
  a.mov("rax", "rbx");
  a.label("f_find_ret");
  a.pop("r13");
  a.pop("r12");
  a.pop("rbx");
  a.ret();

  // f_create(rdi path, shorter than FILE_PATH) → rax: a new empty entry, or 0 when the table is full.
  a.label("f_create");
  a.mov("rsi", "rdi");
  a.mov("eax", TABLES.FILES);
  a.mov("ecx", SIZES.FILES);
  a.label("f_create_l");
  a.cmp(at("rax", F.USED), 0);
  a.je("f_create_got");
  a.add("rax", SIZES.FILE);
  a.dec("ecx");
  a.jnz("f_create_l");
  a.xor("eax", "eax");
  a.ret();
  a.label("f_create_got");
  a.mov(at("rax", F.USED), 1);
  a.mov(at("rax", F.MODE), 0);
  a.mov(at("rax", F.SIZE, 64), 0);
  a.mov(at("rax", F.DATA, 64), 0);
  a.mov(at("rax", F.CAP, 64), 0);
  a.lea("rdi", at("rax", F.PATH));
  a.label("f_create_copy");
  a.mov("cl", mem({ base: "rsi", size: 8 }));
  a.mov(mem({ base: "rdi", size: 8 }), "cl");
  a.inc("rsi");
  a.inc("rdi");
  a.test("cl", "cl");
  a.jnz("f_create_copy");
  a.ret();

  // f_release_heap(rdi file): the writer is done; its bytes end the allocator's used part.
  a.label("f_release_heap");
  a.mov("rax", at("rdi", F.SIZE, 64));
  a.mov(at("rdi", F.CAP, 64), "rax");
  a.add("rax", at("rdi", F.DATA, 64));
  a.add("rax", 4095);
  a.and("rax", -4096);
  a.mov(g(G.HEAP_TOP, 64), "rax");
  a.mov(g(G.HEAP_OWNER, 64), 0);
  a.mov(g(G.PROGRESS), 1);
  a.ret();
}
