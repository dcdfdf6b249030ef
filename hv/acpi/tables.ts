/**
 * ACPI tables for skiff's guests (ACPI 6.5 §5.2): RSDP, XSDT, FADT
 * (hardware-reduced), MADT and a DSDT whose AML declares each virtio-mmio
 * device and the `_S5` sleep package — what Firecracker and QEMU `microvm`
 * give a Linux guest. {@link buildAcpiTables} lays them out at one guest
 * address (by default {@link LAYOUT.ACPI_START}, inside the BIOS RSDP scan
 * range 0xE0000–0xFFFFF) and returns the bytes and where each table sits.
 *
 * @module
 */

import type { GuestMemory } from "../memory.ts";
import { LAYOUT } from "../boot/layout.ts";
import * as aml from "./aml.ts";

/** OEM ID written into every table header (6 bytes). */
export const OEM_ID = "SKIFF ";
/** Creator ID of the tables (4 bytes). */
export const CREATOR_ID = "SKIF";
/** SDT header size (§5.2.6, Table 5.4). */
export const HEADER_SIZE = 36;
/** RSDP size for revision 2 (§5.2.5.3, Table 5.3). */
export const RSDP_SIZE = 36;
/** FADT size for revision 6 (§5.2.9, Table 5.9: up to Hypervisor Vendor Identity). */
export const FADT_SIZE = 276;
/** FADT revision / minor version (ACPI 6.5). */
export const FADT_REVISION = 6;
export const FADT_MINOR = 5;

/** FADT flag bits (§5.2.9, Table 5.10). */
export const FADT_FLAGS = {
  /** Bit 8: the power button is not a fixed-feature button. */
  PWR_BUTTON: 1 << 8,
  /** Bit 9: no fixed-feature sleep button. */
  SLP_BUTTON: 1 << 9,
  /** Bit 20: HW_REDUCED_ACPI — no fixed hardware (PM1 blocks, PM timer, GPEs, SCI). */
  HW_REDUCED_ACPI: 1 << 20,
} as const;

/** FADT IA-PC boot architecture flags (§5.2.9.3, Table 5.11). */
export const IAPC_BOOT_ARCH = {
  /** Bit 2: VGA Not Present. */
  VGA_NOT_PRESENT: 1 << 2,
  /** Bit 3: MSI Not Supported. */
  MSI_NOT_SUPPORTED: 1 << 3,
  /** Bit 4: PCIe ASPM Controls — OSPM must not enable ASPM. */
  PCIE_ASPM_CONTROLS: 1 << 4,
  /** Bit 5: CMOS RTC Not Present. */
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/**
 * Sleep control register bits (§4.8.3.7, Table 4.19): SLP_TYPx in bits 4:2,
 * SLP_EN in bit 5. The status register's WAK_STS is bit 7 (Table 4.20).
 */
export const SLEEP = {
  SLP_TYP_SHIFT: 2,
  SLP_TYP_MASK: 0x1c,
  SLP_EN: 0x20,
  WAK_STS: 0x80,
  /** SLP_TYP value skiff's `_S5` package declares (any 3-bit value works; 5 reads as "S5"). */
  S5_TYPE: 5,
} as const;

/** MADT interrupt controller structure types (§5.2.12, Table 5.21). */
export const MADT_TYPE = { LOCAL_APIC: 0, IO_APIC: 1, INTERRUPT_SOURCE_OVERRIDE: 2 } as const;

/** Generic Address Structure address space ID of system I/O (§5.2.3.2, Table 5.2). */
export const GAS_SYSTEM_IO = 1;

/** A virtio-mmio device to declare in the DSDT. */
export interface AcpiVirtioDevice {
  /** Window base (guest-physical, below 4 GiB). */
  base: number;
  /** Window size declared in `_CRS` (default LAYOUT.VIRTIO_MMIO_SIZE). */
  size?: number;
  /** GSI (IOAPIC pin). */
  gsi: number;
}

/** An ISA interrupt source override (§5.2.12.5). */
export interface InterruptOverride {
  /** ISA IRQ. */
  source: number;
  /** GSI it is wired to. */
  gsi: number;
  /** MPS INTI flags (Table 5.26): polarity bits 1:0, trigger bits 3:2; 0 = bus default. */
  flags: number;
}

/** Inputs of {@link buildAcpiTables}. */
export interface AcpiOptions {
  /** Number of vCPUs: one Processor Local APIC each (APIC ID = UID = index). */
  cpus: number;
  /** virtio-mmio devices, in `_UID` order (device `i` is `\_SB.V{i:03x}` with `_UID` i). */
  virtio: readonly AcpiVirtioDevice[];
  /** Guest-physical address where the tables start (default LAYOUT.ACPI_START). */
  addr?: number;
  /** Bytes available there (default up to LAYOUT.ACPI_END). */
  maxSize?: number;
  /** Port of the sleep control register; the status register is the next port. */
  sleepPort?: number;
  /**
   * Interrupt source overrides. Default none, as Firecracker (its MADT holds
   * the IOAPIC and one local APIC per vCPU, nothing else): KVM's default GSI
   * routing wires GSI n to IOAPIC pin n, which is the identity mapping Linux
   * assumes for ISA IRQs without overrides.
   */
  overrides?: readonly InterruptOverride[];
  /** IOAPIC address (default LAYOUT.IOAPIC_ADDR) and ID (default 0). */
  ioapicAddr?: number;
  ioapicId?: number;
  /** Local APIC address (default LAYOUT.LAPIC_ADDR). */
  lapicAddr?: number;
}

/** One table as placed. */
export interface PlacedTable {
  /** Signature ("RSD PTR " for the RSDP). */
  signature: string;
  addr: number;
  bytes: Uint8Array;
}

/** The laid-out tables. */
export interface AcpiTables {
  /** Where the RSDP is (boot_params.acpi_rsdp_addr). */
  rsdpAddr: number;
  /** First byte and the whole image to copy there. */
  addr: number;
  image: Uint8Array;
  /** Each table with its address, RSDP first. */
  tables: PlacedTable[];
}

/** The byte that makes `bytes` sum to 0 mod 256 when stored in the checksum field. */
export function checksum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return (0x100 - s) & 0xff;
}

