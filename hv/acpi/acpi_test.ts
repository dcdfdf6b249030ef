import { deepStrictEqual, match, ok, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../memory.ts";
import { LAYOUT } from "../boot/layout.ts";
import * as aml from "./aml.ts";
import {
  buildAcpiTables,
  buildMadt,
  byteSum,
  FADT_FLAGS,
  FADT_SIZE,
  virtioDeviceName,
  writeAcpiTables,
} from "./tables.ts";
import { isPowerOff } from "../../devices/legacy/acpi_sleep.ts";

const u32 = (b: Uint8Array, off: number) =>
  new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
const u64 = (b: Uint8Array, off: number) =>
  Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(off, true));

Deno.test("aml: PkgLength uses 1–4 bytes and counts itself (ACPI 6.5 §20.2.4)", () => {
  deepStrictEqual([...aml.pkgLength(0)], [1]);
  deepStrictEqual([...aml.pkgLength(62)], [63]);
  // 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x40 | 0x1, next byte 0x41 >> 4 = 4.
  deepStrictEqual([...aml.pkgLength(63)], [0x41, 0x04]);
  deepStrictEqual([...aml.pkgLength(0xffd)], [0x4f, 0xff]); // 0xfff, the largest 2-byte value
  deepStrictEqual([...aml.pkgLength(0xffe)], [0x81, 0x00, 0x01]); // 0x1001
  throws(() => aml.pkgLength(2 ** 28), /2\^28/);
});

