/**
 * IR → x86-64. Every IR variable is a 64-bit slot in the data area, so
 * operations are independent of each other and of register allocation; the
 * init is dominated by system calls, so this costs nothing that matters.
 *
 * The output is a static ELF64 executable (see {@link ./elf.ts}).
 *
 * @module
 */

import { Assembler, type Cond, mem, type Reg32, type Reg64, rip } from "../asm/mod.ts";
import { type Cmp, type Fragment, type Op, type Routine, v, type Val } from "../ir/ir.ts";
import { SYS } from "../ir/linux.ts";
import { emitErrnoTable, emitRoutine, ROUTINE_DEPS, rtLabel, type RuntimeData } from "./runtime.ts";
import { buildElf } from "./elf.ts";

/** The step name of the failure being reported (a string pointer), set before the error handler runs. */
export const ERR_STEP = v("__err_step");
/** The positive errno of the failure being reported. */
export const ERR_NO = v("__err_no");

/** A whole program. */
export interface Program {
  /** The code, run from the entry point. Falling off the end exits with 0. */
  body: Fragment;
  /**
   * Runs when a checked step fails ({@link ERR_STEP}, {@link ERR_NO} are set).
   * Default: write the message to fd 2 and exit with 1.
   */
  onError?: Fragment;
}

/** Output of {@link compile}. */
export interface Compiled {
  /** The ELF file. */
  bytes: Uint8Array<ArrayBuffer>;
  /** Label addresses (IR labels are prefixed `u.`, variables `v.`). */
  labels: Map<string, number>;
  /** Size of the code part (before data). */
  codeSize: number;
}

/** Where the ELF is linked: its first page holds the headers. */
export const ELF_BASE = 0x400000;

const ARG_REGS: Reg64[] = ["rdi", "rsi", "rdx", "r10", "r8", "r9"];
const CALL_REGS: Reg64[] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];
const COND: Record<Cmp, Cond> = {
  eq: "e",
  ne: "ne",
  lt: "l",
  le: "le",
  gt: "g",
  ge: "ge",
  ltu: "b",
  leu: "be",
  gtu: "a",
  geu: "ae",
};

class Gen {
  readonly a = new Assembler();
  readonly vars = new Set<string>();
  readonly strings = new Map<string, string>();
  readonly blobs: [string, Uint8Array][] = [];
  readonly bufs = new Map<string, number>();
  readonly strvs: [string, number][] = [];
  readonly routines = new Set<Routine>();
  readonly data: RuntimeData = { buffers: [], strings: [], errnoTable: false };
  #n = 0;

  varLabel(name: string): string {
    this.vars.add(name);
    return `v.${name}`;
  }
  strLabel(s: string): string {
    let l = this.strings.get(s);
    if (!l) {
      l = `d.s${this.#n++}`;
      this.strings.set(s, l);
    }
    return l;
  }
  use(r: Routine) {
    if (this.routines.has(r)) return;
    this.routines.add(r);
    for (const d of ROUTINE_DEPS[r]) this.use(d);
  }

  /** Fills the pointer arrays among `vals` (clobbers rax). */
  materialize(vals: readonly Val[]): Map<Val, string> {
    const out = new Map<Val, string>();
    for (const x of vals) {
      if (typeof x !== "object" || x.kind !== "strv") continue;
      const l = `d.v${this.#n++}`;
      this.strvs.push([l, x.values.length + 1]);
      x.values.forEach((e, i) => {
        if (typeof e === "object" && e.kind === "strv") {
          throw new Error("nested strv is not supported");
        }
        this.load("rax", e);
        this.a.mov(rip(l, { disp: 8 * i }), "rax");
      });
      out.set(x, l);
    }
    return out;
  }

