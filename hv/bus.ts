/**
 * Address buses: the port-I/O bus (16-bit port space) and the MMIO bus
 * (guest-physical space outside RAM). A device owns one or more
 * non-overlapping ranges; an access is routed to the device whose range holds
 * its first byte, with the offset from that range's base (after Firecracker's
 * `vm-device` bus).
 *
 * @module
 */

/** A device register block as a bus sees it. `data.length` is the access width. */
export interface BusDevice {
  /** Fills `data` with the bytes read at `offset` in the range starting at `base`. */
  read(offset: number, data: Uint8Array, base: number): void;
  /** Handles a write of `data` at `offset` in the range starting at `base`. */
  write(offset: number, data: Uint8Array, base: number): void;
}

/** One registered range. */
export interface BusRange<D extends BusDevice = BusDevice> {
  /** First address. */
  readonly base: number;
  /** Length in bytes (≥ 1). */
  readonly length: number;
  /** Who owns it (for errors and listings). */
  readonly name: string;
  readonly device: D;
}

/** An access that overlaps an existing range, or a malformed range. */
export class BusError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BusError";
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** A sorted set of non-overlapping ranges with binary-search lookup. */
export class Bus<D extends BusDevice = BusDevice> {
  /** What this bus is, for messages ("port I/O", "MMIO"). */
  readonly kind: string;
  /** Highest address + 1. */
  readonly limit: number;
  #ranges: BusRange<D>[] = [];
  #last: BusRange<D> | null = null;

  constructor(kind: string, limit: number) {
    this.kind = kind;
    this.limit = limit;
  }

  /** All ranges, sorted by base. */
  get ranges(): readonly BusRange<D>[] {
    return this.#ranges;
  }

  /** Adds `[base, base + length)` for `device`; throws {@link BusError} naming both owners on overlap. */
  insert(base: number, length: number, name: string, device: D): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length < 1) {
      throw new BusError(`${this.kind} range for ${name}: bad base ${base} or length ${length}`);
    }
    if (base + length > this.limit) {
      throw new BusError(
        `${this.kind} range ${hex(base)}+${hex(length)} for ${name} exceeds ${hex(this.limit)}`,
      );
    }
    for (const r of this.#ranges) {
      if (base < r.base + r.length && r.base < base + length) {
        throw new BusError(
          `${this.kind} range ${hex(base)}-${hex(base + length - 1)} for ${name} overlaps ` +
            `${hex(r.base)}-${hex(r.base + r.length - 1)} of ${r.name}`,
        );
      }
    }
    this.#ranges.push({ base, length, name, device });
    this.#ranges.sort((a, b) => a.base - b.base);
  }

  /** Removes the range starting at `base`; returns whether one was removed. */
  remove(base: number): boolean {
    const i = this.#ranges.findIndex((r) => r.base === base);
    if (i < 0) return false;
    if (this.#last === this.#ranges[i]) this.#last = null;
    this.#ranges.splice(i, 1);
    return true;
  }

  /** The range holding `addr`, or null. */
  find(addr: number): BusRange<D> | null {
    const last = this.#last;
    if (last !== null && addr >= last.base && addr < last.base + last.length) return last;
    const rs = this.#ranges;
    let lo = 0, hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = rs[mid];
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.base + r.length) lo = mid + 1;
      else {
        this.#last = r;
        return r;
      }
    }
    return null;
  }

  /**
   * Routes a read; returns false when no device claims `addr` (the caller
   * decides what an unclaimed access means — reads of nothing are all ones on PC).
   */
  read(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr);
    if (r === null) return false;
    r.device.read(addr - r.base, data, r.base);
    return true;
  }

  /** Routes a write; returns false when no device claims `addr`. */
  write(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr);
    if (r === null) return false;
    r.device.write(addr - r.base, data, r.base);
    return true;
  }
}

/** The x86 port-I/O bus (ports 0..0xffff). */
export function portBus<D extends BusDevice = BusDevice>(): Bus<D> {
  return new Bus<D>("port I/O", 0x10000);
}

/** The MMIO bus (the 52-bit guest-physical space). */
export function mmioBus<D extends BusDevice = BusDevice>(): Bus<D> {
  return new Bus<D>("MMIO", 2 ** 52);
}
