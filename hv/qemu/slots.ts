/**
 * PCI Express placement on the q35 machine: device numbers on the root bus
 * (`pcie.0`) for the cold-plugged devices and the `pcie-root-port`s, and the
 * allocator that hands out free root ports for hot-plug.
 *
 * Why root ports: a PCI Express device is hot-plugged into a slot, and on
 * q35 the slots are the downstream sides of root ports (QEMU
 * docs/pcie.txt §2.2 "PCI Express only hierarchy", §5 "Hot-plug"); devices
 * placed straight on `pcie.0` are integrated endpoints and cannot be
 * hot-plugged. QEMU 7.2's q35 announces the root ports' slots through ACPI
 * (the guest's built-in `acpiphp` takes the Notify), so no kernel option is
 * needed. Each root port takes one device number on `pcie.0` and holds one
 * device.
 *
 * @module
 */

/** One `pcie-root-port` on `pcie.0`. */
export interface RootPort {
  /** Device id, the `bus=` of a device plugged into it (`rp0`, `rp1`, …). */
  readonly id: string;
  /** Device number on `pcie.0` (its `addr=`). */
  readonly addr: number;
  /** `chassis=`: unique per port (PCIe r4.0 §7.5.3.9 Physical Slot Number pairs with it). */
  readonly chassis: number;
  /** `slot=`: the physical slot number the port reports. */
  readonly slot: number;
}

/** Where everything on `pcie.0` goes. */
export interface PcieLayout {
  /** Root ports, in order. */
  readonly rootPorts: readonly RootPort[];
  /** Device numbers on `pcie.0` for the cold-plugged devices, in the order asked. */
  readonly deviceAddrs: readonly number[];
}

/**
 * Device numbers skiff may use on q35's `pcie.0`: 00 is the host bridge and
 * 1f the ICH9 LPC bridge (always present); 01 is where QEMU puts a default
 * VGA and is left alone. `sata=off`/`smbus=off` free 1f.2/1f.3, which are
 * functions of 1f anyway.
 */
const FIRST_ADDR = 0x02;
const LAST_ADDR = 0x1e;

/** Places `rootPorts` root ports and then `devices` cold-plugged devices on `pcie.0`. */
export function planPcie(rootPorts: number, devices: number): PcieLayout {
  if (!Number.isInteger(rootPorts) || rootPorts < 0) {
    throw new RangeError(`root port count must be an integer ≥ 0, got ${rootPorts}`);
  }
  if (!Number.isInteger(devices) || devices < 0) {
    throw new RangeError(`device count must be an integer ≥ 0, got ${devices}`);
  }
  const free = LAST_ADDR - FIRST_ADDR + 1;
  if (rootPorts + devices > free) {
    throw new RangeError(
      `${rootPorts} root ports and ${devices} devices do not fit the ${free} free slots of pcie.0`,
    );
  }
  const ports = Array.from({ length: rootPorts }, (_, i) => ({
    id: `rp${i}`,
    addr: FIRST_ADDR + i,
    chassis: i + 1,
    slot: i + 1,
  }));
  const deviceAddrs = Array.from({ length: devices }, (_, i) => FIRST_ADDR + rootPorts + i);
  return { rootPorts: ports, deviceAddrs };
}

/** `0x1f` → `"0x1f"`, as QEMU's `addr=` takes it. */
export function pciAddr(n: number): string {
  return `0x${n.toString(16)}`;
}

/** No root port is free for a hot-plug. */
export class NoFreeSlotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoFreeSlotError";
  }
}

/**
 * Which root ports hold a hot-plugged device. One per QEMU process: a
 * restored QEMU starts with every port free, because snapshots are only
 * taken with none in use (see hv/qemu/persist.ts).
 */
export class HotplugSlots {
  #ports: readonly RootPort[];
  /** Port id → id of the device in it. */
  #used = new Map<string, string>();

  /** Tracks `ports` (all free). */
  constructor(ports: readonly RootPort[]) {
    this.#ports = ports;
  }

  /** Every port, in order. */
  get ports(): readonly RootPort[] {
    return this.#ports;
  }

  /** Number of free ports. */
  get free(): number {
    return this.#ports.length - this.#used.size;
  }

  /** Device ids by the port they occupy. */
  get used(): ReadonlyMap<string, string> {
    return this.#used;
  }

  /** Takes the first free port for device `deviceId`; throws {@link NoFreeSlotError} when none is. */
  take(deviceId: string): RootPort {
    const port = this.#ports.find((p) => !this.#used.has(p.id));
    if (!port) {
      throw new NoFreeSlotError(
        `no free PCIe root port for device '${deviceId}': all ${this.#ports.length} hold ${
          [...this.#used.values()].join(", ") || "nothing (the machine has none)"
        }`,
      );
    }
    this.#used.set(port.id, deviceId);
    return port;
  }

  /** Frees port `portId`; freeing a free port is a no-op. */
  release(portId: string): void {
    this.#used.delete(portId);
  }
}
