/**
 * skiff's x86-64 assembler: builds guest test programs and the generated init.
 *
 * Registers are typed string literals (`"rax"`, `"r10d"`, `"al"`, `"cr3"`,
 * `"ds"`); immediates are numbers, bigints or label references ({@link ref});
 * memory operands come from {@link mem} (`[base + index*scale + disp]`, an
 * optional `size` in bits when no register gives the width) and {@link rip}
 * (`[rip + label]`). Jumps take label names and may refer forward; `jmp`/`jcc`
 * are relaxed to rel8 when the target is in reach, `call` is always rel32.
 *
 * @example
 * ```ts
 * import { Assembler, mem, ref, rip } from "./mod.ts";
 *
 * const a = new Assembler();
 * a.lea("rsi", rip("msg"));            // position-independent address
 * a.mov("dx", 0x3f8);
 * a.label("next");
 * a.mov("al", mem({ base: "rsi", size: 8 }));
 * a.test("al", "al");
 * a.je("done");                         // forward reference
 * a.out("dx", "al");
 * a.inc("rsi");
 * a.jmp("next");
 * a.label("done");
 * a.hlt();
 * a.label("msg");
 * a.asciz("hello\n");
 * a.align(8);
 * a.label("table");
 * a.dq(ref("msg"), ref("done"));        // absolute addresses
 * const { bytes, labels } = a.assemble({ origin: 0x1000 });
 * console.log(bytes.length, labels.get("msg"));
 * ```
 *
 * @module
 */

export { Assembler } from "./assembler.ts";
export type { Assembled, AssembleOptions, Cond } from "./assembler.ts";
export { isImm, isMem, isRef, mem, ref, regInfo, rip, sized } from "./operands.ts";
export type {
  CReg,
  Imm,
  LabelRef,
  Mem,
  MemSpec,
  Operand,
  Reg,
  Reg16,
  Reg32,
  Reg64,
  Reg8,
  RegInfo,
  Size,
  SReg,
} from "./operands.ts";
