/**
 * Guest physical memory: a narrow, bounds-checked interface (after rust-vmm
 * `vm-memory`). Every access names a guest-physical address and a length and
 * must lie wholly inside one region; anything else throws
 * {@link GuestMemoryError}, which device code turns into a device error rather
 * than letting a guest crash the VMM.
 *
 * Regions are backed either by a memfd mapped `MAP_SHARED` (so a snapshot can
 * save it and a restore can map a file `MAP_PRIVATE`), by any mapped file, or
 * — for unit tests — by a plain `ArrayBuffer`.
 *
 * @module
 */

import { close, ftruncate, MAP, memfdCreate, mmap, munmap, PROT, viewAt } from "../kvm_ffi/libc.ts";

/** An access outside guest memory. Carries the address and length that were asked for. */
export class GuestMemoryError extends Error {
  /** Guest-physical address of the access. */
  readonly addr: number;
  /** Length of the access in bytes. */
  readonly length: number;
  constructor(addr: number, length: number, why = "outside guest memory") {
    super(`guest memory access 0x${addr.toString(16)}+${length} ${why}`);
    this.name = "GuestMemoryError";
    this.addr = addr;
    this.length = length;
  }
}

/** One contiguous range of guest-physical memory and the host bytes behind it. */
export interface MemoryRegion {
  /** Guest-physical start address. */
  readonly guestAddr: number;
  /** Size in bytes. */
  readonly size: number;
  /** Host view of the region (zero-copy). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Host pointer of the mapping (absent for ArrayBuffer-backed regions). */
  readonly hostPtr?: Deno.PointerObject;
  /** File descriptor backing the region, if any (memfd or snapshot file). */
  readonly fd?: number;
  /** Offset of the region in `fd`. */
  readonly fdOffset?: number;
}

/**
 * A region over host memory mapped at `hostPtr` whose {@link MemoryRegion.bytes}
 * view is made on first use.
 *
 * Every `ArrayBuffer` over guest memory counts as V8 "external memory" in the
 * isolate that makes it. Above about 1 GiB that starts a mark-compact at once
 * (1–5 ms measured here with a 4 GiB guest, `--trace-gc`: "external memory
 * pressure"), which landed inside a snapshot restore although the restore
 * never touches guest bytes. A lazy view defers that cost to the first device
 * access, and an isolate that never touches guest memory (a vCPU Worker
 * whose devices only use registers) never pays it.
 */
export class MappedRegion implements MemoryRegion {
  readonly guestAddr: number;
  readonly size: number;
  readonly hostPtr: Deno.PointerObject;
  readonly fd?: number;
  readonly fdOffset?: number;
  #bytes: Uint8Array<ArrayBuffer> | null = null;
  #view: (() => Uint8Array<ArrayBuffer>) | null;

  /**
   * @param view makes the view when first asked (default: a new `ArrayBuffer`
   *   over `[hostPtr, hostPtr + size)`); it must cover exactly those bytes
   */
  constructor(
    r: {
      guestAddr: number;
      size: number;
      hostPtr: Deno.PointerObject;
      fd?: number;
      fdOffset?: number;
    },
    view?: () => Uint8Array<ArrayBuffer>,
  ) {
    this.guestAddr = r.guestAddr;
    this.size = r.size;
    this.hostPtr = r.hostPtr;
    if (r.fd !== undefined) this.fd = r.fd;
    if (r.fdOffset !== undefined) this.fdOffset = r.fdOffset;
    this.#view = view ?? null;
  }

  /** Whether the view exists yet (diagnostics and tests). */
  get viewed(): boolean {
    return this.#bytes !== null;
  }

  get bytes(): Uint8Array<ArrayBuffer> {
    if (this.#bytes === null) {
      const v = this.#view ? this.#view() : viewAt(this.hostPtr, this.size);
      if (v.length !== this.size) {
        throw new RangeError(`guest region view is ${v.length} bytes, the region ${this.size}`);
      }
      this.#bytes = v;
      this.#view = null;
    }
    return this.#bytes;
  }
}

