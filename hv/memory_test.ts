import {
  deepStrictEqual as assertEquals,
  ok,
  strictEqual,
  throws as assertThrows,
} from "node:assert/strict";
import { GuestMemoryError, MappedRegion, RegionMemory } from "./memory.ts";

Deno.test("RegionMemory reads and writes little-endian within a region", () => {
  const m = RegionMemory.fromBytes(0x1000, 0x10000);
  m.writeU32(0x10004, 0xdeadbeef);
  assertEquals(m.readU8(0x10004), 0xef);
  assertEquals(m.readU16(0x10006), 0xdead);
  m.writeU64(0x10008, 0x0102030405060708n);
  assertEquals(m.readU64(0x10008), 0x0102030405060708n);
  assertEquals([...m.slice(0x10008, 2)], [8, 7]);
});

Deno.test("RegionMemory rejects accesses outside or straddling regions", () => {
  const m = new RegionMemory([
    { guestAddr: 0, size: 0x100, bytes: new Uint8Array(0x100) },
    { guestAddr: 0x100, size: 0x100, bytes: new Uint8Array(0x100) },
  ]);
  assertThrows(() => m.readU32(0xfe), GuestMemoryError); // straddles two regions
  assertThrows(() => m.readU8(0x200), GuestMemoryError);
  assertThrows(() => m.slice(-1, 1), GuestMemoryError);
  assertThrows(() => m.slice(0, 2 ** 60), GuestMemoryError);
  assertThrows(() => m.slice(0.5, 1), GuestMemoryError);
  assertEquals(m.contains(0x1ff, 1), true);
  assertEquals(m.contains(0x1ff, 2), false);
});

Deno.test("RegionMemory rejects overlapping regions", () => {
  assertThrows(() =>
    new RegionMemory([
      { guestAddr: 0, size: 0x100, bytes: new Uint8Array(0x100) },
      { guestAddr: 0x80, size: 0x100, bytes: new Uint8Array(0x100) },
    ]), RangeError);
});

Deno.test("memfd-backed memory is shared with its fd", () => {
  using m = RegionMemory.memfd([{ guestAddr: 0x1000, size: 0x2000 }]);
  m.writeU32(0x1000, 0x41424344);
  const fd = m.regions[0].fd!;
  const buf = new Uint8Array(4);
  const f = Deno.openSync(`/proc/self/fd/${fd}`);
  f.readSync(buf);
  f.close();
  assertEquals(new TextDecoder().decode(buf), "DCBA");
});

Deno.test("memfd regions make their ArrayBuffer only when guest bytes are first touched", () => {
  using m = RegionMemory.memfd([{ guestAddr: 0, size: 0x4000 }, {
    guestAddr: 0x10000,
    size: 0x1000,
  }]);
  const [a, b] = m.regions as MappedRegion[];
  ok(a instanceof MappedRegion && b instanceof MappedRegion);
  assertEquals([a.viewed, b.viewed], [false, false]);
  ok(m.contains(0x10000, 4) && !m.contains(0x4000, 1), "lookups need no view");
  m.writeU32(0x10000, 0x11223344);
  assertEquals([a.viewed, b.viewed], [false, true]);
  assertEquals(m.readU16(0x10002), 0x1122);
  assertEquals(m.slice(0x100, 2).length, 2);
  assertEquals(a.viewed, true);
  strictEqual(a.bytes, a.bytes, "made once");
  strictEqual(a.bytes.length, 0x4000);
});

Deno.test("a MappedRegion refuses a view of the wrong size", () => {
  using m = RegionMemory.memfd([{ guestAddr: 0, size: 0x2000 }]);
  const r = m.regions[0];
  const bad = new MappedRegion(
    { guestAddr: 0, size: 0x2000, hostPtr: r.hostPtr! },
    () => new Uint8Array(r.bytes.buffer, 0, 0x1000),
  );
  assertThrows(() => bad.bytes, RangeError);
});

Deno.test("RegionMemory moves an aligned 16- or 32-bit word in one access, even unoptimised", async () => {
  // A ring index the guest changes while the device reads it (or the other way
  // round) must never be seen half old, half new. With V8's DataView builtins
  // (unoptimised code, so --jitless here) the old code failed this test with
  // 11–23 torn values in three runs on this machine.
  for (const [mode, width] of [["read", "16"], ["write", "32"]]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--v8-flags=--jitless",
        new URL("./testdata/tearing_probe.ts", import.meta.url).pathname,
        mode,
        width,
        "1000000",
      ],
      stderr: "inherit",
    }).output();
    strictEqual(out.code, 0);
    assertEquals(
      JSON.parse(new TextDecoder().decode(out.stdout)),
      { torn: 0 },
      `${mode} ${width}`,
    );
  }
});
