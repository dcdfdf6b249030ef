import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../memory.ts";
import { E820, type E820Entry, LAYOUT, MemoryLayout } from "./layout.ts";
import { BP, buildBootParams, readE820, writeCmdline } from "./params.ts";
import {
  loadBzImage,
  type LoadedKernel,
  loadElfKernel,
  loadKernel,
  placeInitrd,
} from "./loader.ts";
import { BootImageError, parseSetupHeader } from "./setup_header.ts";
import { ElfError } from "./elf.ts";

const MiB = 1 << 20;
const GiB = 1024 * MiB;

function ramBytes(map: E820Entry[]): number {
  return map.filter((e) => e.type === E820.RAM).reduce((n, e) => n + e.size, 0);
}

Deno.test("e820: small guest — RAM below the EBDA and from 1 MiB, legacy holes reserved or absent", () => {
  const l = MemoryLayout.fromMiB(256);
  deepStrictEqual(l.e820(), [
    { addr: 0, size: 0x9fc00, type: E820.RAM },
    { addr: 0x9fc00, size: 0x400, type: E820.RESERVED },
    { addr: 0xe0000, size: 0x20000, type: E820.RESERVED },
    { addr: 0x100000, size: 256 * MiB - 0x100000, type: E820.RAM },
  ]);
  deepStrictEqual(l.ramRegions, [{ guestAddr: 0, size: 256 * MiB }]);
});

Deno.test("e820: sizes up to 64 GiB split around the 32-bit hole; nothing overlaps it", () => {
  for (const gib of [1, 2.5, 3, 3.5, 4, 8, 16, 64]) {
    const total = gib * GiB;
    const l = new MemoryLayout(total);
    const map = l.e820();
    // All RAM the guest has is in the map, minus the legacy holes (0x9fc00..0x100000).
    strictEqual(ramBytes(map), total - (0x100000 - 0x9fc00), `${gib} GiB`);
    for (const e of map) {
      const end = e.addr + e.size;
      ok(
        end <= LAYOUT.MMIO_HOLE_START || e.addr >= LAYOUT.MMIO_HOLE_END,
        `${gib} GiB: entry 0x${e.addr.toString(16)}+0x${e.size.toString(16)} overlaps the hole`,
      );
    }
    // Sorted, non-overlapping.
    for (let i = 1; i < map.length; i++) ok(map[i - 1].addr + map[i - 1].size <= map[i].addr);
    const high = map.find((e) => e.addr === 4 * GiB);
    if (total > 3 * GiB) {
      strictEqual(l.lowRamEnd, 3 * GiB);
      strictEqual(high?.size, total - 3 * GiB);
      strictEqual(l.ramEnd, total + GiB);
      deepStrictEqual(l.ramRegions, [
        { guestAddr: 0, size: 3 * GiB },
        { guestAddr: 4 * GiB, size: total - 3 * GiB },
      ]);
    } else {
      strictEqual(high, undefined);
      strictEqual(l.ramEnd, total);
    }
    // The virtio windows and the APICs are never RAM.
    for (const a of [LAYOUT.VIRTIO_MMIO_START, LAYOUT.IOAPIC_ADDR, LAYOUT.LAPIC_ADDR]) {
      ok(!map.some((e) => a >= e.addr && a < e.addr + e.size), `0x${a.toString(16)} in e820`);
    }
  }
});

Deno.test("e820: bad sizes and device indexes are refused with the value", () => {
  throws(() => MemoryLayout.fromMiB(8), /below the minimum/);
  throws(() => new MemoryLayout(64 * MiB + 1), /multiple of 4 KiB/);
  throws(() => new MemoryLayout(64 * MiB, 0x1234), /bad MMIO hole start/);
  strictEqual(MemoryLayout.virtioMmioBase(2), 0xc000_2000);
  throws(() => MemoryLayout.virtioMmioBase(-1), /out of range/);
  throws(() => MemoryLayout.virtioMmioBase(65536), /out of range/);
});

