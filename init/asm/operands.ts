/**
 * Operands of the x86-64 assembler: register names (typed string literals),
 * memory operands ({@link mem}, {@link rip}) and label references ({@link ref}).
 *
 * @module
 */

/** 64-bit general-purpose registers. */
export type Reg64 =
  | "rax"
  | "rcx"
  | "rdx"
  | "rbx"
  | "rsp"
  | "rbp"
  | "rsi"
  | "rdi"
  | "r8"
  | "r9"
  | "r10"
  | "r11"
  | "r12"
  | "r13"
  | "r14"
  | "r15";
/** 32-bit general-purpose registers. */
export type Reg32 =
  | "eax"
  | "ecx"
  | "edx"
  | "ebx"
  | "esp"
  | "ebp"
  | "esi"
  | "edi"
  | "r8d"
  | "r9d"
  | "r10d"
  | "r11d"
  | "r12d"
  | "r13d"
  | "r14d"
  | "r15d";
/** 16-bit general-purpose registers. */
export type Reg16 =
  | "ax"
  | "cx"
  | "dx"
  | "bx"
  | "sp"
  | "bp"
  | "si"
  | "di"
  | "r8w"
  | "r9w"
  | "r10w"
  | "r11w"
  | "r12w"
  | "r13w"
  | "r14w"
  | "r15w";
/** 8-bit general-purpose registers (`ah`…`bh` cannot be combined with a REX prefix). */
export type Reg8 =
  | "al"
  | "cl"
  | "dl"
  | "bl"
  | "ah"
  | "ch"
  | "dh"
  | "bh"
  | "spl"
  | "bpl"
  | "sil"
  | "dil"
  | "r8b"
  | "r9b"
  | "r10b"
  | "r11b"
  | "r12b"
  | "r13b"
  | "r14b"
  | "r15b";
/** Any general-purpose register. */
export type Reg = Reg64 | Reg32 | Reg16 | Reg8;
/** Control registers usable with `mov`. */
export type CReg = "cr0" | "cr2" | "cr3" | "cr4" | "cr8";
/** Segment registers usable with `mov`. */
export type SReg = "es" | "cs" | "ss" | "ds" | "fs" | "gs";

/** Operand width in bits. */
export type Size = 8 | 16 | 32 | 64;

/** A reference to a label's address plus a constant (resolved at assembly). */
export interface LabelRef {
  readonly kind: "label";
  readonly name: string;
  readonly addend: number;
}

/** An immediate: a number, a bigint (for 64-bit values beyond 2^53) or a label address. */
export type Imm = number | bigint | LabelRef;

/**
 * A memory operand: `[base + index*scale + disp]`, `[rip + label]`, or an
 * absolute `[label + disp]` (32-bit sign-extended address).
 */
export interface Mem {
  readonly kind: "mem";
  readonly base?: Reg64;
  readonly index?: Reg64;
  readonly scale: 1 | 2 | 4 | 8;
  readonly disp: number;
  /** Access width; needed when no register operand gives it (e.g. `mov [rax], 1`). */
  readonly size?: Size;
  /** RIP-relative: the operand is `[rip + (label + disp - next instruction)]`. */
  readonly rip?: string;
  /** Absolute label address (plus disp) as a sign-extended 32-bit displacement. */
  readonly label?: string;
}

/** Fields accepted by {@link mem}. */
export interface MemSpec {
  base?: Reg64;
  index?: Reg64;
  scale?: 1 | 2 | 4 | 8;
  disp?: number;
  size?: Size;
  /** Absolute address of this label (plus disp). */
  label?: string;
}

/** Any operand accepted by the assembler. */
export type Operand = Reg | CReg | SReg | Mem | Imm;

/**
 * A memory operand. `mem({ base: "rsp", index: "rcx", scale: 8, disp: 16, size: 64 })`
 * is `QWORD PTR [rsp+rcx*8+0x10]`; `mem({ disp: 0x1000, size: 32 })` is an absolute address.
 */