/** The narrow guest-memory interface devices and queues take as an argument. */
export interface GuestMemory {
  /** All regions, sorted by guest address, non-overlapping. */
  readonly regions: readonly MemoryRegion[];
  /** True when `[addr, addr + length)` lies wholly inside one region. */
  contains(addr: number, length: number): boolean;
  /** Zero-copy view of `[addr, addr + length)`; throws {@link GuestMemoryError} otherwise. */
  slice(addr: number, length: number): Uint8Array<ArrayBuffer>;
  /** Copies guest bytes into `dest`. */
  read(addr: number, dest: Uint8Array): void;
  /** Copies `src` into guest memory. */
  write(addr: number, src: Uint8Array): void;
  /** Little-endian 8/16/32/64-bit reads. */
  readU8(addr: number): number;
  readU16(addr: number): number;
  readU32(addr: number): number;
  readU64(addr: number): bigint;
  /** Little-endian 8/16/32/64-bit writes. */
  writeU8(addr: number, value: number): void;
  writeU16(addr: number, value: number): void;
  writeU32(addr: number, value: number): void;
  writeU64(addr: number, value: bigint): void;
}

/** A {@link GuestMemory} over a list of regions. */
export class RegionMemory implements GuestMemory, Disposable {
  readonly regions: readonly MemoryRegion[];
  #views: (RegionViews | undefined)[];
  #owned: { ptr: Deno.PointerObject; size: number; fd?: number }[];

  /**
   * @param regions the regions (any order; they must not overlap)
   * @param owned mappings and fds to release on dispose
   */
  constructor(
    regions: MemoryRegion[],
    owned: { ptr: Deno.PointerObject; size: number; fd?: number }[] = [],
  ) {
    const sorted = [...regions].sort((a, b) => a.guestAddr - b.guestAddr);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1];
      if (prev.guestAddr + prev.size > sorted[i].guestAddr) {
        throw new RangeError(
          `memory regions overlap at 0x${sorted[i].guestAddr.toString(16)}`,
        );
      }
    }
    this.regions = sorted;
    // Views are made on first access: a region's bytes may be lazy (MappedRegion).
    this.#views = new Array(sorted.length);
    this.#owned = owned;
  }

  /** Plain ArrayBuffer-backed memory (tests, fake guests): one region at `guestAddr`. */
  static fromBytes(size: number, guestAddr = 0): RegionMemory {
    return new RegionMemory([{ guestAddr, size, bytes: new Uint8Array(size) }]);
  }

  /**
   * memfd-backed memory mapped `MAP_SHARED`, one memfd per region, so a snapshot
   * can write the fd out and a restore can map a file in its place.
   */
  static memfd(layout: { guestAddr: number; size: number }[], name = "skiff-guest"): RegionMemory {
    const regions: MemoryRegion[] = [];
    const owned: { ptr: Deno.PointerObject; size: number; fd?: number }[] = [];
    try {
      for (const { guestAddr, size } of layout) {
        const fd = memfdCreate(name);
        owned.push({ ptr: null as unknown as Deno.PointerObject, size: 0, fd });
        ftruncate(fd, size);
        const ptr = mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.NORESERVE, fd, 0);
        owned[owned.length - 1] = { ptr, size, fd };
        regions.push(new MappedRegion({ guestAddr, size, hostPtr: ptr, fd, fdOffset: 0 }));
      }
    } catch (e) {
      releaseOwned(owned);
      throw e;
    }
    return new RegionMemory(regions, owned);
  }

  /** Index of the region holding `[addr, addr+length)`, or -1. */
  #find(addr: number, length: number): number {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(length) || addr < 0 || length < 0) {
      return -1;
    }
    const rs = this.regions;
    let lo = 0, hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = rs[mid];
      if (addr < r.guestAddr) hi = mid - 1;
      else if (addr >= r.guestAddr + r.size) lo = mid + 1;
      else return addr + length <= r.guestAddr + r.size ? mid : -1;
    }
    return -1;
  }

  /** The views of the region holding `[addr, addr+length)` and the offset of `addr` in it. */
  #at(addr: number, length: number): RegionViews {
    const i = this.#find(addr, length);
    if (i < 0) throw new GuestMemoryError(addr, length);
    const r = this.regions[i];
    let v = this.#views[i];
    if (v === undefined) v = this.#views[i] = regionViews(r);
    v.off = addr - r.guestAddr;
    return v;
  }

  contains(addr: number, length: number): boolean {
    return this.#find(addr, length) >= 0;
  }

  slice(addr: number, length: number): Uint8Array<ArrayBuffer> {
    const i = this.#find(addr, length);
    if (i < 0) throw new GuestMemoryError(addr, length);
    const r = this.regions[i];
    const off = addr - r.guestAddr;
    return r.bytes.subarray(off, off + length);
  }

  read(addr: number, dest: Uint8Array): void {
    dest.set(this.slice(addr, dest.length));
  }

  write(addr: number, src: Uint8Array): void {
    this.slice(addr, src.length).set(src);
  }

  // Aligned 16/32/64-bit accesses go through typed arrays, one machine load or
  // store each, so a vCPU writing the same word concurrently (a ring index) is
  // never seen half old, half new — nor sees ours so. DataView is not enough:
  // V8's unoptimised DataView builtins move such values a byte at a time.
  readU8(addr: number): number {
    const v = this.#at(addr, 1);
    return v.u8[v.off];
  }
  readU16(addr: number): number {
    const v = this.#at(addr, 2);
    return v.u16 && (v.off & 1) === 0 ? v.u16[v.off / 2] : v.dv.getUint16(v.off, true);
  }
  readU32(addr: number): number {
    const v = this.#at(addr, 4);
    return v.u32 && (v.off & 3) === 0 ? v.u32[v.off / 4] : v.dv.getUint32(v.off, true);
  }
  readU64(addr: number): bigint {
    const v = this.#at(addr, 8);
    return v.u64 && (v.off & 7) === 0 ? v.u64[v.off / 8] : v.dv.getBigUint64(v.off, true);
  }
  writeU8(addr: number, value: number): void {
    const v = this.#at(addr, 1);
    v.u8[v.off] = value;
  }
  writeU16(addr: number, value: number): void {
    const v = this.#at(addr, 2);
    if (v.u16 && (v.off & 1) === 0) v.u16[v.off / 2] = value;
    else v.dv.setUint16(v.off, value, true);
  }
  writeU32(addr: number, value: number): void {
    const v = this.#at(addr, 4);
    if (v.u32 && (v.off & 3) === 0) v.u32[v.off / 4] = value;
    else v.dv.setUint32(v.off, value, true);
  }
  writeU64(addr: number, value: bigint): void {
    const v = this.#at(addr, 8);
    if (v.u64 && (v.off & 7) === 0) v.u64[v.off / 8] = value;
    else v.dv.setBigUint64(v.off, value, true);
  }

  /** Unmaps owned mappings and closes owned fds. Idempotent. */
  [Symbol.dispose](): void {
    releaseOwned(this.#owned);
    this.#owned = [];
  }
}