  load(reg: Reg64, x: Val, strvs?: Map<Val, string>) {
    const a = this.a;
    if (typeof x === "number" || typeof x === "bigint") {
      if (x === 0 || x === 0n) {
        const r32 = (/^r\d/.test(reg) ? `${reg}d` : `e${reg.slice(1)}`) as Reg32;
        a.xor(r32, r32);
      } else a.mov(reg, x);
      return;
    }
    switch (x.kind) {
      case "var":
        a.mov(reg, rip(this.varLabel(x.name)));
        return;
      case "str":
        a.lea(reg, rip(this.strLabel(x.value)));
        return;
      case "bytes": {
        const l = `d.b${this.#n++}`;
        this.blobs.push([l, x.value]);
        a.lea(reg, rip(l));
        return;
      }
      case "buf": {
        const prev = this.bufs.get(x.name);
        if (prev !== undefined && prev !== x.size) {
          throw new Error(`buffer ${x.name} used with sizes ${prev} and ${x.size}`);
        }
        this.bufs.set(x.name, x.size);
        a.lea(reg, rip(`b.${x.name}`));
        return;
      }
      case "strv": {
        const l = strvs?.get(x);
        if (!l) throw new Error("internal: strv not materialized");
        a.lea(reg, rip(l));
        return;
      }
      case "labeladdr":
        a.lea(reg, rip(`u.${x.name}`));
        return;
    }
  }

  loadArgs(regs: Reg64[], args: readonly Val[], what: string) {
    if (args.length > regs.length) throw new Error(`${what}: too many arguments (${args.length})`);
    const m = this.materialize(args);
    args.forEach((x, i) => this.load(regs[i], x, m));
  }

  setFailure(stepLabel: string) {
    this.a.mov(rip(this.varLabel(ERR_NO.name)), "rax");
    this.a.lea("rax", rip(stepLabel));
    this.a.mov(rip(this.varLabel(ERR_STEP.name)), "rax");
  }

  op(o: Op) {
    const a = this.a;
    switch (o.op) {
      case "label":
        a.label(`u.${o.name}`);
        return;
      case "syscall": {
        this.loadArgs(ARG_REGS, o.args, `syscall ${o.nr}`);
        a.mov("eax", o.nr);
        a.syscall();
        if (o.dst) a.mov(rip(this.varLabel(o.dst.name)), "rax");
        if (o.step !== undefined || o.fail !== undefined) {
          const ok = a.newLabel("ok");
          a.cmp("rax", -4095);
          a.jb(ok);
          for (const e of o.allow ?? []) {
            a.cmp("rax", -e);
            a.je(ok);
          }
          a.neg("rax");
          this.setFailure(this.strLabel(o.step ?? `syscall ${o.nr}`));
          a.jmp(o.fail !== undefined ? `u.${o.fail}` : "__fail");
          a.label(ok);
        }
        return;
      }
      case "set":
        this.loadArgs(["rax"], [o.src], "set");
        a.mov(rip(this.varLabel(o.dst.name)), "rax");
        return;
      case "arith":
        this.loadArgs(["rax", "rcx"], [o.a, o.b], o.kind);
        switch (o.kind) {
          case "add":
          case "sub":
          case "and":
          case "or":
          case "xor":
            a[o.kind]("rax", "rcx");
            break;
          case "shl":
          case "shr":
            a[o.kind]("rax", "cl");
            break;
          case "mul":
            a.imul("rax", "rcx");
            break;
          case "div":
          case "mod":
            a.xor("edx", "edx");
            a.div("rcx");
            if (o.kind === "mod") a.mov("rax", "rdx");
            break;
        }
        a.mov(rip(this.varLabel(o.dst.name)), "rax");
        return;
      case "load": {
        this.loadArgs(["rax"], [o.addr], "load");
        const m = mem({ base: "rax", disp: o.offset, size: (o.size * 8) as 8 | 16 | 32 | 64 });
        if (o.size === 8) a.mov("rax", m);
        else if (o.size === 4) a.mov("eax", m);
        else a.movzx("eax", m);
        a.mov(rip(this.varLabel(o.dst.name)), "rax");
        return;
      }
      case "store": {
        this.loadArgs(["rax", "rcx"], [o.addr, o.src], "store");
        const reg = ({ 1: "cl", 2: "cx", 4: "ecx", 8: "rcx" } as const)[o.size];
        a.mov(mem({ base: "rax", disp: o.offset }), reg);
        return;
      }
      case "jump":
        a.jmp(`u.${o.target}`);
        return;
      case "branch":
        this.loadArgs(["rax", "rcx"], [o.a, o.b], "branch");
        a.cmp("rax", "rcx");
        a.jcc(COND[o.cond], `u.${o.target}`);
        return;
      case "call":
        this.use(o.routine);
        this.loadArgs(CALL_REGS, o.args, o.routine);
        a.call(rtLabel(o.routine));
        if (o.dst) a.mov(rip(this.varLabel(o.dst.name)), "rax");
        return;
      case "fail":
        this.loadArgs(["rax"], [o.errno], "fail");
        this.setFailure(this.strLabel(o.step));
        a.jmp(o.target !== undefined ? `u.${o.target}` : "__fail");
        return;
      case "exit":
        this.loadArgs(["rdi"], [o.value], "exit");
        this.exit();
        return;
    }
  }

