/**
 * ACPI for skiff's guests: an AML encoder, the RSDP/XSDT/FADT/MADT/DSDT
 * builders, and the hardware-reduced sleep register device that turns a
 * guest `poweroff` into the end of the VM.
 *
 * @module
 */

export * as aml from "./aml.ts";
export { AmlError } from "./aml.ts";
export {
  buildAcpiTables,
  buildDsdt,
  buildFadt,
  buildMadt,
  buildRsdp,
  buildXsdt,
  byteSum,
  checksum,
  dsdtAml,
  FADT_FLAGS,
  SLEEP,
  virtioDeviceName,
  writeAcpiTables,
} from "./tables.ts";
export type {
  AcpiOptions,
  AcpiTables,
  AcpiVirtioDevice,
  InterruptOverride,
  PlacedTable,
} from "./tables.ts";
export { isPowerOff, sleepSpec } from "./sleep.ts";
