/**
 * ACPI for skiff's guests: an AML encoder, the RSDP/XSDT/FADT/MADT/DSDT
 * builders. The sleep register device they point at (a guest `poweroff`
 * ends the VM) is devices/legacy/acpi_sleep.ts.
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