Deno.test("boot_params: fields at zero-page.rst offsets; e820 round-trips for 64 GiB", () => {
  const e820 = new MemoryLayout(64 * GiB).e820();
  const bp = buildBootParams({
    cmdline: { addr: LAYOUT.CMDLINE_START, size: 42 },
    initrd: { addr: 0x7f00_0000, size: 0x12345 },
    e820,
    rsdpAddr: LAYOUT.ACPI_START,
  });
  const dv = new DataView(bp.buffer);
  strictEqual(bp.length, 4096);
  strictEqual(dv.getUint16(BP.BOOT_FLAG, true), 0xaa55);
  strictEqual(dv.getUint32(BP.HEADER, true), 0x53726448); // "HdrS"
  strictEqual(bp[BP.TYPE_OF_LOADER], 0xff);
  strictEqual(bp[BP.LOADFLAGS] & 0x81, 0x81); // LOADED_HIGH | CAN_USE_HEAP
  strictEqual(dv.getUint32(BP.CMD_LINE_PTR, true), LAYOUT.CMDLINE_START);
  strictEqual(dv.getUint32(BP.EXT_CMD_LINE_PTR, true), 0);
  strictEqual(dv.getUint32(BP.CMDLINE_SIZE, true), 42);
  strictEqual(dv.getUint32(BP.RAMDISK_IMAGE, true), 0x7f00_0000);
  strictEqual(dv.getUint32(BP.RAMDISK_SIZE, true), 0x12345);
  strictEqual(dv.getBigUint64(BP.ACPI_RSDP_ADDR, true), BigInt(LAYOUT.ACPI_START));
  strictEqual(bp[BP.E820_ENTRIES], e820.length);
  deepStrictEqual(readE820(bp), e820);
  // The 64-bit entry above 4 GiB keeps its high half.
  strictEqual(dv.getBigUint64(BP.E820_TABLE + 20 * 4, true), 4n * BigInt(GiB));
  strictEqual(dv.getBigUint64(BP.E820_TABLE + 20 * 4 + 8, true), 61n * BigInt(GiB));
});

Deno.test("boot_params: a bzImage's setup header is copied verbatim, loader fields set over it", () => {
  const header = fakeBzImage().slice(0x1f1, 0x1f1 + 0x7b);
  const bp = buildBootParams({
    setupHeader: header,
    cmdline: { addr: 0x20000, size: 1 },
    e820: [],
  });
  strictEqual(bp[0x1f1], header[0]);
  strictEqual(new DataView(bp.buffer).getUint16(0x206, true), 0x020f);
  strictEqual(bp[BP.TYPE_OF_LOADER], 0xff);
  throws(
    () =>
      buildBootParams({
        setupHeader: new Uint8Array(0x100),
        cmdline: { addr: 0, size: 0 },
        e820: [],
      }),
    /too long/,
  );
  const many = Array.from(
    { length: 129 },
    (_, i) => ({ addr: i * 4096, size: 4096, type: E820.RAM }),
  );
  throws(
    () => buildBootParams({ cmdline: { addr: 0, size: 0 }, e820: many as E820Entry[] }),
    /129 e820 entries/,
  );
});

Deno.test("cmdline: NUL-terminated, length limit and NUL bytes refused", () => {
  using mem = RegionMemory.fromBytes(1 * MiB);
  strictEqual(writeCmdline(mem, 0x20000, "console=ttyS0", 64), 13);
  strictEqual(mem.readU8(0x20000 + 13), 0);
  throws(() => writeCmdline(mem, 0x20000, "x".repeat(64), 64), /limit is 63/);
  throws(() => writeCmdline(mem, 0x20000, "a\0b", 64), /NUL/);
});

/** A minimal bzImage: 1 setup sector, protocol 2.15, 64-bit entry, 4 KiB of protected-mode code. */
function fakeBzImage(over: (dv: DataView, b: Uint8Array) => void = () => {}): Uint8Array {
  const b = new Uint8Array(1024 + 4096);
  const dv = new DataView(b.buffer);
  b[0x1f1] = 1; // setup_sects
  dv.setUint16(0x1fe, 0xaa55, true);
  b[0x200] = 0xeb; // jmp short
  b[0x201] = 0x6a; // header ends at 0x26c
  dv.setUint32(0x202, 0x53726448, true);
  dv.setUint16(0x206, 0x020f, true);
  b[0x211] = 0x01;
  dv.setUint32(0x214, 0x100000, true);
  dv.setUint32(0x22c, 0x37ffffff, true); // initrd_addr_max
  dv.setUint32(0x230, 0x200000, true);
  b[0x234] = 1;
  dv.setUint16(0x236, 0x01, true); // XLF_KERNEL_64
  dv.setUint32(0x238, 2047, true);
  dv.setUint32(0x248, 0x100, true);
  dv.setUint32(0x24c, 0x200, true);
  dv.setUint32(0x260, 0x8000, true); // init_size
  b.fill(0xcc, 1024);
  over(dv, b);
  return b;
}

Deno.test("setup header: a good bzImage parses and loads at 1 MiB with entry +0x200", () => {
  const img = fakeBzImage();
  const h = parseSetupHeader(img);
  strictEqual(h.version, 0x020f);
  strictEqual(h.protectedModeOffset, 1024);
  strictEqual(h.headerLength, 0x7b);
  using mem = RegionMemory.fromBytes(64 * MiB);
  const k = loadKernel(mem, img);
  strictEqual(k.format, "bzimage");
  strictEqual(k.entry, 0x100200);
  strictEqual(k.end, 0x100000 + 0x8000); // init_size beyond the file
  strictEqual(mem.readU8(0x100000), 0xcc);
  strictEqual(k.initrdAddrMax, 0x37ffffff);
});

