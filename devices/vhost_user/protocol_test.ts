// L0: vhost-user memory tables are checked before anything is mapped.
import { deepStrictEqual, doesNotThrow, throws } from "node:assert/strict";
import { type MemRegionDesc, readMemTable, validateMemTable } from "./protocol.ts";

function region(guest: bigint, size: bigint, user: bigint, off = 0n): MemRegionDesc {
  return { guestPhysAddr: guest, memorySize: size, userspaceAddr: user, mmapOffset: off };
}

Deno.test("vhost-user: SET_MEM_TABLE payload parses into regions", () => {
  const p = new Uint8Array(8 + 32);
  const v = new DataView(p.buffer);
  v.setUint32(0, 1, true);
  v.setBigUint64(8, 0x1000n, true);
  v.setBigUint64(16, 0x2000n, true);
  v.setBigUint64(24, 0x7f00_0000_0000n, true);
  v.setBigUint64(32, 0x40n, true);
  deepStrictEqual(readMemTable(p), [region(0x1000n, 0x2000n, 0x7f00_0000_0000n, 0x40n)]);
  throws(() => readMemTable(p.subarray(0, 20)), /1 regions in 20 bytes/);
});

Deno.test("vhost-user: memory tables with empty, overflowing or overlapping regions are refused", () => {
  const G = 1n << 30n;
  doesNotThrow(() =>
    validateMemTable([region(0n, G, 0x7f00_0000_0000n), region(4n * G, G, 0x7f80_0000_0000n)])
  );
  throws(() => validateMemTable([region(0n, 0n, 0n)]), /region 0 .* is empty/);
  throws(() => validateMemTable([region(1n << 53n, G, 0n)]), /ends above 2\^53/);
  throws(() => validateMemTable([region(0n, G, 0n, 1n << 53n)]), /mmap offset/);
  throws(() => validateMemTable([region(0n, G, (1n << 64n) - 4096n)]), /wraps/);
  throws(
    () => validateMemTable([region(0n, 2n * G, 0x10_0000_0000n), region(G, G, 0x20_0000_0000n)]),
    /region 1 .* overlaps region 0 in guest-physical space/,
  );
  throws(
    () => validateMemTable([region(0n, G, 0x10_0000_0000n), region(2n * G, G, 0x10_0000_1000n)]),
    /overlaps region 0 in front-end address space/,
  );
});
