/**
 * A small x86-64 assembler (64-bit mode) for skiff's guest test programs and
 * generated init. Instructions are appended by method calls; `assemble()`
 * resolves labels (forward references included), relaxes `jmp`/`jcc` to the
 * short rel8 form where the target is in reach, and returns the bytes.
 *
 * Encodings follow the Intel SDM vol. 2 (ch. 2.1 instruction format, 2.2.1
 * REX prefixes, table 2-2 32/64-bit ModR/M, table 2-3 SIB).
 *
 * @module
 */

import {
  type CReg,
  type Imm,
  isImm,
  isMem,
  isRef,
  type LabelRef,
  type Mem,
  type Operand,
  type Reg,
  type Reg16,
  type Reg64,
  type Reg8,
  type RegInfo,
  regInfo,
  type Size,
  type SReg,
} from "./operands.ts";

/** Condition codes for `jcc`, `setcc`, `cmovcc` (SDM vol. 2 appendix B.1.4.7). */
export type Cond =
  | "o"
  | "no"
  | "b"
  | "c"
  | "nae"
  | "ae"
  | "nb"
  | "nc"
  | "e"
  | "z"
  | "ne"
  | "nz"
  | "be"
  | "na"
  | "a"
  | "nbe"
  | "s"
  | "ns"
  | "p"
  | "pe"
  | "np"
  | "po"
  | "l"
  | "nge"
  | "ge"
  | "nl"
  | "le"
  | "ng"
  | "g"
  | "nle";

const COND: Record<Cond, number> = {
  o: 0,
  no: 1,
  b: 2,
  c: 2,
  nae: 2,
  ae: 3,
  nb: 3,
  nc: 3,
  e: 4,
  z: 4,
  ne: 5,
  nz: 5,
  be: 6,
  na: 6,
  a: 7,
  nbe: 7,
  s: 8,
  ns: 9,
  p: 10,
  pe: 10,
  np: 11,
  po: 11,
  l: 12,
  nge: 12,
  ge: 13,
  nl: 13,
  le: 14,
  ng: 14,
  g: 15,
  nle: 15,
};

type FixupKind = "rip32" | "abs8" | "abs16" | "abs32" | "abs32s" | "abs64";

interface Fixup {
  offset: number;
  kind: FixupKind;
  label: string;
  addend: number;
}

type Item =
  | { kind: "code"; bytes: Uint8Array; fixups: Fixup[]; what: string }
  | { kind: "label"; name: string }
  | { kind: "align"; to: number; fill: number }
  | {
    kind: "branch";
    short: number[] | null;
    near: number[];
    label: string;
    long: boolean;
    what: string;
  };

/** Options for {@link Assembler.assemble}. */
export interface AssembleOptions {
  /** Address of the first byte (default 0). */
  origin?: number;
}

/** The output of {@link Assembler.assemble}. */
export interface Assembled {
  /** The machine code and data. */
  bytes: Uint8Array<ArrayBuffer>;
  /** Every label's absolute address (origin included). */
  labels: Map<string, number>;
  /** The origin the code was assembled for. */
  origin: number;
}

const B = BigInt;

class Enc {
  bytes: number[] = [];
  fixups: Fixup[] = [];
  push(...b: number[]) {
    this.bytes.push(...b);
  }
  le(value: bigint, n: number) {
    let v = BigInt.asUintN(n * 8, value);
    for (let i = 0; i < n; i++) {
      this.bytes.push(Number(v & 0xffn));
      v >>= 8n;
    }
  }
  fix(kind: FixupKind, label: string, addend: number, n: number) {
    this.fixups.push({ offset: this.bytes.length, kind, label, addend });
    for (let i = 0; i < n; i++) this.bytes.push(0);
  }
}

function fitsSigned(v: bigint, bits: number): boolean {
  const lim = 1n << B(bits - 1);
  return v >= -lim && v < lim;
}

function toBig(v: number | bigint, what: string): bigint {
  if (typeof v === "bigint") return v;
  if (!Number.isSafeInteger(v)) {
    throw new Error(`${what}: immediate ${v} is not a safe integer (use a bigint)`);
  }
  return B(v);
}

/**
 * Builds x86-64 machine code from method calls.
 *
 * @example
 * ```ts
 * import { Assembler, mem, rip } from "./mod.ts";
 * const a = new Assembler();
 * a.mov("rax", 1);
 * a.lea("rsi", rip("msg"));
 * a.label("loop");
 * a.mov("dl", mem({ base: "rsi", size: 8 }));
 * a.out(0x3f8, "al");
 * a.dec("rax");
 * a.jne("loop");
 * a.hlt();
 * a.label("msg");
 * a.asciz("hi\n");
 * const { bytes, labels } = a.assemble({ origin: 0x1000 });
 * ```
 */
export class Assembler {
  #items: Item[] = [];
  #labels = new Set<string>();
  #unique = 0;

  // ---------------------------------------------------------------- labels, data