/** Sum of `bytes` mod 256 (0 for a valid table). */
export function byteSum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

function ascii(out: Uint8Array, off: number, s: string, len: number): void {
  for (let i = 0; i < len; i++) out[off + i] = i < s.length ? s.charCodeAt(i) : 0x20;
}

/** A System Description Table: the §5.2.6 header around `body`, checksummed. */
export function sdt(signature: string, revision: number, oemTableId: string, body: Uint8Array) {
  const t = new Uint8Array(HEADER_SIZE + body.length);
  const dv = new DataView(t.buffer);
  ascii(t, 0, signature, 4);
  dv.setUint32(4, t.length, true);
  t[8] = revision;
  ascii(t, 10, OEM_ID, 6);
  ascii(t, 16, oemTableId, 8);
  dv.setUint32(24, 1, true); // OEM revision
  ascii(t, 28, CREATOR_ID, 4);
  dv.setUint32(32, 1, true); // creator revision
  t.set(body, HEADER_SIZE);
  t[9] = checksum(t);
  return t;
}

/** Generic Address Structure (§5.2.3.2): 12 bytes. */
function gas(
  out: DataView,
  off: number,
  space: number,
  bits: number,
  accessSize: number,
  addr: number,
) {
  out.setUint8(off, space);
  out.setUint8(off + 1, bits);
  out.setUint8(off + 2, 0);
  out.setUint8(off + 3, accessSize); // 1 = byte access
  out.setBigUint64(off + 4, BigInt(addr), true);
}

/** The RSDP, revision 2 (§5.2.5.3): both checksums set, RSDT address 0. */
export function buildRsdp(xsdtAddr: number): Uint8Array {
  const r = new Uint8Array(RSDP_SIZE);
  const dv = new DataView(r.buffer);
  ascii(r, 0, "RSD PTR ", 8);
  ascii(r, 9, OEM_ID, 6);
  r[15] = 2; // revision: ACPI 2.0+ (XSDT)
  dv.setUint32(20, RSDP_SIZE, true);
  dv.setBigUint64(24, BigInt(xsdtAddr), true);
  r[8] = checksum(r.subarray(0, 20)); // covers the ACPI 1.0 part
  r[32] = checksum(r); // extended checksum: the whole structure
  return r;
}

/** The XSDT (§5.2.8): 64-bit pointers to the other tables (not the DSDT). */
export function buildXsdt(entries: readonly number[]): Uint8Array {
  const body = new Uint8Array(8 * entries.length);
  const dv = new DataView(body.buffer);
  entries.forEach((a, i) => dv.setBigUint64(8 * i, BigInt(a), true));
  return sdt("XSDT", 1, "SKIFXSDT", body);
}

/**
 * The FADT (§5.2.9), revision 6.5, hardware-reduced (§4.1): no PM blocks,
 * timer or SCI; SLEEP_CONTROL_REG and SLEEP_STATUS_REG are the byte ports
 * `sleepPort` and `sleepPort + 1`; X_DSDT and DSDT point at the DSDT.
 */