  /** Ends the program with the value in rdi. */
  exit() {
    this.a.mov("eax", SYS.exit_group);
    this.a.syscall();
    this.a.ud2();
  }
}

/** Assembles `program` for `origin`; returns the assembler output and the code size. */
function generate(program: Program, origin: number) {
  const g = new Gen();
  const a = g.a;
  a.label("__entry");
  for (const o of program.body.ops) g.op(o);
  a.xor("edi", "edi");
  g.exit();
  a.label("__fail");
  if (program.onError) {
    for (const o of program.onError.ops) g.op(o);
    a.mov("edi", 1);
    g.exit();
  } else {
    g.op({ op: "call", routine: "write_error", args: [2, ERR_STEP, ERR_NO] });
    a.mov("edi", 1);
    g.exit();
  }
  // Routines may pull in more routines: emit until closed.
  const emitted = new Set<Routine>();
  for (;;) {
    const todo = [...g.routines].filter((r) => !emitted.has(r));
    if (todo.length === 0) break;
    for (const r of todo) {
      emitRoutine(a, r, g.data);
      emitted.add(r);
    }
  }
  a.label("__code_end");
  a.align(4096);
  a.label("__data");
  for (const [s, l] of g.strings) a.label(l).asciz(s);
  for (const [l, s] of g.data.strings) a.label(l).asciz(s);
  for (const [l, b] of g.blobs) a.label(l).bytes(b);
  if (g.data.errnoTable) emitErrnoTable(a);
  a.align(16);
  a.label("__bss");
  for (const name of [...g.vars].sort()) a.label(`v.${name}`).dq(0);
  for (const [l, n] of g.strvs) a.label(l).space(8 * n);
  const bufs = [...g.bufs].map(([n, size]) => [`b.${n}`, size] as [string, number]).concat(
    g.data.buffers.filter(([l], i, all) => all.findIndex(([m]) => m === l) === i),
  );
  for (const [l, n] of bufs) a.align(16).label(l).space(n);
  a.align(16);
  a.label("__end");
  const out = a.assemble({ origin });
  return out;
}

/** Compiles `program` into a static ELF64 executable. */
export function compileElf(program: Program): Compiled {
  const origin = ELF_BASE + 0x1000;
  const out = generate(program, origin);
  const l = (n: string) => out.labels.get(n)! - origin;
  const elf = buildElf({
    base: ELF_BASE,
    textOffset: 0x1000,
    image: out.bytes,
    codeEnd: l("__code_end"),
    dataStart: l("__data"),
    bssStart: l("__bss"),
    end: l("__end"),
    entry: out.labels.get("__entry")!,
  });
  return { bytes: elf, labels: out.labels, codeSize: l("__code_end") };
}
