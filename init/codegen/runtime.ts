/**
 * The init's runtime routines, hand-written with the assembler: string
 * helpers, `mkdir -p`, PATH search, virtio-console port lookup, error
 * messages and command-record relocation. Calling convention: System V
 * argument registers (rdi, rsi, rdx, rcx), result in rax; rbx, rbp and
 * r12–r15 are preserved, everything else may be clobbered.
 *
 * @module
 */

import { type Assembler, mem, rip } from "../asm/mod.ts";
import type { Routine } from "../ir/ir.ts";
import { E, ERRNO_NAMES, O, SYS } from "../ir/linux.ts";

/** The label of a routine. */
export const rtLabel = (r: Routine): string => `rt.${r}`;

/** Routines each routine calls (so only what is used gets emitted). */
export const ROUTINE_DEPS: Record<Routine, Routine[]> = {
  strlen: [],
  strcpy: [],
  streq: [],
  utoa: [],
  memcpy: [],
  sleep_ms: [],
  write_str: ["strlen"],
  mkdir_p: ["strcpy"],
  execvp: ["strcpy"],
  read_file: [],
  read_full: [],
  write_all: [],
  find_port: ["strcpy", "read_file", "streq"],
  write_error: ["strcpy", "utoa", "write_str"],
  relocate: [],
};

export { RECORD_MAGIC } from "../ir/record_magic.ts";
import { RECORD_MAGIC } from "../ir/record_magic.ts";

/** Scratch buffers and strings the routines need: [label, size] and [label, text]. */
export interface RuntimeData {
  buffers: [string, number][];
  strings: [string, string][];
  errnoTable: boolean;
}

const q = (base: Parameters<typeof mem>[0]["base"], disp = 0, size: 8 | 16 | 32 | 64 = 64) =>
  mem({ base, disp, size });

function pushSaved(a: Assembler, regs: ("rbx" | "rbp" | "r12" | "r13" | "r14" | "r15")[]) {
  for (const r of regs) a.push(r);
  return () => {
    for (const r of [...regs].reverse()) a.pop(r);
  };
}

