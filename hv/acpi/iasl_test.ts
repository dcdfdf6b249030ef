/**
 * L3: the tables skiff builds, checked by ACPICA's own tools (`iasl`,
 * Debian acpica-tools): every SDT disassembles without errors or checksum
 * complaints, the disassembled DSDT declares exactly the devices skiff
 * asked for, and the RSDP is byte-identical to what iasl's data-table
 * compiler produces for the same field values.
 */

import { deepStrictEqual, doesNotMatch, match, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { buildAcpiTables } from "./tables.ts";

async function iasl(cwd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command("iasl", { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

const virtio = [
  { base: 0xc000_0000, gsi: 5 },
  { base: 0xc000_1000, gsi: 6 },
  { base: 0xc000_2000, gsi: 7 },
];

/** Device name, Memory32Fixed base/length, interrupt line and flags, from a disassembled DSDT. */
function devicesOf(dsl: string) {
  const out: {
    name: string;
    hid: string;
    uid: number;
    base: number;
    len: number;
    irq: number;
    flags: string;
  }[] = [];
  const re =
    /Device \((\w+)\)\s*\{\s*Name \(_HID, "(\w+)"\)[^\n]*\n\s*Name \(_UID, (\w+)\)[\s\S]*?Memory32Fixed \(ReadWrite,\s*0x([0-9A-F]+),[^\n]*\n\s*0x([0-9A-F]+),[\s\S]*?Interrupt \(([^)]*)\)\s*\{\s*0x([0-9A-F]+),/g;
  for (const m of dsl.matchAll(re)) {
    const uid = m[3] === "Zero" ? 0 : m[3] === "One" ? 1 : Number(m[3]);
    out.push({
      name: m[1],
      hid: m[2],
      uid,
      base: parseInt(m[4], 16),
      len: parseInt(m[5], 16),
      flags: m[6].replace(/[\s,]+$/, ""),
      irq: parseInt(m[7], 16),
    });
  }
  return out;
}

hostTest(
  "acpi: iasl -d disassembles every table; the DSDT declares skiff's devices",
  ["iasl"],
  async () => {
    const t = buildAcpiTables({ cpus: 4, virtio });
    const dir = await Deno.makeTempDir({ prefix: "skiff-acpi-" });
    try {
      const files: string[] = [];
      for (const x of t.tables) {
        if (x.signature === "RSD PTR ") continue;
        const f = `${x.signature.toLowerCase()}.dat`;
        await Deno.writeFile(join(dir, f), x.bytes);
        files.push(f);
      }
      for (const f of files) {
        const r = await iasl(dir, ["-d", f]);
        strictEqual(r.code, 0, `iasl -d ${f} failed:\n${r.out}`);
        doesNotMatch(r.out, /\bError\b|does not contain a valid ACPI table/i, r.out);
        const dsl = await Deno.readTextFile(join(dir, f.replace(".dat", ".dsl")));
        doesNotMatch(dsl, /Incorrect checksum|Invalid|Unknown/i, `${f}:\n${dsl}`);
      }
      const dsdt = await Deno.readTextFile(join(dir, "dsdt.dsl"));
      deepStrictEqual(
        devicesOf(dsdt),
        virtio.map((d, i) => ({
          name: `V00${i}`,
          hid: "LNRO0005",
          uid: i,
          base: d.base,
          len: 0x200,
          irq: d.gsi,
          flags: "ResourceConsumer, Edge, ActiveHigh, Exclusive",
        })),
        dsdt,
      );
      match(dsdt, /Name \(\\_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*0x05,\s*Zero,\s*Zero\s*\}/);
      // Recompiling the disassembly must work too (the AML is well-formed end to end).
      const rc = await iasl(dir, ["-p", "recompiled", "dsdt.dsl"]);
      strictEqual(rc.code, 0, rc.out);

      const fadt = await Deno.readTextFile(join(dir, "facp.dsl"));
      match(fadt, /Hardware Reduced \(V5\) : 1/);
      match(
        fadt,
        /Sleep Control Register : \[Generic Address Structure\]\s*\n[^\n]*Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000600/,
      );
      match(
        fadt,
        /Sleep Status Register : \[Generic Address Structure\]\s*\n[^\n]*Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000601/,
      );
      const dsdtAddr = t.tables.find((x) => x.signature === "DSDT")!.addr;
      match(fadt, new RegExp(`DSDT Address : 0*${dsdtAddr.toString(16).toUpperCase()}\\b`));

      const madt = await Deno.readTextFile(join(dir, "apic.dsl"));
      strictEqual([...madt.matchAll(/Subtable Type : 00 \[Processor Local APIC\]/g)].length, 4);
      match(madt, /Subtable Type : 01 \[I\/O APIC\][\s\S]*?Address : FEC00000/);

      const xsdt = await Deno.readTextFile(join(dir, "xsdt.dsl"));
      const ptrs = [...xsdt.matchAll(/ACPI Table Address\s+\d+ : ([0-9A-F]+)/g)].map((m) =>
        parseInt(m[1], 16)
      );
      deepStrictEqual(
        ptrs,
        ["FACP", "APIC"].map((s) => t.tables.find((x) => x.signature === s)!.addr),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest(
  "acpi: the RSDP equals iasl's data-table compilation of the same fields",
  ["iasl"],
  async () => {
    const t = buildAcpiTables({ cpus: 1, virtio: [] });
    const rsdp = t.tables[0].bytes;
    const xsdtAddr = t.tables[1].addr;
    const dir = await Deno.makeTempDir({ prefix: "skiff-rsdp-" });
    try {
      // Checksums are left 00: the compiler computes them.
      const asl = [
        '[0008]                          Signature : "RSD PTR "',
        "[0001]                           Checksum : 00",
        '[0006]                             Oem ID : "SKIFF "',
        "[0001]                           Revision : 02",
        "[0004]                       RSDT Address : 00000000",
        "[0004]                             Length : 00000024",
        `[0008]                       XSDT Address : ${xsdtAddr.toString(16).padStart(16, "0")}`,
        "[0001]                  Extended Checksum : 00",
        "[0003]                           Reserved : 000000",
        "",
      ].join("\n");
      await Deno.writeTextFile(join(dir, "rsdp.asl"), asl);
      const r = await iasl(dir, ["rsdp.asl"]);
      strictEqual(r.code, 0, r.out);
      deepStrictEqual([...await Deno.readFile(join(dir, "rsdp.aml"))], [...rsdp]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