  /** Defines `name` at the current position. */
  label(name: string): this {
    if (this.#labels.has(name)) throw new Error(`label '${name}' is defined twice`);
    this.#labels.add(name);
    this.#items.push({ kind: "label", name });
    return this;
  }

  /** A fresh label name (not yet defined) starting with `hint`. */
  newLabel(hint = "L"): string {
    return `.${hint}${this.#unique++}`;
  }

  /** Whether `name` has been defined. */
  hasLabel(name: string): boolean {
    return this.#labels.has(name);
  }

  /** Appends raw bytes. */
  emit(bytes: ArrayLike<number>, what = "bytes"): this {
    const b = Uint8Array.from(bytes);
    for (const x of Array.from(bytes)) {
      if (!Number.isInteger(x) || x < 0 || x > 255) {
        throw new Error(`${what}: byte ${x} out of range`);
      }
    }
    this.#items.push({ kind: "code", bytes: b, fixups: [], what });
    return this;
  }

  /** Bytes: numbers (0–255 or −128–127), strings (UTF-8) or byte arrays. */
  db(...values: (number | string | Uint8Array)[]): this {
    const out: number[] = [];
    for (const v of values) {
      if (typeof v === "string") out.push(...new TextEncoder().encode(v));
      else if (v instanceof Uint8Array) out.push(...v);
      else if (Number.isInteger(v) && v >= -128 && v <= 255) out.push(v & 0xff);
      else throw new Error(`db: ${v} does not fit in a byte`);
    }
    return this.emit(out, "db");
  }

  /** 16-bit little-endian words. */
  dw(...values: (number | LabelRef)[]): this {
    return this.#data(2, values);
  }

  /** 32-bit little-endian double words. */
  dd(...values: (number | LabelRef)[]): this {
    return this.#data(4, values);
  }

  /** 64-bit little-endian quad words. */
  dq(...values: (number | bigint | LabelRef)[]): this {
    return this.#data(8, values);
  }

  /** A copy of `data`. */
  bytes(data: Uint8Array): this {
    return this.emit(data, "bytes");
  }

  /** A string's UTF-8 bytes. */
  ascii(s: string): this {
    return this.emit(new TextEncoder().encode(s), "ascii");
  }

  /** A string's UTF-8 bytes followed by a NUL. */
  asciz(s: string): this {
    const b = new TextEncoder().encode(s);
    if (b.includes(0)) throw new Error(`asciz: string contains a NUL: ${JSON.stringify(s)}`);
    return this.emit([...b, 0], "asciz");
  }

  /** `n` bytes of `fill`. */
  space(n: number, fill = 0): this {
    return this.emit(new Array<number>(n).fill(fill), "space");
  }

  /** Pads with `fill` up to the next multiple of `to` (a power of two) of the address. */
  align(to: number, fill = 0): this {
    if (to <= 0 || (to & (to - 1)) !== 0) throw new Error(`align: ${to} is not a power of two`);
    this.#items.push({ kind: "align", to, fill });
    return this;
  }

  #data(n: 2 | 4 | 8, values: (number | bigint | LabelRef)[]): this {
    const e = new Enc();
    const kind: FixupKind = n === 2 ? "abs16" : n === 4 ? "abs32" : "abs64";
    for (const v of values) {
      if (isRef(v)) e.fix(kind, v.name, v.addend, n);
      else {
        const b = toBig(v, `d${n}`);
        if (b < -(1n << B(n * 8 - 1)) || b >= (1n << B(n * 8))) {
          throw new Error(`data: ${v} does not fit in ${n} bytes`);
        }
        e.le(b, n);
      }
    }
    return this.#code(e, `data${n * 8}`);
  }

  // ---------------------------------------------------------------- data movement

