import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../memory.ts";
import { writeIdentityPageTables, X86 } from "./long_mode.ts";

/** The tables entry by entry with BigInt arithmetic (what the writer must produce). */
function expected(pml4: number, gib: number): Map<number, bigint> {
  const rw = X86.PTE_P | X86.PTE_RW;
  const out = new Map<number, bigint>([[pml4, BigInt(pml4 + 0x1000) | rw]]);
  for (let g = 0; g < gib; g++) {
    const pd = pml4 + 0x2000 + g * 0x1000;
    out.set(pml4 + 0x1000 + 8 * g, BigInt(pd) | rw);
    for (let j = 0; j < 512; j++) {
      out.set(pd + 8 * j, (BigInt(g) << 30n) | (BigInt(j) << 21n) | rw | X86.PTE_PS);
    }
  }
  return out;
}

Deno.test("writeIdentityPageTables: 2 MiB identity pages for every GiB, the rest zero", () => {
  for (const [pml4, gib] of [[0x9000, 4], [0x100000, 7]]) {
    const mem = RegionMemory.fromBytes(0x200000);
    mem.slice(0, 0x200000).fill(0xee); // the tables must overwrite what was there
    const size = writeIdentityPageTables(mem, pml4, gib);
    strictEqual(size, (2 + gib) * 0x1000);
    const want = expected(pml4, gib);
    const got = new Map<number, bigint>();
    for (let at = pml4; at < pml4 + size; at += 8) {
      const e = mem.readU64(at);
      if (e !== 0n) got.set(at, e);
    }
    deepStrictEqual(got, want);
    strictEqual(mem.readU8(pml4 + size), 0xee, "nothing written past the tables");
  }
  // Above 4 GiB the high half of an entry carries the address.
  const mem = RegionMemory.fromBytes(0x20000);
  writeIdentityPageTables(mem, 0x1000, 5);
  strictEqual(mem.readU64(0x3000 + 4 * 0x1000 + 8 * 3), (4n << 30n) | (3n << 21n) | 0x83n);
  throws(() => writeIdentityPageTables(mem, 0x1001, 1), RangeError);
  throws(() => writeIdentityPageTables(mem, 0x1000, 0), RangeError);
});