export function mem(spec: MemSpec): Mem {
  const scale = spec.scale ?? 1;
  if (![1, 2, 4, 8].includes(scale)) throw new Error(`bad scale ${scale} (1, 2, 4 or 8)`);
  if (spec.index === "rsp") throw new Error("rsp cannot be an index register");
  const disp = spec.disp ?? 0;
  if (!Number.isInteger(disp) || disp < -0x80000000 || disp > 0x7fffffff) {
    throw new Error(`displacement ${disp} does not fit in a signed 32-bit field`);
  }
  return {
    kind: "mem",
    base: spec.base,
    index: spec.index,
    scale,
    disp,
    size: spec.size,
    label: spec.label,
  };
}

/** A RIP-relative memory operand addressing `label + disp`: `[rip + label]`. */
export function rip(label: string, opts: { disp?: number; size?: Size } = {}): Mem {
  return { kind: "mem", scale: 1, disp: opts.disp ?? 0, size: opts.size, rip: label };
}

/** A label's address (plus `addend`) as an immediate or data value. */
export function ref(name: string, addend = 0): LabelRef {
  return { kind: "label", name, addend };
}

/** Returns `m` with its access width set: `sized(mem({ base: "rax" }), 16)`. */
export function sized(m: Mem, size: Size): Mem {
  return { ...m, size };
}

/** Decoded register facts. */
export interface RegInfo {
  readonly name: string;
  readonly kind: "gpr" | "cr" | "seg";
  /** Register number 0–15. */
  readonly code: number;
  readonly size: Size;
  /** `spl`, `bpl`, `sil`, `dil`, `r8b`…: needs a REX prefix to be encoded. */
  readonly needsRex: boolean;
  /** `ah`, `ch`, `dh`, `bh`: cannot be encoded with a REX prefix. */
  readonly high8: boolean;
}

const REGS = new Map<string, RegInfo>();
function add(names: string[], size: Size, kind: RegInfo["kind"] = "gpr") {
  names.forEach((name, code) => {
    if (name) REGS.set(name, { name, kind, code, size, needsRex: false, high8: false });
  });
}
add(
  [
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
  ],
  64,
);
add(["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"], 32);
add(["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"], 16);
for (let i = 8; i < 16; i++) {
  REGS.set(`r${i}d`, {
    name: `r${i}d`,
    kind: "gpr",
    code: i,
    size: 32,
    needsRex: false,
    high8: false,
  });
  REGS.set(`r${i}w`, {
    name: `r${i}w`,
    kind: "gpr",
    code: i,
    size: 16,
    needsRex: false,
    high8: false,
  });
  REGS.set(`r${i}b`, {
    name: `r${i}b`,
    kind: "gpr",
    code: i,
    size: 8,
    needsRex: true,
    high8: false,
  });
}
add(["al", "cl", "dl", "bl"], 8);
["ah", "ch", "dh", "bh"].forEach((name, i) =>
  REGS.set(name, { name, kind: "gpr", code: 4 + i, size: 8, needsRex: false, high8: true })
);
["spl", "bpl", "sil", "dil"].forEach((name, i) =>
  REGS.set(name, { name, kind: "gpr", code: 4 + i, size: 8, needsRex: true, high8: false })
);
for (const n of [0, 2, 3, 4, 8]) {
  REGS.set(`cr${n}`, {
    name: `cr${n}`,
    kind: "cr",
    code: n,
    size: 64,
    needsRex: false,
    high8: false,
  });
}
add(["es", "cs", "ss", "ds", "fs", "gs"], 16, "seg");

/** Register facts for `name`, or undefined when it is not a register. */
export function regInfo(name: unknown): RegInfo | undefined {
  return typeof name === "string" ? REGS.get(name) : undefined;
}

/** Whether `op` is a memory operand. */
export function isMem(op: unknown): op is Mem {
  return typeof op === "object" && op !== null && (op as Mem).kind === "mem";
}

/** Whether `op` is a label reference. */
export function isRef(op: unknown): op is LabelRef {
  return typeof op === "object" && op !== null && (op as LabelRef).kind === "label";
}

/** Whether `op` is an immediate (number, bigint or label reference). */
export function isImm(op: unknown): op is Imm {
  return typeof op === "number" || typeof op === "bigint" || isRef(op);
}
