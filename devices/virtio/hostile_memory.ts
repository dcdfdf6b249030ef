/**
 * A hostile {@link GuestMemory} for tests: it wraps fake guest memory, records
 * every access the device side makes, and plays a vCPU that races the device
 * by changing guest bytes right after the device first reads them. Not used
 * by the VMM itself.
 *
 * The device under test gets the wrapper; the mock driver keeps using the
 * inner memory, so what is recorded is exactly what the device did. Tests
 * then assert the project rule "copy guest bytes once, then validate the
 * copy, then use it":
 *
 * - {@link HostileMemory.assertCopiedOnce}: each byte of a request was read
 *   by a copying read exactly once and never handed out as a view (a view
 *   lets its consumer read the byte again and again while the guest changes
 *   it);
 * - {@link HostileMemory.doubleReads}: no guest byte was read twice;
 * - {@link HostileMemory.readBacks}: nothing the device wrote was read back;
 * - {@link HostileMemory.raceAfterFirstRead}: bytes that were valid at the
 *   first read are changed at once afterwards (to `..`, `../x`, a huge
 *   length …), so any later read — a double fetch — sees the hostile value.
 *
 * @module
 */

import type { GuestMemory, MemoryRegion } from "../../hv/memory.ts";

/** A guest byte range. */
export interface Range {
  /** Guest-physical address. */
  readonly addr: number;
  /** Length in bytes. */
  readonly length: number;
}

/** One recorded access: a copying read, a view handed out (`slice`), or a write. */
export interface Access extends Range {
  readonly kind: "read" | "view" | "write";
}

interface Race {
  addr: number;
  bytes: Uint8Array;
  fired: boolean;
}

