/**
 * The driver side of a split virtqueue over fake guest memory, for tests of
 * the queue, the transport and devices (what Linux's `virtio_ring.c` does,
 * reduced to the essentials). Not used by the VMM itself.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import {
  DESC_SIZE,
  USED_ELEM_SIZE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "./queue.ts";

/** One buffer of a chain the mock driver builds. */
export type MockBuffer =
  /** Device-readable, holding these bytes. */
  | { data: Uint8Array }
  /** Device-writable, this many bytes. */
  | { writable: number };

/** A returned chain: head, bytes written, and its writable buffers' contents. */
export interface MockUsed {
  head: number;
  len: number;
  /** The bytes the device wrote (the first `len` bytes of the writable buffers, concatenated). */
  written: Uint8Array;
}

/** Where a buffer of a chain was placed in guest memory. */
export interface MockPlaced {
  addr: number;
  len: number;
  writable: boolean;
}

/** Ring addresses of a queue a {@link MockQueueDriver} lays out. */
export interface MockRingLayout {
  desc: number;
  avail: number;
  used: number;
}

/**
 * Driver side of one split virtqueue. Rings sit at `base`; buffers are
 * allocated from a bump allocator at `heap`.
 */
export class MockQueueDriver {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly rings: MockRingLayout;
  #heap: number;
  #heapStart: number;
  #heapEnd: number;
  #free: number[];
  #availIdx = 0;
  #lastUsed = 0;
  #chains = new Map<
    number,
    { writable: { addr: number; len: number }[]; descs: number[]; buffers: MockPlaced[] }
  >();

  /**
   * @param mem guest memory
   * @param size queue size (power of two)
   * @param base where the three rings go (needs about 18·size+16 bytes)
   * @param heap where buffers go
   * @param heapSize bytes available for buffers
   */
  constructor(mem: GuestMemory, size: number, base: number, heap: number, heapSize: number) {
    this.mem = mem;
    this.size = size;
    const desc = base;
    const avail = desc + DESC_SIZE * size;
    const used = Math.ceil((avail + 6 + 2 * size) / 4) * 4;
    this.rings = { desc, avail, used };
    this.#heap = heap;
    this.#heapStart = heap;
    this.#heapEnd = heap + heapSize;
    this.#free = Array.from({ length: size }, (_, i) => i);
    mem.slice(desc, used + 6 + USED_ELEM_SIZE * size - desc).fill(0);
  }