export function buildFadt(dsdtAddr: number, sleepPort: number): Uint8Array {
  const body = new Uint8Array(FADT_SIZE - HEADER_SIZE);
  const dv = new DataView(body.buffer);
  const at = (off: number) => off - HEADER_SIZE; // offsets below are from Table 5.9
  if (dsdtAddr <= 0xffff_ffff) dv.setUint32(at(40), dsdtAddr, true); // DSDT
  dv.setUint16(
    at(109),
    // As Firecracker (no VGA, no MSI, no ASPM), plus no CMOS RTC: skiff emulates none at 0x70.
    IAPC_BOOT_ARCH.VGA_NOT_PRESENT | IAPC_BOOT_ARCH.MSI_NOT_SUPPORTED |
      IAPC_BOOT_ARCH.PCIE_ASPM_CONTROLS | IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT,
    true,
  );
  dv.setUint32(
    at(112),
    FADT_FLAGS.HW_REDUCED_ACPI | FADT_FLAGS.PWR_BUTTON | FADT_FLAGS.SLP_BUTTON,
    true,
  );
  body[at(131)] = FADT_MINOR;
  dv.setBigUint64(at(140), BigInt(dsdtAddr), true); // X_DSDT
  gas(dv, at(244), GAS_SYSTEM_IO, 8, 1, sleepPort); // SLEEP_CONTROL_REG
  gas(dv, at(256), GAS_SYSTEM_IO, 8, 1, sleepPort + 1); // SLEEP_STATUS_REG
  // Hypervisor Vendor Identity (offset 268) stays 0.
  return sdt("FACP", FADT_REVISION, "SKIFFACP", body);
}

/** The MADT (§5.2.12): a Processor Local APIC per vCPU, one I/O APIC, the overrides. */
export function buildMadt(o: {
  cpus: number;
  lapicAddr: number;
  ioapicAddr: number;
  ioapicId: number;
  overrides: readonly InterruptOverride[];
}): Uint8Array {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > 255) {
    throw new RangeError(`MADT: ${o.cpus} vCPUs (xAPIC IDs allow 1–255)`);
  }
  const body = new Uint8Array(8 + 8 * o.cpus + 12 + 10 * o.overrides.length);
  const dv = new DataView(body.buffer);
  dv.setUint32(0, o.lapicAddr, true); // Local Interrupt Controller Address
  dv.setUint32(4, 0, true); // Flags: no PCAT_COMPAT (no dual 8259 set-up expected)
  let off = 8;
  for (let i = 0; i < o.cpus; i++) {
    body[off] = MADT_TYPE.LOCAL_APIC; // §5.2.12.2, Table 5.22
    body[off + 1] = 8;
    body[off + 2] = i; // ACPI Processor UID
    body[off + 3] = i; // APIC ID (KVM: the vCPU id)
    dv.setUint32(off + 4, 1, true); // Enabled
    off += 8;
  }
  body[off] = MADT_TYPE.IO_APIC; // §5.2.12.3, Table 5.24
  body[off + 1] = 12;
  body[off + 2] = o.ioapicId;
  dv.setUint32(off + 4, o.ioapicAddr, true);
  dv.setUint32(off + 8, 0, true); // Global System Interrupt Base
  off += 12;
  for (const iso of o.overrides) {
    body[off] = MADT_TYPE.INTERRUPT_SOURCE_OVERRIDE; // §5.2.12.5, Table 5.25
    body[off + 1] = 10;
    body[off + 2] = 0; // Bus: ISA
    body[off + 3] = iso.source;
    dv.setUint32(off + 4, iso.gsi, true);
    dv.setUint16(off + 8, iso.flags, true);
    off += 10;
  }
  return sdt("APIC", 6, "SKIFMADT", body);
}

/** The ACPI name of virtio device `index` in `\_SB` (V000…VFFF). */
export function virtioDeviceName(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index > 0xfff) {
    throw new RangeError(`virtio device index ${index} out of range 0–4095`);
  }
  return "V" + index.toString(16).toUpperCase().padStart(3, "0");
}

/**
 * The DSDT's AML: `\_SB.Vnnn` per virtio-mmio device — `_HID "LNRO0005"`
 * (the ID Linux's virtio_mmio driver matches), `_UID`, `_CCA` (DMA is cache
 * coherent) and `_CRS` with Memory32Fixed and an edge-triggered, active-high,
 * exclusive interrupt. That is Firecracker's choice (QEMU `microvm` declares
 * Level): skiff pulses the line for each interrupt, and Linux's vm_interrupt
 * reads and acknowledges InterruptStatus on every edge —
 * and `\_S5` = Package {5, 5, 0, 0} (§7.4.2.5: SLP_TYPa, SLP_TYPb, reserved).
 */
