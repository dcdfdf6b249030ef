/**
 * IR → x86-64: a static ELF64 executable.
 *
 * @example
 * ```ts
 * import { compileElf } from "./mod.ts";
 * import { log, mkdirP, seq } from "../ir/mod.ts";
 * const { bytes } = compileElf({ body: seq(mkdirP("/tmp/x/y"), log(2, "made it")) });
 * await Deno.writeFile("/tmp/prog", bytes, { mode: 0o755 });
 * ```
 *
 * @module
 */

export { compileElf, ELF_BASE, ERR_NO, ERR_STEP } from "./codegen.ts";
export type { Compiled, Program } from "./codegen.ts";
export { buildElf } from "./elf.ts";
export type { ElfImage } from "./elf.ts";
export { RECORD_MAGIC } from "./runtime.ts";
