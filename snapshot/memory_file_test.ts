import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { RegionMemory } from "../hv/memory.ts";
import { PAGE_SIZE } from "./format.ts";
import {
  dataRanges,
  digestMemoryFile,
  forEachDataRun,
  mapMemoryFile,
  writeMemoryFile,
} from "./memory_file.ts";

const MiB = 1 << 20;

Deno.test("forEachDataRun finds maximal runs of non-zero pages", () => {
  const mem = RegionMemory.fromBytes(16 * PAGE_SIZE);
  mem.writeU8(0 * PAGE_SIZE + 5, 1);
  mem.writeU8(1 * PAGE_SIZE + 4095, 1);
  mem.writeU8(3 * PAGE_SIZE, 1);
  mem.writeU8(15 * PAGE_SIZE + 100, 1);
  const runs: [number, number][] = [];
  forEachDataRun(mem.regions[0], (o, l) => runs.push([o / PAGE_SIZE, l / PAGE_SIZE]));
  deepStrictEqual(runs, [[0, 2], [3, 1], [15, 1]]);
});

Deno.test("dataRanges of a memfd skips never-touched ranges", () => {
  using mem = RegionMemory.memfd([{ guestAddr: 0, size: 64 * MiB }]);
  const r = mem.regions[0];
  deepStrictEqual(dataRanges(r.fd!, 0, r.size), []);
  mem.writeU8(10 * MiB, 7);
  mem.writeU8(40 * MiB + 3, 7);
  const ranges = dataRanges(r.fd!, 0, r.size);
  strictEqual(ranges.length, 2);
  ok(ranges[0][0] <= 10 * MiB && ranges[0][1] > 10 * MiB, `range ${ranges[0]}`);
  ok(ranges[1][0] <= 40 * MiB && ranges[1][1] > 40 * MiB + 3, `range ${ranges[1]}`);
});

Deno.test("memory file is sparse, maps back identical, and private writes leave it unchanged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-memfile-" });
  try {
    using mem = RegionMemory.memfd([
      { guestAddr: 0, size: 256 * MiB },
      { guestAddr: 0x1_0000_0000, size: 2 * MiB },
    ]);
    // Touched pages, a page written then zeroed again (must not be stored), and the high region.
    for (let i = 0; i < 64; i++) mem.writeU32(i * 3 * MiB + 8, 0xc0de0000 + i);
    mem.write(5 * MiB, new Uint8Array(2 * PAGE_SIZE).fill(0xab));
    mem.writeU64(100 * MiB, 1n);
    mem.writeU64(100 * MiB, 0n);
    mem.writeU8(0x1_0000_0000 + 2 * MiB - 1, 0x5a);
    const path = join(dir, "memory");
    const info = writeMemoryFile(path, mem);
    strictEqual(info.fileSize, 258 * MiB);
    deepStrictEqual(info.regions, [
      { guestAddr: 0, size: 256 * MiB, fileOffset: 0 },
      { guestAddr: 0x1_0000_0000, size: 2 * MiB, fileOffset: 256 * MiB },
    ]);
    // 64 scattered pages (one overlaps the 0xab run? no: 5 MiB is not a multiple of 3 MiB) + 2 + 1.
    strictEqual(info.dataBytes, (64 + 2 + 1) * PAGE_SIZE);
    const st = Deno.statSync(path);
    strictEqual(st.size, 258 * MiB);
    ok(st.blocks! * 512 <= info.dataBytes + 64 * 1024, `allocated ${st.blocks! * 512} bytes`);
    strictEqual(digestMemoryFile(path, info), info.digest);

    using back = mapMemoryFile(path, info);
    deepStrictEqual(back.regions.map((r) => [r.guestAddr, r.size]), [[0, 256 * MiB], [
      0x1_0000_0000,
      2 * MiB,
    ]]);
    for (let i = 0; i < 64; i++) strictEqual(back.readU32(i * 3 * MiB + 8), 0xc0de0000 + i);
    strictEqual(back.readU8(5 * MiB + 2 * PAGE_SIZE - 1), 0xab);
    strictEqual(back.readU64(100 * MiB), 0n);
    strictEqual(back.readU8(0x1_0000_0000 + 2 * MiB - 1), 0x5a);

    // Copy-on-write: writes through the mapping never reach the file.
    // (The digest covers every non-zero page, so a page leaking into a hole would change it.)
    const blocksBefore = Deno.statSync(path).blocks;
    back.writeU32(8, 0xffffffff);
    back.write(200 * MiB, new Uint8Array(PAGE_SIZE).fill(1));
    strictEqual(back.readU32(8), 0xffffffff);
    strictEqual(Deno.statSync(path).blocks, blocksBefore);
    strictEqual(digestMemoryFile(path, info), info.digest);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a disposed restore's range is reused by the next one, which sees the file, not the old writes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-memfile-" });
  try {
    using mem = RegionMemory.memfd([{ guestAddr: 0, size: 8 * MiB }]);
    mem.writeU32(4 * MiB, 0x11223344);
    const path = join(dir, "memory");
    const info = writeMemoryFile(path, mem);
    const first = mapMemoryFile(path, info);
    const addr = Deno.UnsafePointer.value(first.regions[0].hostPtr!);
    first.writeU32(4 * MiB, 0xdeadbeef); // copy-on-write page
    first.writeU32(6 * MiB, 0xdeadbeef); // page over a hole
    first[Symbol.dispose]();
    using second = mapMemoryFile(path, info);
    strictEqual(Deno.UnsafePointer.value(second.regions[0].hostPtr!), addr);
    strictEqual(second.readU32(4 * MiB), 0x11223344);
    strictEqual(second.readU32(6 * MiB), 0);
    // Two restores alive at once get different ranges.
    using third = mapMemoryFile(path, info);
    ok(Deno.UnsafePointer.value(third.regions[0].hostPtr!) !== addr);
    strictEqual(third.readU32(4 * MiB), 0x11223344);
    strictEqual(digestMemoryFile(path, info), info.digest);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a 4 GiB guest that touched 32 MiB writes about 32 MiB", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-memfile-" });
  try {
    using mem = RegionMemory.memfd([{ guestAddr: 0, size: 4096 * MiB }]);
    const page = new Uint8Array(PAGE_SIZE).fill(0x11);
    // 8192 pages spread over the whole guest, one every 512 KiB.
    for (let i = 0; i < 8192; i++) mem.write(i * 512 * 1024, page);
    const info = writeMemoryFile(join(dir, "memory"), mem);
    strictEqual(info.dataBytes, 32 * MiB);
    const allocated = Deno.statSync(join(dir, "memory")).blocks! * 512;
    ok(allocated < 40 * MiB, `allocated ${allocated} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