export function dsdtAml(devices: readonly AcpiVirtioDevice[]): Uint8Array {
  return aml.concat([
    aml.scope("\\_SB", virtioDevicesAml(devices)),
    aml.name(
      "\\_S5",
      aml.pkg([
        aml.integer(SLEEP.S5_TYPE),
        aml.integer(SLEEP.S5_TYPE),
        aml.integer(0),
        aml.integer(0),
      ]),
    ),
  ]);
}

/** One `Device (Vnnn)` term per virtio-mmio device (device `i` gets `_UID` i); see {@link dsdtAml}. */
export function virtioDevicesAml(devices: readonly AcpiVirtioDevice[]): Uint8Array[] {
  return devices.map((d, i) =>
    aml.device(virtioDeviceName(i), [
      aml.name("_HID", aml.string("LNRO0005")),
      aml.name("_UID", aml.integer(i)),
      aml.name("_CCA", aml.integer(1)),
      aml.name(
        "_CRS",
        aml.resourceTemplate([
          aml.memory32Fixed(d.base, d.size ?? LAYOUT.VIRTIO_MMIO_SIZE),
          aml.extendedInterrupt([d.gsi], { edge: true, activeLow: false }),
        ]),
      ),
    ])
  );
}

/** The DSDT (§5.2.11.1), revision 2 (64-bit AML integers). */
export function buildDsdt(devices: readonly AcpiVirtioDevice[]): Uint8Array {
  return sdt("DSDT", 2, "SKIFDSDT", dsdtAml(devices));
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * Builds and lays out every table: RSDP at `addr`, then XSDT, FADT, MADT and
 * DSDT, each 16-byte aligned. Throws when they do not fit in `maxSize`.
 */
export function buildAcpiTables(o: AcpiOptions): AcpiTables {
  const base = o.addr ?? LAYOUT.ACPI_START;
  const max = o.maxSize ?? (LAYOUT.ACPI_END - base);
  const sleepPort = o.sleepPort ?? LAYOUT.SLEEP_PORT;
  o.virtio.forEach((d, i) => {
    if (d.gsi < 0 || d.gsi > LAYOUT.DEVICE_IRQ_LAST) {
      throw new RangeError(`virtio device ${i}: GSI ${d.gsi} is not an IOAPIC pin (0–23)`);
    }
  });
  const dsdt = buildDsdt(o.virtio);
  const madt = buildMadt({
    cpus: o.cpus,
    lapicAddr: o.lapicAddr ?? LAYOUT.LAPIC_ADDR,
    ioapicAddr: o.ioapicAddr ?? LAYOUT.IOAPIC_ADDR,
    ioapicId: o.ioapicId ?? 0,
    overrides: o.overrides ?? [],
  });
  const rsdpAddr = base;
  const xsdtAddr = align(rsdpAddr + RSDP_SIZE, 16);
  const fadtAddr = align(xsdtAddr + HEADER_SIZE + 16, 16);
  const madtAddr = align(fadtAddr + FADT_SIZE, 16);
  const dsdtAddr = align(madtAddr + madt.length, 16);
  const end = dsdtAddr + dsdt.length;
  if (end - base > max) {
    throw new RangeError(
      `ACPI tables need ${end - base} bytes at 0x${base.toString(16)}; only ${max} are reserved`,
    );
  }
  const fadt = buildFadt(dsdtAddr, sleepPort);
  const xsdt = buildXsdt([fadtAddr, madtAddr]);
  const rsdp = buildRsdp(xsdtAddr);
  const tables: PlacedTable[] = [
    { signature: "RSD PTR ", addr: rsdpAddr, bytes: rsdp },
    { signature: "XSDT", addr: xsdtAddr, bytes: xsdt },
    { signature: "FACP", addr: fadtAddr, bytes: fadt },
    { signature: "APIC", addr: madtAddr, bytes: madt },
    { signature: "DSDT", addr: dsdtAddr, bytes: dsdt },
  ];
  const image = new Uint8Array(end - base);
  for (const t of tables) image.set(t.bytes, t.addr - base);
  return { rsdpAddr, addr: base, image, tables };
}

/** Writes the tables into guest memory; returns them. */
export function writeAcpiTables(mem: GuestMemory, o: AcpiOptions): AcpiTables {
  const t = buildAcpiTables(o);
  mem.write(t.addr, t.image);
  return t;
}