function overlaps(a: Range, b: Range): boolean {
  return a.addr < b.addr + b.length && b.addr < a.addr + a.length;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function show(r: Range): string {
  return `${hex(r.addr)}+${r.length}`;
}

/** See the module documentation. */
export class HostileMemory implements GuestMemory {
  /** The wrapped memory (give it to the mock driver). */
  readonly inner: GuestMemory;
  /** Accesses since construction or the last {@link clear}, in order. */
  readonly accesses: Access[] = [];
  #races: Race[] = [];

  constructor(inner: GuestMemory) {
    this.inner = inner;
  }

  get regions(): readonly MemoryRegion[] {
    return this.inner.regions;
  }

  /** Forgets the recorded accesses (e.g. before the request a test looks at). Races stay armed. */
  clear(): void {
    this.accesses.length = 0;
  }

  /**
   * A racing vCPU: right after the device's first read of any byte of
   * `[addr, addr + bytes.length)` — a copying read, or a view handed out —
   * `bytes` are written there (once).
   */
  raceAfterFirstRead(addr: number, bytes: Uint8Array): void {
    this.#races.push({ addr, bytes: bytes.slice(), fired: false });
  }

  /** How many armed races have fired. */
  get racesFired(): number {
    return this.#races.filter((r) => r.fired).length;
  }

  #touched(kind: "read" | "view", addr: number, length: number): void {
    this.accesses.push({ kind, addr, length });
    for (const r of this.#races) {
      if (!r.fired && overlaps({ addr: r.addr, length: r.bytes.length }, { addr, length })) {
        r.fired = true;
        this.inner.write(r.addr, r.bytes);
      }
    }
  }

  #wrote(addr: number, length: number): void {
    this.accesses.push({ kind: "write", addr, length });
  }

  // ---- GuestMemory -----------------------------------------------------------

  contains(addr: number, length: number): boolean {
    // Address arithmetic only: no guest byte is read.
    return this.inner.contains(addr, length);
  }
  slice(addr: number, length: number): Uint8Array<ArrayBuffer> {
    const v = this.inner.slice(addr, length);
    this.#touched("view", addr, length);
    return v;
  }
  read(addr: number, dest: Uint8Array): void {
    this.inner.read(addr, dest);
    this.#touched("read", addr, dest.length);
  }
  write(addr: number, src: Uint8Array): void {
    this.inner.write(addr, src);
    this.#wrote(addr, src.length);
  }
  readU8(addr: number): number {
    const v = this.inner.readU8(addr);
    this.#touched("read", addr, 1);
    return v;
  }
  readU16(addr: number): number {
    const v = this.inner.readU16(addr);
    this.#touched("read", addr, 2);
    return v;
  }
  readU32(addr: number): number {
    const v = this.inner.readU32(addr);
    this.#touched("read", addr, 4);
    return v;
  }
  readU64(addr: number): bigint {
    const v = this.inner.readU64(addr);
    this.#touched("read", addr, 8);
    return v;
  }
  writeU8(addr: number, value: number): void {
    this.inner.writeU8(addr, value);
    this.#wrote(addr, 1);
  }
  writeU16(addr: number, value: number): void {
    this.inner.writeU16(addr, value);
    this.#wrote(addr, 2);
  }
  writeU32(addr: number, value: number): void {
    this.inner.writeU32(addr, value);
    this.#wrote(addr, 4);
  }
  writeU64(addr: number, value: bigint): void {
    this.inner.writeU64(addr, value);
    this.#wrote(addr, 8);
  }

  // ---- findings --------------------------------------------------------------

  /**
   * Byte runs read (copying reads and views alike) more than once since the
   * last {@link clear}, leaving out bytes inside `except` (fields a device
   * legitimately polls, such as the available index).
   */
  doubleReads(except: readonly Range[] = []): (Range & { count: number })[] {
    const events: [number, number][] = [];
    for (const a of this.accesses) {
      if (a.kind === "write" || a.length === 0) continue;
      events.push([a.addr, 1], [a.addr + a.length, -1]);
    }
    events.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    const out: (Range & { count: number })[] = [];
    let depth = 0;
    for (let i = 0; i < events.length; i++) {
      depth += events[i][1];
      const from = events[i][0];
      const to = i + 1 < events.length ? events[i + 1][0] : from;
      if (depth < 2 || to <= from) continue;
      // Cut the run around the excepted ranges.
      let runs: Range[] = [{ addr: from, length: to - from }];
      for (const e of except) {
        runs = runs.flatMap((r) => {
          if (!overlaps(r, e)) return [r];
          const parts: Range[] = [];
          if (r.addr < e.addr) parts.push({ addr: r.addr, length: e.addr - r.addr });
          const end = r.addr + r.length, eEnd = e.addr + e.length;
          if (end > eEnd) parts.push({ addr: eEnd, length: end - eEnd });
          return parts;
        });
      }
      for (const r of runs) out.push({ ...r, count: depth });
    }
    return out;
  }

  /** Views handed out (`slice`) that overlap `range`. */
  viewsOf(range: Range): Access[] {
    return this.accesses.filter((a) => a.kind === "view" && overlaps(a, range));
  }

  /** Reads (or views) of bytes the device itself wrote earlier since the last {@link clear}. */
  readBacks(): Range[] {
    const out: Range[] = [];
    this.accesses.forEach((a, i) => {
      if (a.kind === "write") return;
      for (let j = 0; j < i; j++) {
        const w = this.accesses[j];
        if (w.kind === "write" && overlaps(w, a)) {
          out.push({
            addr: Math.max(w.addr, a.addr),
            length: Math.min(w.addr + w.length, a.addr + a.length) - Math.max(w.addr, a.addr),
          });
        }
      }
    });
    return out;
  }

  /** How often each byte of `range` was read by copying reads. */
  readCounts(range: Range): number[] {
    const counts = new Array<number>(range.length).fill(0);
    for (const a of this.accesses) {
      if (a.kind !== "read" || !overlaps(a, range)) continue;
      const from = Math.max(a.addr, range.addr),
        to = Math.min(a.addr + a.length, range.addr + range.length);
      for (let p = from; p < to; p++) counts[p - range.addr]++;
    }
    return counts;
  }

  /**
   * Throws unless every byte of each range was read by a copying read exactly
   * once since the last {@link clear} and never handed out as a view.
   */
  assertCopiedOnce(ranges: readonly Range[], what = "request"): void {
    for (const r of ranges) {
      const views = this.viewsOf(r);
      if (views.length > 0) {
        throw new Error(
          `${what}: guest bytes ${show(r)} were handed out as a view (${
            views.map(show).join(", ")
          }) instead of being copied once`,
        );
      }
      const counts = this.readCounts(r);
      const bad = counts.findIndex((c) => c !== 1);
      if (bad >= 0) {
        throw new Error(
          `${what}: guest byte ${hex(r.addr + bad)} of ${show(r)} was read ${
            counts[bad]
          } times (expected exactly once)`,
        );
      }
    }
  }

  /** Throws if {@link doubleReads} (outside `except`) finds anything. */
  assertNoDoubleReads(except: readonly Range[] = [], what = "device"): void {
    const d = this.doubleReads(except);
    if (d.length > 0) {
      throw new Error(
        `${what}: guest bytes read more than once: ${
          d.map((r) => `${show(r)} ×${r.count}`).join(", ")
        }`,
      );
    }
  }

  /** Throws if {@link readBacks} finds anything. */
  assertNoReadBack(what = "device"): void {
    const r = this.readBacks();
    if (r.length > 0) {
      throw new Error(`${what}: read back bytes it wrote: ${r.map(show).join(", ")}`);
    }
  }
}