/**
 * Views of one region's bytes, made on first access. The wide typed arrays
 * exist when the bytes start 8-byte aligned (mappings and fresh buffers
 * do); they are little-endian like the guest, as on every host skiff runs on
 * (x86-64).
 */
interface RegionViews {
  dv: DataView;
  u8: Uint8Array;
  u16: Uint16Array | null;
  u32: Uint32Array | null;
  u64: BigUint64Array | null;
  /** Offset in the region of the access being made (set by each lookup). */
  off: number;
}

function regionViews(r: MemoryRegion): RegionViews {
  const b = r.bytes;
  const aligned = b.byteOffset % 8 === 0;
  return {
    dv: new DataView(b.buffer, b.byteOffset, r.size),
    u8: b,
    u16: aligned ? new Uint16Array(b.buffer, b.byteOffset, Math.floor(r.size / 2)) : null,
    u32: aligned ? new Uint32Array(b.buffer, b.byteOffset, Math.floor(r.size / 4)) : null,
    u64: aligned ? new BigUint64Array(b.buffer, b.byteOffset, Math.floor(r.size / 8)) : null,
    off: 0,
  };
}

function releaseOwned(owned: { ptr: Deno.PointerObject; size: number; fd?: number }[]): void {
  for (const o of owned) {
    if (o.ptr && o.size) munmap(o.ptr, o.size);
    if (o.fd !== undefined) close(o.fd);
  }
}