  /** Starts the avail/used indices at `idx` (to test 16-bit wrap-around). */
  setStartIndex(idx: number): void {
    this.#availIdx = idx & 0xffff;
    this.#lastUsed = idx & 0xffff;
    this.mem.writeU16(this.rings.avail + 2, this.#availIdx);
    this.mem.writeU16(this.rings.used + 2, this.#lastUsed);
  }

  #alloc(len: number): number {
    const at = Math.ceil(this.#heap / 16) * 16;
    if (at + len > this.#heapEnd) {
      if (this.#heap === this.#heapStart) throw new Error(`mock driver: buffer of ${len} too big`);
      // Wrap the bump allocator: tests recycle buffers long after their use.
      this.#heap = this.#heapStart;
      return this.#alloc(len);
    }
    this.#heap = at + len;
    return at;
  }

  /** Free descriptor slots. */
  get freeDescriptors(): number {
    return this.#free.length;
  }

  /**
   * Writes a chain and makes it available (without publishing the index
   * unless `publish`); returns its head. With `indirect`, the buffers go into
   * one indirect table referenced by a single ring descriptor.
   */
  add(buffers: MockBuffer[], opts: { indirect?: boolean; publish?: boolean } = {}): number {
    const writable: { addr: number; len: number }[] = [];
    const entries = buffers.map((b) => {
      if ("data" in b) {
        const addr = this.#alloc(b.data.length);
        this.mem.write(addr, b.data);
        return { addr, len: b.data.length, flags: 0 };
      }
      const addr = this.#alloc(b.writable);
      this.mem.slice(addr, b.writable).fill(0xee);
      writable.push({ addr, len: b.writable });
      return { addr, len: b.writable, flags: VIRTQ_DESC_F_WRITE };
    });
    let head: number;
    const descs: number[] = [];
    if (opts.indirect) {
      const table = this.#alloc(DESC_SIZE * entries.length);
      entries.forEach((e, i) => {
        const last = i === entries.length - 1;
        this.writeDesc(table, i, e.addr, e.len, e.flags | (last ? 0 : VIRTQ_DESC_F_NEXT), i + 1);
      });
      head = this.#take();
      descs.push(head);
      this.writeDesc(
        this.rings.desc,
        head,
        table,
        DESC_SIZE * entries.length,
        VIRTQ_DESC_F_INDIRECT,
        0,
      );
    } else {
      if (entries.length > this.#free.length) throw new Error("mock driver: out of descriptors");
      const ids = entries.map(() => this.#take());
      entries.forEach((e, i) => {
        const last = i === entries.length - 1;
        this.writeDesc(
          this.rings.desc,
          ids[i],
          e.addr,
          e.len,
          e.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
          last ? 0 : ids[i + 1],
        );
      });
      head = ids[0];
      descs.push(...ids);
    }
    const placed = entries.map((e) => ({
      addr: e.addr,
      len: e.len,
      writable: (e.flags & VIRTQ_DESC_F_WRITE) !== 0,
    }));
    this.#chains.set(head, { writable, descs, buffers: placed });
    this.pushAvail(head, opts.publish ?? true);
    return head;
  }

  /** Where the buffers of the outstanding chain `head` lie in guest memory, in chain order. */
  buffers(head: number): MockPlaced[] {
    const c = this.#chains.get(head);
    if (!c) throw new Error(`mock driver: no outstanding chain with head ${head}`);
    return c.buffers.map((b) => ({ ...b }));
  }

  /**
   * Guest address of byte `offset` of the chain's device-readable bytes
   * (the readable buffers concatenated).
   */
  readableAddr(head: number, offset: number): number {
    let off = offset;
    for (const b of this.buffers(head)) {
      if (b.writable) continue;
      if (off < b.len) return b.addr + off;
      off -= b.len;
    }
    throw new RangeError(`mock driver: chain ${head} has no readable byte ${offset}`);
  }

  #take(): number {
    const id = this.#free.shift();
    if (id === undefined) throw new Error("mock driver: out of descriptors");
    return id;
  }

  /** Writes a raw descriptor at `table[index]`. */
  writeDesc(table: number, index: number, addr: number, len: number, flags: number, next: number) {
    const d = table + DESC_SIZE * index;
    this.mem.writeU64(d, BigInt(addr));
    this.mem.writeU32(d + 8, len);
    this.mem.writeU16(d + 12, flags);
    this.mem.writeU16(d + 14, next);
  }

  /** Puts `head` in the next available slot; `publish` also bumps `avail->idx`. */
  pushAvail(head: number, publish = true): void {
    this.mem.writeU16(this.rings.avail + 4 + 2 * (this.#availIdx % this.size), head);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    if (publish) this.publish();
  }

  /** Publishes `avail->idx`. */
  publish(): void {
    this.mem.writeU16(this.rings.avail + 2, this.#availIdx);
  }

  /** Driver's avail index. */
  get availIdx(): number {
    return this.#availIdx;
  }

  /** Collects used entries the device returned since the last call. */
  takeUsed(): MockUsed[] {
    const out: MockUsed[] = [];
    const usedIdx = this.mem.readU16(this.rings.used + 2);
    while (this.#lastUsed !== usedIdx) {
      const e = this.rings.used + 4 + USED_ELEM_SIZE * (this.#lastUsed % this.size);
      const head = this.mem.readU32(e);
      const len = this.mem.readU32(e + 4);
      this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
      const c = this.#chains.get(head);
      const written = new Uint8Array(len);
      if (c) {
        let off = 0;
        for (const w of c.writable) {
          if (off >= len) break;
          const n = Math.min(w.len, len - off);
          written.set(this.mem.slice(w.addr, n), off);
          off += n;
        }
        this.#chains.delete(head);
        this.#free.push(...c.descs);
      }
      out.push({ head, len, written });
    }
    return out;
  }

  /** `avail->flags` (e.g. VIRTQ_AVAIL_F_NO_INTERRUPT). */
  setAvailFlags(flags: number): void {
    this.mem.writeU16(this.rings.avail, flags);
  }
  /** `used_event` (EVENT_IDX: interrupt me when used idx passes this). */
  setUsedEvent(idx: number): void {
    this.mem.writeU16(this.rings.avail + 4 + 2 * this.size, idx & 0xffff);
  }
  /** `used->flags` as the device set it. */
  get usedFlags(): number {
    return this.mem.readU16(this.rings.used);
  }
  /** `avail_event` as the device set it (EVENT_IDX). */
  get availEvent(): number {
    return this.mem.readU16(this.rings.used + 4 + USED_ELEM_SIZE * this.size);
  }
}

/** Register access of a transport window (what a vCPU's MMIO exits do). */
export interface MmioWindow {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/**
 * A virtio-mmio driver (the §3.1.1 initialisation sequence, as Linux's
 * `virtio_mmio.c` performs it) over a transport window and fake memory.
 */
export class MockMmioDriver {
  readonly window: MmioWindow;
  readonly mem: GuestMemory;
  /** Queue drivers after {@link init}, index = queue index. */
  queues: MockQueueDriver[] = [];
  #areaStart: number;
  #area: number;
  #areaEnd: number;

  /**
   * @param area guest memory the driver may use for rings and buffers
   * @param areaSize its size
   */
  constructor(window: MmioWindow, mem: GuestMemory, area: number, areaSize: number) {
    this.window = window;
    this.mem = mem;
    this.#areaStart = area;
    this.#area = area;
    this.#areaEnd = area + areaSize;
  }

  /** 32-bit register read. */
  r32(offset: number): number {
    const b = new Uint8Array(4);
    this.window.read(offset, b);
    return new DataView(b.buffer).getUint32(0, true);
  }
  /** 32-bit register write. */
  w32(offset: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.window.write(offset, b);
  }
  /** Config space read of `len` bytes at `offset`. */
  config(offset: number, len: number): Uint8Array {
    const b = new Uint8Array(len);
    this.window.read(0x100 + offset, b);
    return b;
  }

  /** DeviceFeatures (both halves). */
  deviceFeatures(): bigint {
    this.w32(0x014, 0);
    const lo = this.r32(0x010);
    this.w32(0x014, 1);
    const hi = this.r32(0x010);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /**
   * Resets, negotiates `wanted ∩ offered` features, sets up `queueCount`
   * queues (size min(QueueNumMax, `queueSize`), each with `heapBytes` of
   * buffer space) and sets DRIVER_OK. Returns the negotiated features;
   * throws if the device refused FEATURES_OK.
   */
  init(wanted: bigint, queueCount: number, queueSize = 16, heapBytes = 0x4000): bigint {
    this.w32(0x070, 0);
    this.w32(0x070, 1);
    this.w32(0x070, 1 | 2);
    const features = this.deviceFeatures() & wanted;
    this.w32(0x024, 0);
    this.w32(0x020, Number(features & 0xffffffffn));
    this.w32(0x024, 1);
    this.w32(0x020, Number(features >> 32n));
    this.w32(0x070, 1 | 2 | 8);
    if ((this.r32(0x070) & 8) === 0) throw new Error("device refused FEATURES_OK");
    this.queues = [];
    this.#area = this.#areaStart; // a reset device has forgotten the old rings
    for (let i = 0; i < queueCount; i++) {
      this.w32(0x030, i);
      if (this.r32(0x044) !== 0) throw new Error(`queue ${i} already ready`);
      const max = this.r32(0x034);
      if (max === 0) throw new Error(`queue ${i} does not exist`);
      const size = Math.min(max, queueSize);
      const ringBytes = 16 * size + 6 + 2 * size + 4 + 6 + 8 * size;
      const base = Math.ceil(this.#area / 4096) * 4096;
      if (base + ringBytes + heapBytes > this.#areaEnd) throw new Error("mock driver: area full");
      const q = new MockQueueDriver(this.mem, size, base, base + ringBytes + 64, heapBytes);
      this.#area = base + ringBytes + 64 + heapBytes;
      this.w32(0x038, size);
      const split = (a: number) => [a % 2 ** 32, Math.floor(a / 2 ** 32)];
      const [dl, dh] = split(q.rings.desc), [al, ah] = split(q.rings.avail);
      const [ul, uh] = split(q.rings.used);
      this.w32(0x080, dl);
      this.w32(0x084, dh);
      this.w32(0x090, al);
      this.w32(0x094, ah);
      this.w32(0x0a0, ul);
      this.w32(0x0a4, uh);
      this.w32(0x044, 1);
      this.queues.push(q);
    }
    this.w32(0x070, 1 | 2 | 8 | 4);
    return features;
  }

  /** QueueNotify. */
  kick(queue: number): void {
    this.w32(0x050, queue);
  }

  /** Reads InterruptStatus and acknowledges it; returns the bits. */
  ackInterrupt(): number {
    const s = this.r32(0x060);
    if (s) this.w32(0x064, s);
    return s;
  }
}