Deno.test("aml: integers take the shortest encoding; names are validated", () => {
  deepStrictEqual([...aml.integer(0)], [0x00]);
  deepStrictEqual([...aml.integer(1)], [0x01]);
  deepStrictEqual([...aml.integer(5)], [0x0a, 5]);
  deepStrictEqual([...aml.integer(0x1234)], [0x0b, 0x34, 0x12]);
  deepStrictEqual([...aml.integer(0xc0000000)], [0x0c, 0, 0, 0, 0xc0]);
  deepStrictEqual([...aml.integer(2 ** 32)], [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  deepStrictEqual([...aml.nameString("\\_SB")], [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  deepStrictEqual([...aml.nameString("A.B")].slice(0, 1), [0x2e]);
  deepStrictEqual([...aml.nameString("A.B.C")].slice(0, 2), [0x2f, 3]);
  throws(() => aml.nameSeg("lower"), /bad AML name segment/);
  throws(() => aml.nameSeg("1ABC"), /bad AML name segment/);
  throws(() => aml.string("é"), /not plain ASCII/);
  throws(() => aml.integer(-1), /out of range/);
});

Deno.test("aml: resource descriptors (ACPI 6.5 §6.4.3.4, §6.4.3.6)", () => {
  deepStrictEqual(
    [...aml.memory32Fixed(0xc0000000, 0x200)],
    [0x86, 9, 0, 1, 0, 0, 0, 0xc0, 0, 2, 0, 0],
  );
  // consumer | edge, active high, exclusive; one interrupt, GSI 5.
  deepStrictEqual(
    [...aml.extendedInterrupt([5], { edge: true, activeLow: false })],
    [0x89, 6, 0, 0x03, 1, 5, 0, 0, 0],
  );
  deepStrictEqual(
    aml.extendedInterrupt([9], { edge: false, activeLow: true, shared: true })[3],
    0x0d,
  );
  throws(() => aml.memory32Fixed(2 ** 32, 1), /32 bits/);
  const rt = aml.resourceTemplate([aml.memory32Fixed(0x1000, 0x10)]);
  strictEqual(rt[0], 0x11); // BufferOp
  deepStrictEqual([...rt.subarray(-2)], [0x79, 0]); // End Tag
});

const opts = {
  cpus: 3,
  virtio: [{ base: 0xc0000000, gsi: 5 }, { base: 0xc0001000, gsi: 6 }],
};

Deno.test("acpi: every table's checksum is valid and the RSDP has both", () => {
  const t = buildAcpiTables(opts);
  strictEqual(t.rsdpAddr, LAYOUT.ACPI_START);
  for (const x of t.tables) {
    if (x.signature === "RSD PTR ") {
      strictEqual(byteSum(x.bytes.subarray(0, 20)), 0, "RSDP checksum (first 20 bytes)");
      strictEqual(byteSum(x.bytes), 0, "RSDP extended checksum");
      strictEqual(x.bytes[15], 2);
      strictEqual(u64(x.bytes, 24), t.tables[1].addr);
    } else {
      strictEqual(byteSum(x.bytes), 0, `${x.signature} checksum`);
      strictEqual(u32(x.bytes, 4), x.bytes.length, `${x.signature} length`);
      strictEqual(new TextDecoder().decode(x.bytes.subarray(0, 4)), x.signature);
    }
    strictEqual(x.addr % 16, 0);
    ok(x.addr >= LAYOUT.ACPI_START && x.addr + x.bytes.length <= LAYOUT.ACPI_END);
    deepStrictEqual(t.image.subarray(x.addr - t.addr, x.addr - t.addr + x.bytes.length), x.bytes);
  }
  // Corrupting any byte breaks the sum.
  const fadt = t.tables.find((x) => x.signature === "FACP")!.bytes.slice();
  fadt[50] ^= 1;
  ok(byteSum(fadt) !== 0);
});

Deno.test("acpi: XSDT lists FADT and MADT; FADT is hardware-reduced and points at the DSDT", () => {
  const t = buildAcpiTables(opts);
  const by = (s: string) => t.tables.find((x) => x.signature === s)!;
  const xsdt = by("XSDT").bytes;
  deepStrictEqual([u64(xsdt, 36), u64(xsdt, 44)], [by("FACP").addr, by("APIC").addr]);
  const fadt = by("FACP").bytes;
  strictEqual(fadt.length, FADT_SIZE);
  ok(u32(fadt, 112) & FADT_FLAGS.HW_REDUCED_ACPI);
  strictEqual(u32(fadt, 40), by("DSDT").addr);
  strictEqual(u64(fadt, 140), by("DSDT").addr);
  // SLEEP_CONTROL_REG / SLEEP_STATUS_REG: SystemIO, 8 bits, at 0x600 and 0x601.
  deepStrictEqual([fadt[244], fadt[245], u64(fadt, 248)], [1, 8, LAYOUT.SLEEP_PORT]);
  deepStrictEqual([fadt[256], fadt[257], u64(fadt, 260)], [1, 8, LAYOUT.SLEEP_PORT + 1]);
});

Deno.test("acpi: MADT has a local APIC per vCPU, the IOAPIC and the overrides", () => {
  const m = buildMadt({
    cpus: 2,
    lapicAddr: LAYOUT.LAPIC_ADDR,
    ioapicAddr: LAYOUT.IOAPIC_ADDR,
    ioapicId: 0,
    overrides: [{ source: 0, gsi: 2, flags: 0 }],
  });
  strictEqual(u32(m, 36), LAYOUT.LAPIC_ADDR);
  deepStrictEqual([...m.subarray(44, 52)], [0, 8, 0, 0, 1, 0, 0, 0]);
  deepStrictEqual([...m.subarray(52, 60)], [0, 8, 1, 1, 1, 0, 0, 0]);
  deepStrictEqual([m[60], m[61], u32(m, 64), u32(m, 68)], [1, 12, LAYOUT.IOAPIC_ADDR, 0]);
  deepStrictEqual([...m.subarray(72, 82)], [2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
  strictEqual(byteSum(m), 0);
  throws(
    () => buildMadt({ cpus: 0, lapicAddr: 0, ioapicAddr: 0, ioapicId: 0, overrides: [] }),
    /vCPUs/,
  );
});

Deno.test("acpi: bad inputs give clear errors; tables land in guest memory", () => {
  throws(() => buildAcpiTables({ cpus: 1, virtio: [{ base: 0xc0000000, gsi: 24 }] }), /GSI 24/);
  throws(() => buildAcpiTables({ ...opts, maxSize: 64 }), /only 64 are reserved/);
  throws(() => virtioDeviceName(4096), /out of range/);
  strictEqual(virtioDeviceName(26), "V01A");
  using mem = RegionMemory.fromBytes(2 << 20);
  const t = writeAcpiTables(mem, opts);
  match(new TextDecoder().decode(mem.slice(t.rsdpAddr, 8)), /^RSD PTR $/);
});

Deno.test("acpi sleep: only SLP_EN with SLP_TYP 5 is a power-off (ACPI 6.5 §4.8.3.7)", () => {
  strictEqual(isPowerOff(0x20 | (5 << 2)), true);
  strictEqual(isPowerOff(5 << 2), false); // SLP_EN missing
  strictEqual(isPowerOff(0x20 | (3 << 2)), false); // S3 not offered
  strictEqual(isPowerOff(0x80), false);
});