Deno.test("setup header: each bad field gives an error naming it and its value", () => {
  const cases: [string, (dv: DataView, b: Uint8Array) => void, RegExp][] = [
    ["boot flag", (dv) => dv.setUint16(0x1fe, 0x1234, true), /boot_flag .* 0x1234/],
    ["magic", (dv) => dv.setUint32(0x202, 0, true), /header magic .* 0x0/],
    ["protocol", (dv) => dv.setUint16(0x206, 0x020a, true), /protocol 2\.10 is too old/],
    ["xloadflags", (dv) => dv.setUint16(0x236, 0, true), /lacks XLF_KERNEL_64/],
    ["setup_sects", (_dv, b) => (b[0x1f1] = 200), /setup_sects 200/],
    ["payload", (dv) => dv.setUint32(0x24c, 0x100000, true), /payload .* lies outside/],
  ];
  for (const [what, edit, re] of cases) {
    throws(() => parseSetupHeader(fakeBzImage(edit), "k"), (e: unknown) => {
      ok(e instanceof BootImageError, what);
      ok(re.test((e as Error).message), `${what}: ${(e as Error).message}`);
      return true;
    });
  }
  throws(() => parseSetupHeader(new Uint8Array(100)), /too short/);
  using mem = RegionMemory.fromBytes(64 * MiB);
  throws(() => loadKernel(mem, new Uint8Array(4096)), /neither an ELF vmlinux nor a bzImage/);
  using small = RegionMemory.fromBytes(1 * MiB + 0x1000);
  throws(() => loadBzImage(small, fakeBzImage()), /init_size.*more memory/);
});

/** A minimal ELF64 x86-64 EXEC with one PT_LOAD at paddr 16 MiB (filesz 16, memsz 64). */
function fakeElf(machine = 62, paddr = 16 * MiB): Uint8Array {
  const b = new Uint8Array(0x100);
  const dv = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true);
  dv.setUint16(18, machine, true);
  dv.setBigUint64(24, BigInt(paddr + 0x10), true); // physical entry
  dv.setBigUint64(32, 64n, true); // phoff
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  dv.setUint32(64, 1, true); // PT_LOAD
  dv.setBigUint64(64 + 8, 0xc0n, true); // offset
  dv.setBigUint64(64 + 16, 0xffffffff81000000n, true); // vaddr
  dv.setBigUint64(64 + 24, BigInt(paddr), true);
  dv.setBigUint64(64 + 32, 16n, true);
  dv.setBigUint64(64 + 40, 64n, true);
  b.fill(0xab, 0xc0, 0xd0);
  return b;
}

Deno.test("vmlinux: loaded by program headers, bss zeroed, physical entry; bad ELFs refused", () => {
  using mem = RegionMemory.fromBytes(32 * MiB);
  mem.slice(16 * MiB, 64).fill(0x55);
  const k = loadElfKernel(mem, fakeElf());
  strictEqual(k.entry, 16 * MiB + 0x10);
  deepStrictEqual([k.start, k.end], [16 * MiB, 16 * MiB + 64]);
  strictEqual(mem.readU8(16 * MiB), 0xab);
  strictEqual(mem.readU8(16 * MiB + 16), 0); // memsz beyond filesz is zeroed
  throws(
    () => loadElfKernel(mem, fakeElf(3)),
    (e: unknown) => e instanceof ElfError && /not x86-64/.test((e as Error).message),
  );
  throws(() => loadElfKernel(mem, fakeElf(62, 64 * MiB)), /does not fit in guest RAM/);
});

Deno.test("initrd: page-aligned at the top of RAM under initrd_addr_max and above the kernel", () => {
  using mem = RegionMemory.fromBytes(1024 * MiB);
  const kernel = { end: 32 * MiB, initrdAddrMax: 0x37ffffff } as LoadedKernel;
  const initrd = new Uint8Array(3 * MiB + 5).fill(7);
  const addr = placeInitrd(mem, initrd, kernel, 1024 * MiB);
  strictEqual(addr % 4096, 0);
  ok(addr + initrd.length <= 0x38000000, `0x${addr.toString(16)} crosses initrd_addr_max`);
  ok(addr + initrd.length > 0x38000000 - 4096 - 4096);
  strictEqual(mem.readU8(addr + initrd.length - 1), 7);
  // Low RAM below initrd_addr_max: the top of RAM bounds it.
  const low = placeInitrd(mem, initrd, { ...kernel, initrdAddrMax: 0xffffffff }, 512 * MiB);
  ok(low + initrd.length <= 512 * MiB);
  throws(() => placeInitrd(mem, new Uint8Array(600 * MiB), kernel, 512 * MiB), /does not fit/);
});