/** Emits routine `r` and records the data it needs in `data`. */
export function emitRoutine(a: Assembler, r: Routine, data: RuntimeData): void {
  const L = (s: string) => `rt.${r}.${s}`;
  const sys = (nr: number) => a.mov("eax", nr).syscall();
  a.label(rtLabel(r));
  switch (r) {
    case "strlen":
      a.xor("eax", "eax");
      a.label(L("loop"));
      a.cmp(mem({ base: "rdi", index: "rax", size: 8 }), 0);
      a.je(L("done"));
      a.inc("rax");
      a.jmp(L("loop"));
      a.label(L("done"));
      a.ret();
      return;
    case "strcpy":
      a.label(L("loop"));
      a.mov("al", q("rsi", 0, 8));
      a.mov(q("rdi", 0, 8), "al");
      a.test("al", "al");
      a.je(L("done"));
      a.inc("rsi");
      a.inc("rdi");
      a.jmp(L("loop"));
      a.label(L("done"));
      a.mov("rax", "rdi");
      a.ret();
      return;
    case "streq":
      a.label(L("loop"));
      a.mov("al", q("rdi", 0, 8));
      a.cmp("al", q("rsi", 0, 8));
      a.jne(L("no"));
      a.test("al", "al");
      a.je(L("yes"));
      a.inc("rdi");
      a.inc("rsi");
      a.jmp(L("loop"));
      a.label(L("yes"));
      a.mov("eax", 1);
      a.ret();
      a.label(L("no"));
      a.xor("eax", "eax");
      a.ret();
      return;
    case "memcpy":
      a.mov("rax", "rdi");
      a.mov("rcx", "rdx");
      a.repMovsb();
      a.ret();
      return;
    case "utoa":
      a.mov("rax", "rsi");
      a.mov("r8", "rdi");
      a.sub("rsp", 32);
      a.lea("r9", q("rsp", 32));
      a.mov("ecx", 10);
      a.xor("r10d", "r10d");
      a.label(L("digit"));
      a.xor("edx", "edx");
      a.div("rcx");
      a.add("dl", 0x30);
      a.dec("r9");
      a.mov(q("r9", 0, 8), "dl");
      a.inc("r10");
      a.test("rax", "rax");
      a.jne(L("digit"));
      a.mov("rsi", "r9");
      a.mov("rdi", "r8");
      a.mov("rcx", "r10");
      a.repMovsb();
      a.mov(q("rdi", 0, 8), 0);
      a.mov("rax", "rdi");
      a.add("rsp", 32);
      a.ret();
      return;
    case "sleep_ms":
      a.mov("rax", "rdi");
      a.xor("edx", "edx");
      a.mov("ecx", 1000);
      a.div("rcx");
      a.imul("rdx", "rdx", 1000000);
      a.sub("rsp", 16);
      a.mov(q("rsp"), "rax");
      a.mov(q("rsp", 8), "rdx");
      a.mov("rdi", "rsp");
      a.xor("esi", "esi");
      sys(SYS.nanosleep);
      a.add("rsp", 16);
      a.xor("eax", "eax");
      a.ret();
      return;
    case "write_str":
      a.push("rdi");
      a.push("rsi");
      a.mov("rdi", "rsi");
      a.call(rtLabel("strlen"));
      a.mov("rdx", "rax");
      a.pop("rsi");
      a.pop("rdi");
      sys(SYS.write);
      a.ret();
      return;
    case "mkdir_p": {
      data.buffers.push(["rt.pathbuf", 4096]);
      const restore = pushSaved(a, ["rbx", "r12"]);
      a.mov("rsi", "rdi");
      a.lea("rdi", rip("rt.pathbuf"));
      a.call(rtLabel("strcpy"));
      a.lea("r12", rip("rt.pathbuf"));
      a.lea("rbx", q("r12", 1));
      a.label(L("scan"));
      a.mov("al", q("rbx", 0, 8));
      a.test("al", "al");
      a.je(L("last"));
      a.cmp("al", 0x2f);
      a.jne(L("next"));
      a.cmp(q("rbx", -1, 8), 0x2f); // "//": nothing to create
      a.je(L("next"));
      a.mov(q("rbx", 0, 8), 0);
      a.call(L("mk"));
      a.mov(q("rbx", 0, 8), 0x2f);
      a.test("rax", "rax");
      a.js(L("out"));
      a.label(L("next"));
      a.inc("rbx");
      a.jmp(L("scan"));
      a.label(L("last"));
      a.call(L("mk"));
      a.label(L("out"));
      restore();
      a.ret();
      a.label(L("mk"));
      a.mov("rdi", "r12");
      a.mov("esi", 0o755);
      sys(SYS.mkdir);
      a.cmp("rax", -E.EEXIST);
      a.jne(L("mkret"));
      a.xor("eax", "eax");
      a.label(L("mkret"));
      a.ret();
      return;
    }
    case "read_file": {
      const restore = pushSaved(a, ["rbx", "r12", "r13", "r14"]);
      a.mov("r12", "rsi");
      a.mov("r13", "rdx");
      a.xor("r14d", "r14d");
      a.mov("esi", O.RDONLY | O.CLOEXEC);
      a.xor("edx", "edx");
      sys(SYS.open);
      a.test("rax", "rax");
      a.js(L("out"));
      a.mov("rbx", "rax");
      a.label(L("loop"));
      a.mov("rdx", "r13");
      a.sub("rdx", "r14");
      a.je(L("done"));
      a.mov("rdi", "rbx");
      a.lea("rsi", mem({ base: "r12", index: "r14" }));
      sys(SYS.read);
      a.cmp("rax", -E.EINTR);
      a.je(L("loop"));
      a.test("rax", "rax");
      a.js(L("err"));
      a.je(L("done"));
      a.add("r14", "rax");
      a.jmp(L("loop"));
      a.label(L("err"));
      a.mov("r13", "rax");
      a.mov("rdi", "rbx");
      sys(SYS.close);
      a.mov("rax", "r13");
      a.jmp(L("out"));
      a.label(L("done"));
      a.mov("rdi", "rbx");
      sys(SYS.close);
      a.mov("rax", "r14");
      a.label(L("out"));
      restore();
      a.ret();
      return;
    }
    case "read_full":
    case "write_all": {
      // rbx = fd, r12 = buffer, r13 = length, r14 = bytes done.
      const restore = pushSaved(a, ["rbx", "r12", "r13", "r14"]);
      a.mov("rbx", "rdi");
      a.mov("r12", "rsi");
      a.mov("r13", "rdx");
      a.xor("r14d", "r14d");
      a.label(L("loop"));
      a.mov("rdx", "r13");
      a.sub("rdx", "r14");
      a.je(L("done"));
      a.mov("rdi", "rbx");
      a.lea("rsi", mem({ base: "r12", index: "r14" }));
      sys(r === "read_full" ? SYS.read : SYS.write);
      a.cmp("rax", -E.EINTR);
      a.je(L("loop"));
      a.test("rax", "rax");
      a.js(L("out"));
      // read: 0 is the end of the file; write: 0 cannot happen for n > 0, stop rather than spin.
      a.je(L("done"));
      a.add("r14", "rax");
      a.jmp(L("loop"));
      a.label(L("done"));
      a.mov("rax", "r14");
      if (r === "write_all") {
        a.cmp("r14", "r13");
        a.je(L("all"));
        a.mov("rax", -E.EIO);
        a.jmp(L("out"));
        a.label(L("all"));
        a.xor("eax", "eax");
      }
      a.label(L("out"));
      restore();
      a.ret();
      return;
    }
    case "execvp": {
      data.buffers.push(["rt.execbuf", 4096]);
      const restore = pushSaved(a, ["rbx", "rbp", "r12", "r13", "r14", "r15"]);
      a.mov("rbx", "rdi");
      a.mov("r12", "rsi");
      a.mov("r13", "rdx");
      a.mov("r14", "rcx");
      a.mov("r15", -E.ENOENT);
      a.mov("rax", "rbx");
      a.label(L("scan"));
      a.mov("cl", q("rax", 0, 8));
      a.test("cl", "cl");
      a.je(L("noslash"));
      a.cmp("cl", 0x2f);
      a.je(L("direct"));
      a.inc("rax");
      a.jmp(L("scan"));
      a.label(L("noslash"));
      a.test("r14", "r14");
      a.je(L("direct"));
      a.cmp(q("rbx", 0, 8), 0);
      a.je(L("done"));
      a.mov("rbp", "r14");
      a.label(L("seg"));
      a.lea("rdi", rip("rt.execbuf"));
      a.label(L("copy"));
      a.mov("al", q("rbp", 0, 8));
      a.test("al", "al");
      a.je(L("endseg"));
      a.cmp("al", 0x3a);
      a.je(L("endseg"));
      a.mov(q("rdi", 0, 8), "al");
      a.inc("rdi");
      a.inc("rbp");
      a.jmp(L("copy"));
      a.label(L("endseg"));
      a.lea("rax", rip("rt.execbuf"));
      a.cmp("rdi", "rax");
      a.jne(L("nonempty"));
      a.mov(q("rdi", 0, 8), 0x2e); // an empty PATH entry means "."
      a.inc("rdi");
      a.label(L("nonempty"));
      a.mov(q("rdi", 0, 8), 0x2f);
      a.inc("rdi");
      a.mov("rsi", "rbx");
      a.call(rtLabel("strcpy"));
      a.lea("rdi", rip("rt.execbuf"));
      a.mov("rsi", "r12");
      a.mov("rdx", "r13");
      sys(SYS.execve);
      // As execvp(3): ENOENT/ENOTDIR go on to the next entry; other errors (EACCES) are remembered.
      a.cmp("rax", -E.ENOENT);
      a.je(L("cont"));
      a.cmp("rax", -E.ENOTDIR);
      a.je(L("cont"));
      a.mov("r15", "rax");
      a.label(L("cont"));
      a.cmp(q("rbp", 0, 8), 0);
      a.je(L("done"));
      a.inc("rbp");
      a.jmp(L("seg"));
      a.label(L("direct"));
      a.mov("rdi", "rbx");
      a.mov("rsi", "r12");
      a.mov("rdx", "r13");
      sys(SYS.execve);
      a.mov("r15", "rax");
      a.label(L("done"));
      a.mov("rax", "r15");
      restore();
      a.ret();
      return;
    }
    case "find_port": {
      data.buffers.push(["rt.dents", 4096], ["rt.portpath", 512], ["rt.portname", 256]);
      data.strings.push(
        ["rt.s.vports", "/sys/class/virtio-ports"],
        ["rt.s.vports_slash", "/sys/class/virtio-ports/"],
        ["rt.s.slash_name", "/name"],
        ["rt.s.dev_slash", "/dev/"],
      );
      const restore = pushSaved(a, ["rbx", "r12", "r13", "r14", "r15"]);
      a.mov("r12", "rdi");
      a.mov("r13", "rsi");
      a.lea("rdi", rip("rt.s.vports"));
      a.mov("esi", O.RDONLY | O.DIRECTORY | O.CLOEXEC);
      a.xor("edx", "edx");
      sys(SYS.open);
      a.test("rax", "rax");
      a.js(L("out"));
      a.mov("rbx", "rax");
      a.label(L("batch"));
      a.mov("rdi", "rbx");
      a.lea("rsi", rip("rt.dents"));
      a.mov("edx", 4096);
      sys(SYS.getdents64);
      a.test("rax", "rax");
      a.jle(L("notfound"));
      a.lea("r14", rip("rt.dents"));
      a.lea("r15", mem({ base: "r14", index: "rax" }));
      a.label(L("entry"));
      a.cmp("r14", "r15");
      a.jae(L("batch"));
      // struct linux_dirent64: d_reclen at 16, d_name at 19 (include/linux/dirent.h)
      a.cmp(q("r14", 19, 8), 0x2e);
      a.je(L("next"));
      a.lea("rdi", rip("rt.portpath"));
      a.lea("rsi", rip("rt.s.vports_slash"));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.lea("rsi", q("r14", 19));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.lea("rsi", rip("rt.s.slash_name"));
      a.call(rtLabel("strcpy"));
      a.lea("rdi", rip("rt.portpath"));
      a.lea("rsi", rip("rt.portname"));
      a.mov("edx", 255);
      a.call(rtLabel("read_file"));
      a.test("rax", "rax");
      a.jle(L("next"));
      a.lea("rcx", rip("rt.portname"));
      a.mov(mem({ base: "rcx", index: "rax", size: 8 }), 0);
      a.cmp(mem({ base: "rcx", index: "rax", disp: -1, size: 8 }), 10);
      a.jne(L("cmp"));
      a.mov(mem({ base: "rcx", index: "rax", disp: -1, size: 8 }), 0);
      a.label(L("cmp"));
      a.lea("rdi", rip("rt.portname"));
      a.mov("rsi", "r12");
      a.call(rtLabel("streq"));
      a.test("rax", "rax");
      a.je(L("next"));
      a.mov("rdi", "r13");
      a.lea("rsi", rip("rt.s.dev_slash"));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.lea("rsi", q("r14", 19));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rbx");
      sys(SYS.close);
      a.xor("eax", "eax");
      a.jmp(L("out"));
      a.label(L("next"));
      a.movzx("eax", q("r14", 16, 16));
      a.add("r14", "rax");
      a.jmp(L("entry"));
      a.label(L("notfound"));
      a.mov("rdi", "rbx");
      sys(SYS.close);
      a.mov("rax", -E.ENOENT);
      a.label(L("out"));
      restore();
      a.ret();
      return;
    }
    case "write_error": {
      data.buffers.push(["rt.msgbuf", 1024]);
      data.strings.push(
        ["rt.s.prefix", "skiff-init: "],
        ["rt.s.failed", " failed: "],
        ["rt.s.errno", " (errno "],
        ["rt.s.errno_only", "errno "],
        ["rt.s.close", ")\n"],
        ["rt.s.nl", "\n"],
      );
      data.errnoTable = true;
      const restore = pushSaved(a, ["rbx", "r12", "r13"]);
      a.mov("rbx", "rdi");
      a.mov("r12", "rsi");
      a.mov("r13", "rdx");
      a.lea("rdi", rip("rt.msgbuf"));
      a.lea("rsi", rip("rt.s.prefix"));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.mov("rsi", "r12");
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.lea("rsi", rip("rt.s.failed"));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.test("r13", "r13");
      a.je(L("noname"));
      a.cmp("r13", ERRNO_NAMES.length - 1);
      a.ja(L("noname"));
      a.mov("rcx", "r13");
      a.shl("rcx", 4);
      a.lea("rsi", rip("rt.errno_names"));
      a.add("rsi", "rcx");
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.lea("rsi", rip("rt.s.errno"));
      a.call(rtLabel("strcpy"));
      a.jmp(L("num"));
      a.label(L("noname"));
      a.lea("rsi", rip("rt.s.errno_only"));
      a.call(rtLabel("strcpy"));
      a.mov("rdi", "rax");
      a.mov("rsi", "r13");
      a.call(rtLabel("utoa"));
      a.mov("rdi", "rax");
      a.lea("rsi", rip("rt.s.nl"));
      a.call(rtLabel("strcpy"));
      a.jmp(L("write"));
      a.label(L("num"));
      a.mov("rdi", "rax");
      a.mov("rsi", "r13");
      a.call(rtLabel("utoa"));
      a.mov("rdi", "rax");
      a.lea("rsi", rip("rt.s.close"));
      a.call(rtLabel("strcpy"));
      a.label(L("write"));
      a.mov("rdi", "rbx");
      a.lea("rsi", rip("rt.msgbuf"));
      a.call(rtLabel("write_str"));
      restore();
      a.ret();
      return;
    }
    case "relocate":
      // See init/record.ts and init/RECORD.md for the layout.
      a.movabs("rax", RECORD_MAGIC);
      a.cmp(q("rdi"), "rax");
      a.jne(L("bad"));
      a.mov("r8d", q("rdi", 12, 32));
      a.mov("ecx", q("rdi", 16, 32));
      a.mov("edx", q("rdi", 20, 32));
      a.lea("r9", mem({ base: "rdi", index: "rdx" }));
      a.label(L("loop"));
      a.test("rcx", "rcx");
      a.je(L("ok"));
      a.mov("eax", q("r9", 0, 32));
      a.lea("r10", q("rax", 8));
      a.cmp("r10", "r8");
      a.ja(L("bad"));
      a.mov("r11", mem({ base: "rdi", index: "rax" }));
      a.test("r11", "r11");
      a.je(L("skip"));
      a.add("r11", "rdi");
      a.mov(mem({ base: "rdi", index: "rax" }), "r11");
      a.label(L("skip"));
      a.add("r9", 4);
      a.dec("rcx");
      a.jmp(L("loop"));
      a.label(L("ok"));
      a.xor("eax", "eax");
      a.ret();
      a.label(L("bad"));
      a.mov("rax", -E.EINVAL);
      a.ret();
      return;
  }
}

/** Emits the errno name table: 16 bytes per errno, NUL-padded. */
export function emitErrnoTable(a: Assembler): void {
  a.align(16);
  a.label("rt.errno_names");
  for (const name of ERRNO_NAMES) {
    const b = new TextEncoder().encode(name);
    a.bytes(b).space(16 - b.length);
  }
}
