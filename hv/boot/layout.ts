/**
 * skiff's x86-64 guest-physical memory layout (after Firecracker's
 * `arch/x86_64/layout.rs` and QEMU `microvm`), and {@link MemoryLayout},
 * which splits guest RAM around the 32-bit MMIO hole.
 *
 * ```
 * 0x0000_0000  RAM (e820 RAM) ─ real-mode IVT/BDA, skiff's boot structures:
 *   0x0000_0500    GDT/IDT and early page tables (hv/x86 owns them)
 *   0x0000_7000    boot_params ("zero page")
 *   0x0000_8ff0    initial stack pointer (grows down)
 *   0x0000_9000    …0x0001_0000: page tables (hv/x86)
 *   0x0002_0000    kernel command line (up to 64 KiB)
 * 0x0009_fc00  EBDA (e820 reserved) up to 0x000a_0000
 * 0x000a_0000  VGA / option ROM hole (not in e820)
 * 0x000e_0000  ACPI tables: RSDP first, then XSDT, FADT, MADT, DSDT (e820 reserved)
 * 0x0010_0000  RAM (e820 RAM): bzImage protected-mode code; vmlinux at its
 *              LOAD paddrs (16 MiB for Debian); initrd at the top of low RAM
 * lowRamEnd    (≤ 3 GiB) end of low RAM
 * 0xc000_0000  32-bit MMIO hole (1 GiB, never RAM, not in e820):
 *   0xc000_0000    virtio-mmio windows, one 4 KiB page each
 *   0xfec0_0000    IOAPIC
 *   0xfee0_0000    local APIC
 * 0x1_0000_0000 RAM above 4 GiB (e820 RAM) when guest RAM exceeds 3 GiB
 * ```
 *
 * @module
 */

/** e820 entry types (ACPI 6.5 §15, "System Address Map Interfaces", Table 15.1). */
export const E820 = {
  RAM: 1,
  RESERVED: 2,
  ACPI: 3,
  NVS: 4,
  UNUSABLE: 5,
} as const;

/** An e820 entry type. */
export type E820Type = (typeof E820)[keyof typeof E820];

/** One entry of the e820 memory map. */
export interface E820Entry {
  addr: number;
  size: number;
  type: E820Type;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Fixed guest-physical addresses; see the module comment for the picture. */
export const LAYOUT = {
  /** Start of the area hv/x86 uses for the GDT, IDT and early page tables. */
  BOOT_STRUCTS_START: 0x500,
  /** boot_params ("zero page"), passed to the kernel in RSI. */
  ZERO_PAGE: 0x7000,
  /** Initial RSP for the boot vCPU. */
  BOOT_STACK_POINTER: 0x8ff0,
  /** Kernel command line. */
  CMDLINE_START: 0x20000,
  /** Space for the command line, NUL included. */
  CMDLINE_MAX: 0x10000,
  /** Extended BIOS data area start: low RAM ends here (as Firecracker). */
  EBDA_START: 0x9fc00,
  /** End of conventional memory (start of the VGA hole). */
  LEGACY_HOLE_START: 0xa0000,
  /** ACPI tables; the RSDP sits at the start, inside the BIOS scan range 0xe0000–0xfffff. */
  ACPI_START: 0xe0000,
  /** End of the ACPI area (= start of high memory). */
  ACPI_END: 0x100000,
  /** First byte above the legacy area: where a bzImage's protected-mode code is loaded. */
  HIMEM_START: 0x100000,
  /** Start of the 32-bit MMIO hole: low RAM never reaches beyond this. */
  MMIO_HOLE_START: 3 * GiB,
  /** End of the 32-bit MMIO hole (4 GiB): RAM continues here. */
  MMIO_HOLE_END: 4 * GiB,
  /** First virtio-mmio device window. */
  VIRTIO_MMIO_START: 3 * GiB,
  /** Distance between device windows (one page, so each can be mapped alone). */
  VIRTIO_MMIO_STRIDE: 0x1000,
  /** Register block size declared for each device (virtio 1.2 §4.2.2: registers end below 0x100 + config). */
  VIRTIO_MMIO_SIZE: 0x200,
  /** End of the virtio-mmio window area (256 MiB: up to 65536 devices). */
  VIRTIO_MMIO_END: 3 * GiB + 256 * MiB,
  /** IOAPIC register window (Intel 82093AA default). */
  IOAPIC_ADDR: 0xfec00000,
  /** Local APIC register window (Intel SDM Vol. 3 §11.4.1 default). */
  LAPIC_ADDR: 0xfee00000,
  /**
   * Port of the ACPI sleep control/status register pair (FADT hardware-reduced
   * SLEEP_CONTROL_REG / SLEEP_STATUS_REG, ACPI 6.5 §4.8.3.7). 0x600 is outside
   * the legacy ISA devices skiff emulates (UART 0x3f8, i8042 0x60/0x64).
   */
  SLEEP_PORT: 0x600,
  /** Legacy COM1 IRQ (ISA). */
  UART_IRQ: 4,
  /** First IOAPIC pin free for devices (as Firecracker: above the ISA ones skiff uses). */
  DEVICE_IRQ_FIRST: 5,
  /** Last IOAPIC pin (KVM's in-kernel IOAPIC has 24 pins). */
  DEVICE_IRQ_LAST: 23,
} as const;

/** Smallest guest RAM skiff lays out (the kernel alone needs more to boot). */
export const MIN_MEMORY = 16 * MiB;

/** Guest RAM regions around the 32-bit MMIO hole and the e820 map for them. */
export class MemoryLayout {
  /** Total guest RAM in bytes. */
  readonly memoryBytes: number;
  /** End of RAM below the hole (exclusive). */
  readonly lowRamEnd: number;
  /** RAM above 4 GiB in bytes (0 when everything fits below the hole). */
  readonly highRamSize: number;