  /**
   * `mov dst, src`: register, memory, immediate (all widths), control and
   * segment registers. A 64-bit register with an immediate uses the shortest
   * form: sign-extended imm32, zero-extending 32-bit `mov`, or `movabs` (always
   * for a label address).
   */
  mov(dst: Reg | Mem | CReg | SReg, src: Operand): this {
    const d = regInfo(dst);
    const s = regInfo(src);
    const what = `mov ${show(dst)}, ${show(src)}`;
    if (d?.kind === "cr" || s?.kind === "cr") {
      const cr = d?.kind === "cr" ? d : s!;
      const g = d?.kind === "cr" ? s : d;
      if (!g || g.kind !== "gpr" || g.size !== 64) {
        throw new Error(`${what}: needs a 64-bit register`);
      }
      return this.#rm(what, { op: [0x0f, d?.kind === "cr" ? 0x22 : 0x20], reg: cr.code, rm: g });
    }
    if (d?.kind === "seg" || s?.kind === "seg") {
      const seg = d?.kind === "seg" ? d : s!;
      const other = d?.kind === "seg" ? src : dst;
      const g = regInfo(other);
      if (g ? g.kind !== "gpr" || g.size === 8 : !isMem(other)) {
        throw new Error(`${what}: needs a 16/32/64-bit register or memory`);
      }
      return this.#rm(what, {
        op: [d?.kind === "seg" ? 0x8e : 0x8c],
        reg: seg.code,
        rm: g ?? (other as Mem),
        w: g?.size === 64,
      });
    }
    if (isImm(src)) {
      const size = this.#sizeOf(what, dst);
      if (d) {
        if (size === 64) {
          if (!isRef(src)) {
            const v = toBig(src, what);
            if (fitsSigned(v, 32)) {
              return this.#rm(what, { op: [0xc7], reg: 0, rm: d, size, imm: [v, 4] });
            }
            if (v >= 0n && v < 1n << 32n) {
              const e = this.#prefix(what, { size: 32, rm: d });
              e.push(0xb8 + (d.code & 7));
              e.le(v, 4);
              return this.#code(e, what);
            }
          }
          return this.movabs(dst as Reg64, src);
        }
        const e = this.#prefix(what, { size, rm: d });
        e.push((size === 8 ? 0xb0 : 0xb8) + (d.code & 7));
        this.#imm(e, what, src, size / 8 as 1 | 2 | 4, size);
        return this.#code(e, what);
      }
      return this.#rm(what, {
        op: [size === 8 ? 0xc6 : 0xc7],
        reg: 0,
        rm: dst as Mem,
        size,
        imm: [src, size === 64 ? 4 : size / 8 as 1 | 2 | 4],
      });
    }
    return this.#rr(what, 0x88, 0x8a, dst, src);
  }

  /** `movabs r64, imm64`: always the 10-byte form (`REX.W B8+r io`). */
  movabs(dst: Reg64, imm: Imm): this {
    const what = `movabs ${dst}`;
    const d = this.#gpr(what, dst, [64]);
    const e = this.#prefix(what, { size: 64, rm: d });
    e.push(0xb8 + (d.code & 7));
    this.#imm(e, what, imm, 8, 64);
    return this.#code(e, what);
  }

  /** `movzx r16/32/64, r/m8|r/m16` (the source width comes from the register or `mem.size`). */
  movzx(dst: Reg, src: Reg | Mem): this {
    return this.#extend(`movzx ${dst}, ${show(src)}`, dst, src, 0xb6);
  }

  /** `movsx r16/32/64, r/m8|r/m16`; `movsx r64, r/m32` is `movsxd`. */
  movsx(dst: Reg, src: Reg | Mem): this {
    return this.#extend(`movsx ${dst}, ${show(src)}`, dst, src, 0xbe);
  }

  #extend(what: string, dst: Reg, src: Reg | Mem, base: number): this {
    const d = this.#gpr(what, dst, [16, 32, 64]);
    const ss = this.#sizeOf(what, src);
    if (ss === 32 && base === 0xbe && d.size === 64) {
      return this.#rm(what, { op: [0x63], reg: d.code, regInfo: d, rm: opRm(src), size: 64 });
    }
    if (ss !== 8 && ss !== 16) throw new Error(`${what}: source must be 8 or 16 bits`);
    if (ss >= d.size) throw new Error(`${what}: destination must be wider than the source`);
    return this.#rm(what, {
      op: [0x0f, base + (ss === 16 ? 1 : 0)],
      reg: d.code,
      regInfo: d,
      rm: opRm(src),
      size: d.size,
      srcSize: ss,
    });
  }

  /** `lea r, [mem]` (including `rip(label)`). */
  lea(dst: Reg, src: Mem): this {
    const what = `lea ${dst}, ${show(src)}`;
    const d = this.#gpr(what, dst, [16, 32, 64]);
    if (!isMem(src)) throw new Error(`${what}: source must be memory`);
    return this.#rm(what, {
      op: [0x8d],
      reg: d.code,
      regInfo: d,
      rm: { ...src, size: undefined },
      size: d.size,
    });
  }

  /** `xchg r/m, r`. */
  xchg(dst: Reg | Mem, src: Reg): this {
    return this.#rr(`xchg ${show(dst)}, ${src}`, 0x86, 0x86, dst, src);
  }

  /** `push r64 | imm | m64`. */
  push(src: Reg64 | Mem | Imm): this {
    const what = `push ${show(src)}`;
    if (isImm(src)) {
      const e = new Enc();
      if (!isRef(src) && fitsSigned(toBig(src, what), 8)) {
        e.push(0x6a);
        e.le(toBig(src, what), 1);
      } else {
        e.push(0x68);
        this.#imm(e, what, src, 4, 64);
      }
      return this.#code(e, what);
    }
    if (isMem(src)) return this.#rm(what, { op: [0xff], reg: 6, rm: src });
    const r = this.#gpr(what, src, [64]);
    const e = this.#prefix(what, { rm: r });
    e.push(0x50 + (r.code & 7));
    return this.#code(e, what);
  }

  /** `pop r64 | m64`. */
  pop(dst: Reg64 | Mem): this {
    const what = `pop ${show(dst)}`;
    if (isMem(dst)) return this.#rm(what, { op: [0x8f], reg: 0, rm: dst });
    const r = this.#gpr(what, dst, [64]);
    const e = this.#prefix(what, { rm: r });
    e.push(0x58 + (r.code & 7));
    return this.#code(e, what);
  }

  // ---------------------------------------------------------------- arithmetic

  /** `add dst, src`. */
  add(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(0, "add", dst, src);
  }
  /** `or dst, src`. */
  or(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(1, "or", dst, src);
  }
  /** `adc dst, src`. */
  adc(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(2, "adc", dst, src);
  }
  /** `sbb dst, src`. */
  sbb(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(3, "sbb", dst, src);
  }
  /** `and dst, src`. */
  and(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(4, "and", dst, src);
  }
  /** `sub dst, src`. */
  sub(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(5, "sub", dst, src);
  }
  /** `xor dst, src`. */
  xor(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(6, "xor", dst, src);
  }
  /** `cmp dst, src`. */
  cmp(dst: Reg | Mem, src: Reg | Mem | Imm): this {
    return this.#alu(7, "cmp", dst, src);
  }

  /** `test a, b` (register/memory with register or immediate). */
  test(a: Reg | Mem, b: Reg | Mem | Imm): this {
    const what = `test ${show(a)}, ${show(b)}`;
    if (isImm(b)) {
      const size = this.#sizeOf(what, a);
      return this.#rm(what, {
        op: [size === 8 ? 0xf6 : 0xf7],
        reg: 0,
        rm: opRm(a),
        size,
        imm: [b, size === 8 ? 1 : size === 16 ? 2 : 4],
      });
    }
    if (isMem(b)) return this.#rr(what, 0x84, 0x84, b, a);
    return this.#rr(what, 0x84, 0x84, a, b);
  }

  #alu(n: number, name: string, dst: Reg | Mem, src: Reg | Mem | Imm): this {
    const what = `${name} ${show(dst)}, ${show(src)}`;
    if (isImm(src)) {
      const size = this.#sizeOf(what, dst);
      if (size === 8) {
        return this.#rm(what, { op: [0x80], reg: n, rm: opRm(dst), size, imm: [src, 1] });
      }
      if (!isRef(src)) {
        const v = this.#checkImm(what, toBig(src, what), size === 64 ? 4 : size / 8, size);
        if (fitsSigned(BigInt.asIntN(size, v), 8)) {
          return this.#rm(what, { op: [0x83], reg: n, rm: opRm(dst), size, imm: [v, 1, true] });
        }
      }
      return this.#rm(what, {
        op: [0x81],
        reg: n,
        rm: opRm(dst),
        size,
        imm: [src, size === 16 ? 2 : 4],
      });
    }
    return this.#rr(what, n << 3, (n << 3) + 2, dst, src);
  }

  /** `inc r/m`. */
  inc(dst: Reg | Mem): this {
    return this.#unary("inc", 0xfe, 0, dst);
  }
  /** `dec r/m`. */
  dec(dst: Reg | Mem): this {
    return this.#unary("dec", 0xfe, 1, dst);
  }
  /** `not r/m`. */
  not(dst: Reg | Mem): this {
    return this.#unary("not", 0xf6, 2, dst);
  }
  /** `neg r/m`. */
  neg(dst: Reg | Mem): this {
    return this.#unary("neg", 0xf6, 3, dst);
  }
  /** `mul r/m` (rdx:rax = rax * src, unsigned). */
  mul(src: Reg | Mem): this {
    return this.#unary("mul", 0xf6, 4, src);
  }
  /** `div r/m` (unsigned rdx:rax / src). */
  div(src: Reg | Mem): this {
    return this.#unary("div", 0xf6, 6, src);
  }
  /** `idiv r/m` (signed rdx:rax / src). */
  idiv(src: Reg | Mem): this {
    return this.#unary("idiv", 0xf6, 7, src);
  }

  #unary(name: string, op8: number, n: number, dst: Reg | Mem): this {
    const what = `${name} ${show(dst)}`;
    const size = this.#sizeOf(what, dst);
    return this.#rm(what, { op: [size === 8 ? op8 : op8 + 1], reg: n, rm: opRm(dst), size });
  }

  /**
   * `imul`: one operand (`rdx:rax = rax * src`), two (`dst *= src`, src a
   * register, memory or immediate) or three (`dst = src * imm`).
   */
  imul(dst: Reg | Mem, src?: Reg | Mem | Imm, imm?: number): this {
    const what = `imul ${show(dst)}${src === undefined ? "" : `, ${show(src)}`}${
      imm === undefined ? "" : `, ${imm}`
    }`;
    if (src === undefined) return this.#unary("imul", 0xf6, 5, dst);
    const d = this.#gpr(what, dst, [16, 32, 64]);
    let rm: Reg | Mem = src as Reg | Mem;
    let k: Imm | undefined = imm;
    if (isImm(src)) {
      if (imm !== undefined) throw new Error(`${what}: too many immediates`);
      rm = dst as Reg;
      k = src;
    }
    if (k === undefined) {
      this.#sizeOf(what, rm, d.size);
      return this.#rm(what, {
        op: [0x0f, 0xaf],
        reg: d.code,
        regInfo: d,
        rm: opRm(rm),
        size: d.size,
      });
    }
    if (isRef(k)) throw new Error(`${what}: label immediates are not supported`);
    const v = this.#checkImm(what, toBig(k, what), d.size === 16 ? 2 : 4, d.size);
    const short = fitsSigned(BigInt.asIntN(d.size, v), 8);
    return this.#rm(what, {
      op: [short ? 0x6b : 0x69],
      reg: d.code,
      regInfo: d,
      rm: opRm(rm),
      size: d.size,
      imm: [v, short ? 1 : d.size === 16 ? 2 : 4, true],
    });
  }

  /** `shl r/m, imm8 | cl`. */
  shl(dst: Reg | Mem, count: number | "cl"): this {
    return this.#shift("shl", 4, dst, count);
  }
  /** `shr r/m, imm8 | cl`. */
  shr(dst: Reg | Mem, count: number | "cl"): this {
    return this.#shift("shr", 5, dst, count);
  }
  /** `sar r/m, imm8 | cl`. */
  sar(dst: Reg | Mem, count: number | "cl"): this {
    return this.#shift("sar", 7, dst, count);
  }
  /** `rol r/m, imm8 | cl`. */
  rol(dst: Reg | Mem, count: number | "cl"): this {
    return this.#shift("rol", 0, dst, count);
  }
  /** `ror r/m, imm8 | cl`. */
  ror(dst: Reg | Mem, count: number | "cl"): this {
    return this.#shift("ror", 1, dst, count);
  }

  #shift(name: string, n: number, dst: Reg | Mem, count: number | "cl"): this {
    const what = `${name} ${show(dst)}, ${count}`;
    const size = this.#sizeOf(what, dst);
    const w = size === 8 ? 0 : 1;
    if (count === "cl") return this.#rm(what, { op: [0xd2 + w], reg: n, rm: opRm(dst), size });
    if (!Number.isInteger(count) || count < 0 || count > 255) throw new Error(`${what}: bad count`);
    if (count === 1) return this.#rm(what, { op: [0xd0 + w], reg: n, rm: opRm(dst), size });
    return this.#rm(what, { op: [0xc0 + w], reg: n, rm: opRm(dst), size, imm: [count, 1] });
  }

  /** `setcc r/m8`. */
  setcc(cond: Cond, dst: Reg8 | Mem): this {
    const what = `set${cond} ${show(dst)}`;
    this.#sizeOf(what, dst, 8);
    return this.#rm(what, { op: [0x0f, 0x90 + COND[cond]], reg: 0, rm: opRm(dst), size: 8 });
  }

  /** `cmovcc r, r/m`. */
  cmov(cond: Cond, dst: Reg, src: Reg | Mem): this {
    const what = `cmov${cond} ${dst}, ${show(src)}`;
    const d = this.#gpr(what, dst, [16, 32, 64]);
    this.#sizeOf(what, src, d.size);
    return this.#rm(what, {
      op: [0x0f, 0x40 + COND[cond]],
      reg: d.code,
      regInfo: d,
      rm: opRm(src),
      size: d.size,
    });
  }

  // ---------------------------------------------------------------- control flow

  /** `jmp label` (rel8 or rel32) or `jmp r/m64`. */
  jmp(target: string | Reg64 | Mem): this {
    if (typeof target === "string" && !regInfo(target)) {
      this.#items.push({
        kind: "branch",
        short: [0xeb],
        near: [0xe9],
        label: target,
        long: false,
        what: `jmp ${target}`,
      });
      return this;
    }
    return this.#indirect("jmp", 4, target as Reg64 | Mem);
  }

  /** `call label` (rel32) or `call r/m64`. */
  call(target: string | Reg64 | Mem): this {
    if (typeof target === "string" && !regInfo(target)) {
      this.#items.push({
        kind: "branch",
        short: null,
        near: [0xe8],
        label: target,
        long: true,
        what: `call ${target}`,
      });
      return this;
    }
    return this.#indirect("call", 2, target as Reg64 | Mem);
  }

  #indirect(name: string, n: number, target: Reg64 | Mem): this {
    const what = `${name} ${show(target)}`;
    const rm = isMem(target) ? target : this.#gpr(what, target, [64]);
    return this.#rm(what, { op: [0xff], reg: n, rm });
  }

  /** `jcc label` with condition `cond`. */
  jcc(cond: Cond, label: string): this {
    const c = COND[cond];
    if (c === undefined) throw new Error(`unknown condition '${cond}'`);
    this.#items.push({
      kind: "branch",
      short: [0x70 + c],
      near: [0x0f, 0x80 + c],
      label,
      long: false,
      what: `j${cond} ${label}`,
    });
    return this;
  }
  /** `je label`. */
  je(label: string): this {
    return this.jcc("e", label);
  }
  /** `jne label`. */
  jne(label: string): this {
    return this.jcc("ne", label);
  }
  /** `jz label`. */
  jz(label: string): this {
    return this.jcc("z", label);
  }
  /** `jnz label`. */
  jnz(label: string): this {
    return this.jcc("nz", label);
  }
  /** `jb label` (unsigned <). */
  jb(label: string): this {
    return this.jcc("b", label);
  }
  /** `jae label` (unsigned ≥). */
  jae(label: string): this {
    return this.jcc("ae", label);
  }
  /** `jbe label` (unsigned ≤). */
  jbe(label: string): this {
    return this.jcc("be", label);
  }
  /** `ja label` (unsigned >). */
  ja(label: string): this {
    return this.jcc("a", label);
  }
  /** `jl label` (signed <). */
  jl(label: string): this {
    return this.jcc("l", label);
  }
  /** `jge label` (signed ≥). */
  jge(label: string): this {
    return this.jcc("ge", label);
  }
  /** `jle label` (signed ≤). */
  jle(label: string): this {
    return this.jcc("le", label);
  }
  /** `jg label` (signed >). */
  jg(label: string): this {
    return this.jcc("g", label);
  }
  /** `js label` (negative). */
  js(label: string): this {
    return this.jcc("s", label);
  }
  /** `jns label` (not negative). */
  jns(label: string): this {
    return this.jcc("ns", label);
  }

  /** `ret` or `ret imm16`. */
  ret(pop?: number): this {
    if (pop === undefined) return this.emit([0xc3], "ret");
    const e = new Enc();
    e.push(0xc2);
    this.#imm(e, "ret", pop, 2, 16);
    return this.#code(e, "ret");
  }

  // ---------------------------------------------------------------- I/O and system

  /** `in al/ax/eax, imm8 | dx`. */
  in(dst: "al" | "ax" | "eax", port: number | "dx"): this {
    const what = `in ${dst}, ${port}`;
    return this.#io(what, dst, port, 0xe4, 0xec);
  }

  /** `out imm8 | dx, al/ax/eax`. */
  out(port: number | "dx", src: "al" | "ax" | "eax"): this {
    const what = `out ${port}, ${src}`;
    return this.#io(what, src, port, 0xe6, 0xee);
  }

  #io(what: string, reg: string, port: number | "dx", imm: number, dx: number): this {
    const size = ({ al: 8, ax: 16, eax: 32 } as Record<string, Size>)[reg];
    if (size === undefined) throw new Error(`${what}: the register must be al, ax or eax`);
    const e = new Enc();
    if (size === 16) e.push(0x66);
    const w = size === 8 ? 0 : 1;
    if (port === "dx") e.push(dx + w);
    else {
      if (!Number.isInteger(port) || port < 0 || port > 255) {
        throw new Error(`${what}: port ${port} does not fit in imm8 (use dx)`);
      }
      e.push(imm + w, port);
    }
    return this.#code(e, what);
  }

  /** `lgdt m` (10-byte pseudo-descriptor). */
  lgdt(src: Mem): this {
    return this.#rm("lgdt", { op: [0x0f, 0x01], reg: 2, rm: this.#memOnly("lgdt", src) });
  }
  /** `lidt m` (10-byte pseudo-descriptor). */
  lidt(src: Mem): this {
    return this.#rm("lidt", { op: [0x0f, 0x01], reg: 3, rm: this.#memOnly("lidt", src) });
  }
  /** `ltr r/m16`. */
  ltr(src: Reg16 | Mem): this {
    return this.#rm("ltr", { op: [0x0f, 0x00], reg: 3, rm: opRm(src) });
  }
  /** `invlpg m`. */
  invlpg(src: Mem): this {
    return this.#rm("invlpg", { op: [0x0f, 0x01], reg: 7, rm: this.#memOnly("invlpg", src) });
  }
  /** `int imm8`. */
  int(n: number): this {
    if (!Number.isInteger(n) || n < 0 || n > 255) throw new Error(`int: vector ${n} out of range`);
    return this.emit([0xcd, n], "int");
  }

  /** `hlt`. */
  hlt(): this {
    return this.emit([0xf4], "hlt");
  }
  /** `syscall`. */
  syscall(): this {
    return this.emit([0x0f, 0x05], "syscall");
  }
  /** `cli`. */
  cli(): this {
    return this.emit([0xfa], "cli");
  }
  /** `sti`. */
  sti(): this {
    return this.emit([0xfb], "sti");
  }
  /** `pause`. */
  pause(): this {
    return this.emit([0xf3, 0x90], "pause");
  }
  /** `nop`. */
  nop(): this {
    return this.emit([0x90], "nop");
  }
  /** `int3`. */
  int3(): this {
    return this.emit([0xcc], "int3");
  }
  /** `ud2`. */
  ud2(): this {
    return this.emit([0x0f, 0x0b], "ud2");
  }
  /** `cpuid`. */
  cpuid(): this {
    return this.emit([0x0f, 0xa2], "cpuid");
  }
  /** `rdmsr` (ecx → edx:eax). */
  rdmsr(): this {
    return this.emit([0x0f, 0x32], "rdmsr");
  }
  /** `wrmsr` (edx:eax → msr ecx). */
  wrmsr(): this {
    return this.emit([0x0f, 0x30], "wrmsr");
  }
  /** `rdtsc`. */
  rdtsc(): this {
    return this.emit([0x0f, 0x31], "rdtsc");
  }
  /** `iretq`. */
  iretq(): this {
    return this.emit([0x48, 0xcf], "iretq");
  }
  /** `cld`. */
  cld(): this {
    return this.emit([0xfc], "cld");
  }
  /** `std`. */
  std(): this {
    return this.emit([0xfd], "std");
  }
  /** `cqo` (sign-extend rax into rdx:rax). */
  cqo(): this {
    return this.emit([0x48, 0x99], "cqo");
  }
  /** `cdq` (sign-extend eax into edx:eax). */
  cdq(): this {
    return this.emit([0x99], "cdq");
  }
  /** `leave`. */
  leave(): this {
    return this.emit([0xc9], "leave");
  }
  /** `pushfq`. */
  pushfq(): this {
    return this.emit([0x9c], "pushfq");
  }
  /** `popfq`. */
  popfq(): this {
    return this.emit([0x9d], "popfq");
  }
  /** `mfence`. */
  mfence(): this {
    return this.emit([0x0f, 0xae, 0xf0], "mfence");
  }
  /** `movsb` (one byte [rsi] → [rdi]). */
  movsb(): this {
    return this.emit([0xa4], "movsb");
  }
  /** `stosb` (al → [rdi]). */
  stosb(): this {
    return this.emit([0xaa], "stosb");
  }
  /** `rep movsb` (rcx bytes [rsi] → [rdi]). */
  repMovsb(): this {
    return this.emit([0xf3, 0xa4], "rep movsb");
  }
  /** `rep stosb` (rcx bytes of al → [rdi]). */
  repStosb(): this {
    return this.emit([0xf3, 0xaa], "rep stosb");
  }
  /** `rep movsq` (rcx quad words [rsi] → [rdi]). */
  repMovsq(): this {
    return this.emit([0xf3, 0x48, 0xa5], "rep movsq");
  }
  /** `rep stosq` (rcx quad words of rax → [rdi]). */
  repStosq(): this {
    return this.emit([0xf3, 0x48, 0xab], "rep stosq");
  }

  // ---------------------------------------------------------------- assembly

  /** Resolves labels and returns the machine code. Can be called more than once. */
  assemble(opts: AssembleOptions = {}): Assembled {
    const origin = opts.origin ?? 0;
    const items = this.#items.map((it) => it.kind === "branch" ? { ...it } : it);
    const addrs = new Array<number>(items.length);
    let labels = new Map<string, number>();
    const sizeOf = (it: Item, addr: number): number => {
      switch (it.kind) {
        case "code":
          return it.bytes.length;
        case "label":
          return 0;
        case "align":
          return (it.to - (addr % it.to)) % it.to;
        case "branch":
          return (it.long ? it.near.length + 4 : it.short!.length + 1);
      }
    };
    // Relaxation: branches start short and only ever grow, so this terminates.
    for (;;) {
      labels = new Map();
      let addr = origin;
      items.forEach((it, i) => {
        addrs[i] = addr;
        if (it.kind === "label") labels.set(it.name, addr);
        addr += sizeOf(it, addr);
      });
      let changed = false;
      items.forEach((it, i) => {
        if (it.kind !== "branch" || it.long) return;
        const target = labels.get(it.label);
        if (target === undefined) throw new Error(`${it.what}: undefined label '${it.label}'`);
        const rel = target - (addrs[i] + sizeOf(it, addrs[i]));
        if (rel < -128 || rel > 127) {
          it.long = true;
          changed = true;
        }
      });
      if (!changed) break;
    }
    const end = items.length
      ? addrs[items.length - 1] + sizeOf(items[items.length - 1], addrs[items.length - 1])
      : origin;
    const out = new Uint8Array(end - origin);
    const view = new DataView(out.buffer);
    const lookup = (name: string, what: string): number => {
      const v = labels.get(name);
      if (v === undefined) throw new Error(`${what}: undefined label '${name}'`);
      return v;
    };
    items.forEach((it, i) => {
      const at = addrs[i] - origin;
      switch (it.kind) {
        case "label":
          return;
        case "align":
          out.fill(it.fill, at, at + sizeOf(it, addrs[i]));
          return;
        case "branch": {
          const ops = it.long ? it.near : it.short!;
          out.set(ops, at);
          const len = ops.length + (it.long ? 4 : 1);
          const rel = lookup(it.label, it.what) - (addrs[i] + len);
          if (it.long) {
            if (rel < -0x80000000 || rel > 0x7fffffff) {
              throw new Error(`${it.what}: target out of rel32 range`);
            }
            view.setInt32(at + ops.length, rel, true);
          } else view.setInt8(at + ops.length, rel);
          return;
        }
        case "code": {
          out.set(it.bytes, at);
          for (const f of it.fixups) {
            const target = lookup(f.label, it.what) + f.addend;
            const o = at + f.offset;
            const fail = () => {
              throw new Error(
                `${it.what}: label '${f.label}' = 0x${
                  target.toString(16)
                } does not fit (${f.kind})`,
              );
            };
            switch (f.kind) {
              case "rip32": {
                const rel = target - (addrs[i] + it.bytes.length);
                if (rel < -0x80000000 || rel > 0x7fffffff) fail();
                view.setInt32(o, rel, true);
                break;
              }
              case "abs8":
                if (target < 0 || target > 0xff) fail();
                out[o] = target;
                break;
              case "abs16":
                if (target < 0 || target > 0xffff) fail();
                view.setUint16(o, target, true);
                break;
              case "abs32":
                if (target < 0 || target > 0xffffffff) fail();
                view.setUint32(o, target, true);
                break;
              case "abs32s":
                if (target < 0 || target > 0x7fffffff) fail();
                view.setUint32(o, target, true);
                break;
              case "abs64":
                view.setBigUint64(o, BigInt.asUintN(64, B(target)), true);
                break;
            }
          }
        }
      }
    });
    return { bytes: out, labels, origin };
  }

  // ---------------------------------------------------------------- encoding core

  #code(e: Enc, what: string): this {
    this.#items.push({ kind: "code", bytes: Uint8Array.from(e.bytes), fixups: e.fixups, what });
    return this;
  }

  #gpr(what: string, name: unknown, sizes: Size[]): RegInfo {
    const r = regInfo(name);
    if (!r || r.kind !== "gpr" || !sizes.includes(r.size)) {
      throw new Error(`${what}: expected a ${sizes.join("/")}-bit register, got ${show(name)}`);
    }
    return r;
  }

  #memOnly(what: string, m: Mem): Mem {
    if (!isMem(m)) throw new Error(`${what}: operand must be memory, got ${show(m)}`);
    return m;
  }

  /** The operand width of a register or sized memory operand (checked against `expect`). */
  #sizeOf(what: string, op: unknown, expect?: Size): Size {
    let size: Size | undefined;
    const r = regInfo(op);
    if (r?.kind === "gpr") size = r.size;
    else if (isMem(op)) size = op.size;
    else throw new Error(`${what}: expected a register or memory operand, got ${show(op)}`);
    if (size === undefined) {
      throw new Error(`${what}: memory operand needs a size (mem({ …, size }))`);
    }
    if (expect !== undefined && size !== expect) {
      throw new Error(`${what}: operand must be ${expect}-bit`);
    }
    return size;
  }

  /** Two-operand register/memory forms: `opRm` is `r/m, r`; `opReg` is `r, r/m` (8-bit opcodes; +1 for wider). */
  #rr(what: string, opRmForm: number, opRegForm: number, dst: unknown, src: unknown): this {
    const d = regInfo(dst);
    const s = regInfo(src);
    if (d?.kind === "gpr" && s?.kind === "gpr") {
      if (d.size !== s.size) {
        throw new Error(`${what}: operand sizes differ (${d.size} vs ${s.size})`);
      }
      return this.#rm(what, {
        op: [opRmForm + (d.size === 8 ? 0 : 1)],
        reg: s.code,
        regInfo: s,
        rm: d,
        size: d.size,
      });
    }
    if (d?.kind === "gpr" && isMem(src)) {
      this.#sizeCompat(what, src, d.size);
      return this.#rm(what, {
        op: [opRegForm + (d.size === 8 ? 0 : 1)],
        reg: d.code,
        regInfo: d,
        rm: src,
        size: d.size,
      });
    }
    if (isMem(dst) && s?.kind === "gpr") {
      this.#sizeCompat(what, dst, s.size);
      return this.#rm(what, {
        op: [opRmForm + (s.size === 8 ? 0 : 1)],
        reg: s.code,
        regInfo: s,
        rm: dst,
        size: s.size,
      });
    }
    throw new Error(`${what}: unsupported operand combination`);
  }

  #sizeCompat(what: string, m: Mem, size: Size) {
    if (m.size !== undefined && m.size !== size) {
      throw new Error(`${what}: memory size ${m.size} differs from register size ${size}`);
    }
  }

  #checkImm(what: string, v: bigint, bytes: number, size: Size): bigint {
    // Accept both signed and unsigned spellings of the operand width; a 64-bit
    // operation's immediate is a sign-extended imm32 (SDM vol. 2 §2.2.1.5).
    const bits = size === 64 ? 64 : bytes * 8;
    const ok = v >= -(1n << B(bits - 1)) && v < (1n << B(bits));
    const sx = BigInt.asIntN(size, v);
    if (!ok || (size === 64 && !fitsSigned(sx, 32))) {
      throw new Error(`${what}: immediate ${v} does not fit`);
    }
    return v;
  }

  #imm(e: Enc, what: string, v: Imm, bytes: 1 | 2 | 4 | 8, size: Size, skipCheck = false) {
    if (isRef(v)) {
      const kind: FixupKind = bytes === 1
        ? "abs8"
        : bytes === 2
        ? "abs16"
        : bytes === 8
        ? "abs64"
        : size === 64
        ? "abs32s"
        : "abs32";
      e.fix(kind, v.name, v.addend, bytes);
      return;
    }
    const b = toBig(v, what);
    if (!skipCheck) {
      if (bytes === 8) {
        if (b < -(1n << 63n) || b >= 1n << 64n) {
          throw new Error(`${what}: immediate ${v} does not fit`);
        }
      } else if (bytes === 1 && size !== 8) {
        // imm8 sign-extended: checked by the caller
      } else this.#checkImm(what, b, bytes, size);
    }
    e.le(b, bytes);
  }

  /** Legacy prefixes and REX for an instruction without ModR/M (register in the opcode). */
  #prefix(what: string, o: { size?: Size; rm: RegInfo }): Enc {
    const e = new Enc();
    if (o.size === 16) e.push(0x66);
    const rex = 0x40 | (o.size === 64 ? 8 : 0) | (o.rm.code >= 8 ? 1 : 0);
    if (o.rm.high8 && rex !== 0x40) {
      throw new Error(`${what}: ${o.rm.name} cannot be used with REX`);
    }
    if (rex !== 0x40 || o.rm.needsRex) e.push(rex);
    return e;
  }

  /** A ModR/M-encoded instruction. */
  #rm(
    what: string,
    o: {
      op: number[];
      reg: number;
      regInfo?: RegInfo;
      rm: RegInfo | Mem;
      /** Operand size: 16 adds 0x66, 64 adds REX.W. */
      size?: Size;
      /** Source width of movzx/movsx (8-bit source registers may need REX). */
      srcSize?: Size;
      w?: boolean;
      /** [value, bytes, alreadyChecked]. */
      imm?: [Imm, 1 | 2 | 4] | [Imm, 1 | 2 | 4, boolean];
    },
  ): this {
    const e = new Enc();
    if (o.size === 16) e.push(0x66);
    const m = isMem(o.rm) ? o.rm : undefined;
    const r = isMem(o.rm) ? undefined : o.rm;
    const base = m?.base ? regInfo(m.base) : undefined;
    const index = m?.index ? regInfo(m.index) : undefined;
    if (m) {
      for (const x of [base, index]) {
        if (x && (x.kind !== "gpr" || x.size !== 64)) {
          throw new Error(`${what}: address registers must be 64-bit`);
        }
      }
      if (m.rip && (m.base || m.index || m.label)) {
        throw new Error(`${what}: rip-relative operands take no base/index`);
      }
    }
    const w = o.w ?? o.size === 64;
    const rexByte = 0x40 | (w ? 8 : 0) | (o.reg >= 8 ? 4 : 0) | (index && index.code >= 8 ? 2 : 0) |
      (((r ?? base)?.code ?? 0) >= 8 ? 1 : 0);
    const regs = [o.regInfo, r].filter((x): x is RegInfo => x !== undefined);
    const needRex = rexByte !== 0x40 || regs.some((x) => x.needsRex);
    if (needRex && regs.some((x) => x.high8)) {
      throw new Error(`${what}: ah/ch/dh/bh cannot be combined with REX-only registers or r8–r15`);
    }
    if (needRex) e.push(rexByte);
    e.push(...o.op);
    const reg3 = (o.reg & 7) << 3;
    if (r) {
      e.push(0xc0 | reg3 | (r.code & 7));
    } else if (m!.rip) {
      e.push(reg3 | 5);
      e.fix("rip32", m!.rip, m!.disp, 4);
    } else {
      const mm = m!;
      const disp = mm.disp;
      const abs = mm.label !== undefined;
      const dispMod = (b: RegInfo): number => {
        if (abs) return 2;
        if (disp === 0 && (b.code & 7) !== 5) return 0;
        return fitsSigned(B(disp), 8) ? 1 : 2;
      };
      const emitDisp = (mod: number) => {
        if (abs) e.fix("abs32s", mm.label!, disp, 4);
        else if (mod === 1) e.le(B(disp), 1);
        else e.le(B(disp), 4);
      };
      if (!base && !index) {
        e.push(reg3 | 4, 0x25);
        emitDisp(2);
      } else if (!index && (base!.code & 7) !== 4) {
        const mod = dispMod(base!);
        e.push((mod << 6) | reg3 | (base!.code & 7));
        if (mod) emitDisp(mod);
      } else {
        const ss = { 1: 0, 2: 1, 4: 2, 8: 3 }[mm.scale];
        const idx = index ? index.code & 7 : 4;
        if (!base) {
          e.push(reg3 | 4, (ss << 6) | (idx << 3) | 5);
          emitDisp(2);
        } else {
          const mod = dispMod(base);
          e.push((mod << 6) | reg3 | 4, (ss << 6) | (idx << 3) | (base.code & 7));
          if (mod) emitDisp(mod);
        }
      }
    }
    if (o.imm) {
      const [v, n, checked] = o.imm;
      this.#imm(e, what, v, n, o.size ?? 32, checked ?? false);
    }
    return this.#code(e, what);
  }
}

function opRm(op: Reg | Mem): RegInfo | Mem {
  if (isMem(op)) return op;
  const r = regInfo(op);
  if (!r || r.kind !== "gpr") {
    throw new Error(`expected a register or memory operand, got ${show(op)}`);
  }
  return r;
}

function show(op: unknown): string {
  if (isMem(op)) {
    if (op.rip) return `[rip+${op.rip}${op.disp ? `+${op.disp}` : ""}]`;
    const parts = [
      op.base,
      op.index ? `${op.index}*${op.scale}` : undefined,
      op.label,
      op.disp ? String(op.disp) : undefined,
    ]
      .filter(Boolean);
    return `[${parts.join("+") || "0"}]`;
  }
  if (isRef(op)) return `${op.name}${op.addend ? `+${op.addend}` : ""}`;
  return String(op);
}
