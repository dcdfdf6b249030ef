/**
 * Constant strings of the stand-in's code: each distinct text gets one
 * NUL-terminated copy, emitted after the code.
 *
 * @module
 */

import type { Assembler } from "../../../../init/asm/mod.ts";

/** A pool of NUL-terminated strings by label. */
export class StringPool {
  #labels = new Map<string, string>();

  /** The label of `text` (added on first use). */
  label(text: string): string {
    let l = this.#labels.get(text);
    if (!l) {
      l = `str_${this.#labels.size}`;
      this.#labels.set(text, l);
    }
    return l;
  }

  /** Emits every string (call once, after the code). */
  emit(a: Assembler): void {
    for (const [text, l] of this.#labels) {
      a.label(l);
      a.asciz(text);
    }
  }
}