  /**
   * @param memoryBytes total guest RAM (a multiple of 4 KiB, ≥ {@link MIN_MEMORY})
   * @param holeStart where low RAM stops (default 3 GiB)
   */
  constructor(memoryBytes: number, readonly holeStart: number = LAYOUT.MMIO_HOLE_START) {
    if (!Number.isSafeInteger(memoryBytes) || memoryBytes < MIN_MEMORY) {
      throw new RangeError(`guest memory ${memoryBytes} bytes is below the minimum of 16 MiB`);
    }
    if (memoryBytes % 4096 !== 0) {
      throw new RangeError(`guest memory ${memoryBytes} bytes is not a multiple of 4 KiB`);
    }
    if (holeStart > LAYOUT.MMIO_HOLE_END || holeStart % (2 * MiB) !== 0 || holeStart < 64 * MiB) {
      throw new RangeError(`bad MMIO hole start 0x${holeStart.toString(16)}`);
    }
    this.memoryBytes = memoryBytes;
    this.lowRamEnd = Math.min(memoryBytes, holeStart);
    this.highRamSize = memoryBytes - this.lowRamEnd;
  }

  /** Layout for `mib` MiB of RAM. */
  static fromMiB(mib: number): MemoryLayout {
    return new MemoryLayout(mib * MiB);
  }

  /** The RAM regions to back with memory and register as KVM slots (for `RegionMemory.memfd`). */
  get ramRegions(): { guestAddr: number; size: number }[] {
    const r = [{ guestAddr: 0, size: this.lowRamEnd }];
    if (this.highRamSize > 0) r.push({ guestAddr: LAYOUT.MMIO_HOLE_END, size: this.highRamSize });
    return r;
  }

  /** Highest guest-physical RAM address + 1. */
  get ramEnd(): number {
    return this.highRamSize > 0 ? LAYOUT.MMIO_HOLE_END + this.highRamSize : this.lowRamEnd;
  }

  /**
   * The e820 map: usable RAM with the legacy holes cut out, the EBDA and the
   * ACPI area reserved. The virtio-mmio windows and the APICs are MMIO and
   * deliberately absent.
   */
  e820(): E820Entry[] {
    const map: E820Entry[] = [
      { addr: 0, size: LAYOUT.EBDA_START, type: E820.RAM },
      {
        addr: LAYOUT.EBDA_START,
        size: LAYOUT.LEGACY_HOLE_START - LAYOUT.EBDA_START,
        type: E820.RESERVED,
      },
      { addr: LAYOUT.ACPI_START, size: LAYOUT.ACPI_END - LAYOUT.ACPI_START, type: E820.RESERVED },
    ];
    if (this.lowRamEnd > LAYOUT.HIMEM_START) {
      map.push({
        addr: LAYOUT.HIMEM_START,
        size: this.lowRamEnd - LAYOUT.HIMEM_START,
        type: E820.RAM,
      });
    }
    if (this.highRamSize > 0) {
      map.push({ addr: LAYOUT.MMIO_HOLE_END, size: this.highRamSize, type: E820.RAM });
    }
    return map;
  }

  /** Guest-physical base of virtio-mmio device number `index` (0-based). */
  static virtioMmioBase(index: number): number {
    const base = LAYOUT.VIRTIO_MMIO_START + index * LAYOUT.VIRTIO_MMIO_STRIDE;
    if (
      !Number.isInteger(index) || index < 0 ||
      base + LAYOUT.VIRTIO_MMIO_STRIDE > LAYOUT.VIRTIO_MMIO_END
    ) {
      throw new RangeError(`virtio-mmio device index ${index} out of range`);
    }
    return base;
  }
}
