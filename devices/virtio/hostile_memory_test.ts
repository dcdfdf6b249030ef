// L0: the hostile test memory itself finds what it is meant to find.
import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { HostileMemory } from "./hostile_memory.ts";

function mem() {
  const inner = RegionMemory.fromBytes(4096);
  inner.write(0x100, new TextEncoder().encode("abcd"));
  return { inner, m: new HostileMemory(inner) };
}

Deno.test("hostile memory: records reads, views and writes; finds double reads", () => {
  const { m } = mem();
  const b = new Uint8Array(4);
  m.read(0x100, b);
  m.readU16(0x102);
  m.slice(0x200, 8);
  m.writeU32(0x300, 7);
  deepStrictEqual(m.accesses.map((a) => a.kind), ["read", "read", "view", "write"]);
  deepStrictEqual(m.doubleReads(), [{ addr: 0x102, length: 2, count: 2 }]);
  deepStrictEqual(m.doubleReads([{ addr: 0x103, length: 1 }]), [
    { addr: 0x102, length: 1, count: 2 },
  ]);
  throws(() => m.assertNoDoubleReads(), /0x102\+2 ×2/);
  deepStrictEqual(m.readCounts({ addr: 0x100, length: 4 }), [1, 1, 2, 2]);
  throws(() => m.assertCopiedOnce([{ addr: 0x100, length: 4 }]), /0x102 .* read 2 times/);
  throws(() => m.assertCopiedOnce([{ addr: 0x204, length: 1 }]), /handed out as a view/);
  // Adjacent reads are not double reads.
  m.clear();
  m.read(0x100, new Uint8Array(2));
  m.read(0x102, new Uint8Array(2));
  deepStrictEqual(m.doubleReads(), []);
  m.assertCopiedOnce([{ addr: 0x100, length: 4 }]);
});

Deno.test("hostile memory: a race changes the bytes right after the first read", () => {
  const { inner, m } = mem();
  m.raceAfterFirstRead(0x101, new TextEncoder().encode("/x"));
  strictEqual(m.racesFired, 0);
  const first = new Uint8Array(4);
  m.read(0x100, first);
  strictEqual(new TextDecoder().decode(first), "abcd", "the first read sees the valid bytes");
  strictEqual(m.racesFired, 1);
  const second = new Uint8Array(4);
  m.read(0x100, second);
  strictEqual(new TextDecoder().decode(second), "a/xd", "a second read sees the change");
  strictEqual(inner.readU8(0x101), 0x2f);
  // A view also counts as the first read.
  m.raceAfterFirstRead(0x200, new Uint8Array([9]));
  m.slice(0x1f0, 0x20);
  strictEqual(m.racesFired, 2);
});

Deno.test("hostile memory: finds reads of bytes the device wrote", () => {
  const { m } = mem();
  m.writeU16(0x400, 1);
  m.readU8(0x401);
  m.readU8(0x402);
  deepStrictEqual(m.readBacks(), [{ addr: 0x401, length: 1 }]);
  throws(() => m.assertNoReadBack(), /0x401\+1/);
});
