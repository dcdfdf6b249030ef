/**
 * Split virtqueues (virtio 1.2 §2.7), device side, after rust-vmm
 * `virtio-queue`: the queue holds only its configuration and ring positions;
 * guest memory is passed to every call that touches the rings.
 *
 * Everything the guest supplies — ring addresses, descriptor addresses and
 * lengths, `next` links, indirect tables, the available index — is checked
 * before use. A violation throws {@link VirtqueueError} (typed, with a
 * {@link VirtqueueErrorKind}); the transport catches it and sets
 * DEVICE_NEEDS_RESET (§2.1.2) instead of letting the guest crash the VMM.
 *
 * The rings are guest memory that running vCPUs can change at any moment,
 * so each field is read exactly once into a local, and that local is what
 * gets checked and used (a second read could return another value than the
 * one validated); nothing the device wrote is read back.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import { GuestMemoryError } from "../../hv/memory.ts";
import { fullFence } from "./fence.ts";

/** §2.7.5: this descriptor continues via the `next` field. */
export const VIRTQ_DESC_F_NEXT = 1;
/** §2.7.5: this descriptor is device write-only (otherwise device read-only). */
export const VIRTQ_DESC_F_WRITE = 2;
/** §2.7.5.3: the buffer holds a table of indirect descriptors. */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** §2.7.6: driver asks the device not to interrupt (used without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** §2.7.8: device asks the driver not to notify (used without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** §2.7: the largest split-queue size. */
export const MAX_QUEUE_SIZE = 32768;
/** §2.7.5: bytes per descriptor (`le64 addr; le32 len; le16 flags; le16 next`). */
export const DESC_SIZE = 16;
/** §2.7.8: bytes per used element (`le32 id; le32 len`). */
export const USED_ELEM_SIZE = 8;

/** What was wrong with a queue or a descriptor chain. */
export type VirtqueueErrorKind =
  /** Queue size, ready state or ring addresses are not usable. */
  | "bad-queue-config"
  /** A ring lies (partly) outside guest memory. */
  | "ring-out-of-memory"
  /** The available index moved by more than the queue size. */
  | "bad-avail-index"
  /** A head or `next` index ≥ the queue (or indirect table) size. */
  | "bad-descriptor-index"
  /** A descriptor's buffer lies (partly) outside guest memory. */
  | "buffer-out-of-memory"
  /** The chain visits more descriptors than there are (a loop). */
  | "chain-too-long"
  /** An indirect table of bad size, nested, or chained with `next`. */
  | "bad-indirect"
  /** A device-readable descriptor after a device-writable one (§2.7.4.2). */
  | "readable-after-writable"
  /** The chain's byte total overflows 32 bits. */
  | "chain-length-overflow"
  /** A used-ring entry names a head that is not outstanding. */
  | "bad-used-entry";

/** A guest violation of the virtqueue protocol; the transport turns it into DEVICE_NEEDS_RESET. */
export class VirtqueueError extends Error {
  /** Machine-readable kind. */
  readonly kind: VirtqueueErrorKind;
  constructor(kind: VirtqueueErrorKind, message: string) {
    super(`virtqueue: ${message}`);
    this.name = "VirtqueueError";
    this.kind = kind;
  }
}

/** One guest buffer of a chain: guest-physical address and byte length. */
export interface Segment {
  /** Guest-physical address. */
  readonly addr: number;
  /** Length in bytes (may be 0). */
  readonly len: number;
}

/**
 * A validated descriptor chain: its head index (what goes back in the used
 * ring) and its buffers, device-readable ones first, then device-writable
 * ones. Every segment has already been checked to lie inside guest memory.
 */
export class DescriptorChain {
  /** Index of the head descriptor in the descriptor table. */
  readonly head: number;
  /** Device-readable buffers, in chain order. */
  readonly readable: readonly Segment[];
  /** Device-writable buffers, in chain order. */
  readonly writable: readonly Segment[];
  /** Sum of the readable lengths. */
  readonly readableLength: number;
  /** Sum of the writable lengths. */
  readonly writableLength: number;
  constructor(head: number, readable: Segment[], writable: Segment[]) {
    this.head = head;
    this.readable = readable;
    this.writable = writable;
    this.readableLength = readable.reduce((n, s) => n + s.len, 0);
    this.writableLength = writable.reduce((n, s) => n + s.len, 0);
  }
}

/** Serialisable queue state (positions and configuration), for snapshots. */
export interface QueueState {
  maxSize: number;
  size: number;
  ready: boolean;
  descTable: number;
  availRing: number;
  usedRing: number;
  nextAvail: number;
  nextUsed: number;
  eventIdx: boolean;
  signalledUsed: number | null;
  outstanding: number;
}

/** `(u16)(new - event - 1) < (u16)(new - old)`: §2.7.10 `vring_need_event`. */
export function vringNeedEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * A split virtqueue. The transport sets `size`, the three ring addresses and
 * `ready` from the driver's register writes; the device pops chains and
 * returns them through the used ring.
 */
export class Queue {
  /** Largest size the device offers (QueueNumMax). */
  readonly maxSize: number;
  /** Size the driver chose (QueueNum); a power of two ≤ {@link maxSize}. */
  size: number;
  /** QueueReady. */
  ready = false;
  /** Guest-physical address of the descriptor table (QueueDesc). */
  descTable = 0;
  /** Guest-physical address of the available ring (QueueDriver). */
  availRing = 0;
  /** Guest-physical address of the used ring (QueueDevice). */
  usedRing = 0;
  /** VIRTIO_F_EVENT_IDX was negotiated (§2.7.10). */
  eventIdx = false;
  #nextAvail = 0;
  #nextUsed = 0;
  /** Used index when the driver was last notified (null: never, so notify). */
  #signalledUsed: number | null = null;
  /** Chains popped but not yet returned. */
  #outstanding = 0;

  /** @param maxSize QueueNumMax: a power of two in 1..32768 */
  constructor(maxSize: number) {
    if (
      !Number.isInteger(maxSize) || maxSize < 1 || maxSize > MAX_QUEUE_SIZE ||
      (maxSize & (maxSize - 1)) !== 0
    ) {
      throw new RangeError(`queue max size ${maxSize} is not a power of two in 1..32768`);
    }
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  /** Next available-ring position the device will read (free-running u16). */
  get nextAvail(): number {
    return this.#nextAvail;
  }
  /** Next used-ring position the device will write (free-running u16). */
  get nextUsed(): number {
    return this.#nextUsed;
  }
  /** Chains popped and not yet added to the used ring. */
  get outstanding(): number {
    return this.#outstanding;
  }

  /** Back to the state after device reset (§2.4): not ready, default size, positions 0. */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.descTable = 0;
    this.availRing = 0;
    this.usedRing = 0;
    this.eventIdx = false;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#signalledUsed = null;
    this.#outstanding = 0;
  }

  /**
   * Why the configuration is unusable in `mem`, or null when it is fine:
   * size a power of two ≤ max, rings aligned (§2.7: 16/2/4) and wholly inside
   * guest memory.
   */
  configError(mem: GuestMemory): string | null {
    const n = this.size;
    if (!Number.isInteger(n) || n < 1 || n > this.maxSize || (n & (n - 1)) !== 0) {
      return `queue size ${n} is not a power of two in 1..${this.maxSize}`;
    }
    const rings: [string, number, number, number][] = [
      ["descriptor table", this.descTable, DESC_SIZE * n, 16],
      ["available ring", this.availRing, 6 + 2 * n, 2],
      ["used ring", this.usedRing, 6 + USED_ELEM_SIZE * n, 4],
    ];
    for (const [what, addr, len, align] of rings) {
      if (addr % align !== 0) return `${what} at ${hex(addr)} is not ${align}-byte aligned`;
      if (!mem.contains(addr, len)) return `${what} ${hex(addr)}+${len} is outside guest memory`;
    }
    return null;
  }

  /** Throws {@link VirtqueueError} unless the queue is ready and its configuration valid. */
  #check(mem: GuestMemory): void {
    if (!this.ready) throw new VirtqueueError("bad-queue-config", "queue is not ready");
    const why = this.configError(mem);
    if (why !== null) throw new VirtqueueError("ring-out-of-memory", why);
  }

  /** The driver's available index (`avail->idx`). */
  availIdx(mem: GuestMemory): number {
    return this.#read16(mem, this.availRing + 2);
  }

  /** The driver's `avail->flags`. */
  availFlags(mem: GuestMemory): number {
    return this.#read16(mem, this.availRing);
  }

  /** Number of chains the driver has made available and the device has not popped. */
  pending(mem: GuestMemory): number {
    this.#check(mem);
    // Read once: the driver may move it at any time; the error names the value checked.
    const idx = this.availIdx(mem);
    const n = (idx - this.#nextAvail) & 0xffff;
    if (n > this.size) {
      throw new VirtqueueError(
        "bad-avail-index",
        `available index ${idx} is ${n} ahead of ${this.#nextAvail}, ` +
          `more than queue size ${this.size}`,
      );
    }
    return n;
  }

  /**
   * Pops the next available chain, validated, or null when none is available.
   * Throws {@link VirtqueueError} on any protocol violation.
   */
  pop(mem: GuestMemory): DescriptorChain | null {
    if (this.pending(mem) === 0) return null;
    const slot = this.availRing + 4 + 2 * (this.#nextAvail % this.size);
    const head = this.#read16(mem, slot);
    const chain = this.#walk(mem, head);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    this.#outstanding++;
    return chain;
  }

  /** Gives back the last popped chain (it will be popped again), e.g. when it was too small. */
  undoPop(): void {
    if (this.#outstanding === 0) throw new RangeError("undoPop without an outstanding chain");
    this.#nextAvail = (this.#nextAvail - 1) & 0xffff;
    this.#outstanding--;
  }

  /** Reads and validates the chain starting at `head`. */
  #walk(mem: GuestMemory, head: number): DescriptorChain {
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let total = 0;
    const add = (addr: number, len: number, flags: number, where: string): void => {
      if (len > 0 && !mem.contains(addr, len)) {
        throw new VirtqueueError(
          "buffer-out-of-memory",
          `${where}: buffer ${hex(addr)}+${len} is outside guest memory`,
        );
      }
      total += len;
      if (total > 0xffffffff) {
        throw new VirtqueueError("chain-length-overflow", `${where}: chain exceeds 4 GiB`);
      }
      // A zero-length buffer carries nothing; leaving it out means no device
      // code ever forms an address from an unchecked one.
      if (len === 0) return;
      if (flags & VIRTQ_DESC_F_WRITE) {
        writable.push({ addr, len });
      } else {
        if (writable.length > 0) {
          throw new VirtqueueError(
            "readable-after-writable",
            `${where}: device-readable buffer after a device-writable one`,
          );
        }
        readable.push({ addr, len });
      }
    };

    if (head >= this.size) {
      throw new VirtqueueError(
        "bad-descriptor-index",
        `head index ${head} ≥ queue size ${this.size}`,
      );
    }
    let index = head;
    // A chain can visit each descriptor at most once (§2.7.5.2: "MUST NOT
    // create a descriptor chain longer than the Queue Size"), so more visits
    // than the table has entries means a loop.
    for (let visited = 1;; visited++) {
      if (visited > this.size) {
        throw new VirtqueueError(
          "chain-too-long",
          `chain from head ${head} is longer than queue size ${this.size} (loop?)`,
        );
      }
      const d = this.descTable + DESC_SIZE * index;
      const addr = this.#read64(mem, d);
      const len = this.#read32(mem, d + 8);
      const flags = this.#read16(mem, d + 12);
      const next = this.#read16(mem, d + 14);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // §2.7.5.3.1: the driver MUST NOT set INDIRECT and NEXT together.
        if (flags & VIRTQ_DESC_F_NEXT) {
          throw new VirtqueueError(
            "bad-indirect",
            `descriptor ${index}: INDIRECT together with NEXT`,
          );
        }
        // Without NEXT the table ends the chain, so at most one table is
        // walked per chain and the walk stays bounded.
        this.#walkIndirect(mem, addr, len, index, add);
        break;
      }
      add(addr, len, flags, `descriptor ${index}`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= this.size) {
        throw new VirtqueueError(
          "bad-descriptor-index",
          `descriptor ${index}: next ${next} ≥ queue size ${this.size}`,
        );
      }
      index = next;
    }
    return new DescriptorChain(head, readable, writable);
  }

  #walkIndirect(
    mem: GuestMemory,
    table: number,
    len: number,
    from: number,
    add: (addr: number, len: number, flags: number, where: string) => void,
  ): void {
    // §2.7.5.3: the table is len/16 descriptors; len must be a non-zero multiple of 16.
    if (len === 0 || len % DESC_SIZE !== 0) {
      throw new VirtqueueError(
        "bad-indirect",
        `descriptor ${from}: indirect table length ${len} is not a non-zero multiple of 16`,
      );
    }
    const count = len / DESC_SIZE;
    if (count > MAX_QUEUE_SIZE) {
      throw new VirtqueueError(
        "bad-indirect",
        `descriptor ${from}: indirect table of ${count} entries exceeds ${MAX_QUEUE_SIZE}`,
      );
    }
    if (!mem.contains(table, len)) {
      throw new VirtqueueError(
        "buffer-out-of-memory",
        `descriptor ${from}: indirect table ${hex(table)}+${len} is outside guest memory`,
      );
    }
    let i = 0;
    for (let visited = 1;; visited++) {
      if (visited > count) {
        throw new VirtqueueError(
          "chain-too-long",
          `indirect table at ${hex(table)}: chain longer than its ${count} entries (loop?)`,
        );
      }
      const d = table + DESC_SIZE * i;
      const addr = this.#read64(mem, d);
      const dlen = this.#read32(mem, d + 8);
      const flags = this.#read16(mem, d + 12);
      const next = this.#read16(mem, d + 14);
      // §2.7.5.3.1: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor".
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        throw new VirtqueueError(
          "bad-indirect",
          `indirect table at ${hex(table)}: entry ${i} is itself indirect`,
        );
      }
      add(addr, dlen, flags, `indirect descriptor ${i} of ${from}`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      if (next >= count) {
        throw new VirtqueueError(
          "bad-descriptor-index",
          `indirect table at ${hex(table)}: entry ${i} next ${next} ≥ ${count}`,
        );
      }
      i = next;
    }
  }

  /**
   * Returns a chain to the driver: writes `{head, len}` into the used ring and
   * publishes the new used index (§2.7.8). `len` is the number of bytes the
   * device wrote into the chain's writable buffers.
   */
  addUsed(mem: GuestMemory, head: number, len: number): void {
    this.#check(mem);
    if (this.#outstanding === 0) {
      throw new VirtqueueError(
        "bad-used-entry",
        `used entry for head ${head} with none outstanding`,
      );
    }
    if (!Number.isInteger(head) || head < 0 || head >= this.size) {
      throw new VirtqueueError("bad-used-entry", `used head ${head} ≥ queue size ${this.size}`);
    }
    const elem = this.usedRing + 4 + USED_ELEM_SIZE * (this.#nextUsed % this.size);
    this.#write32(mem, elem, head);
    this.#write32(mem, elem + 4, len >>> 0);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    // The element must be visible before the index (§2.7.13.3). Stores from
    // one thread are seen in order on x86 (TSO), and this runs on one thread.
    this.#write16(mem, this.usedRing + 2, this.#nextUsed);
    this.#outstanding--;
  }

  /**
   * Whether the driver wants an interrupt for the used entries added since the
   * last time this returned true (§2.7.10 with EVENT_IDX, §2.7.7 flags
   * otherwise). Call once after a batch of {@link addUsed}.
   */
  needsNotification(mem: GuestMemory): boolean {
    this.#check(mem);
    // Our used index store before the driver's used_event (or flags) load: fence.ts.
    fullFence();
    const used = this.#nextUsed;
    if (this.eventIdx) {
      // used_event lives after the available ring's entries (§2.7.6).
      const usedEvent = this.#read16(mem, this.availRing + 4 + 2 * this.size);
      const old = this.#signalledUsed;
      this.#signalledUsed = used;
      if (old === null) return true;
      return vringNeedEvent(usedEvent, used, old);
    }
    this.#signalledUsed = used;
    return (this.availFlags(mem) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver to notify (or not) when it adds buffers (§2.7.7/§2.7.10):
   * the used ring's NO_NOTIFY flag, or with EVENT_IDX `avail_event` set to the
   * next index the device will look at. Returns true when, after enabling,
   * buffers are already pending (the caller should process them rather than
   * wait: the driver may have added them before it saw the flag).
   */
  setNotification(mem: GuestMemory, enable: boolean): boolean {
    this.#check(mem);
    if (this.eventIdx) {
      if (enable) {
        this.#write16(mem, this.usedRing + 4 + USED_ELEM_SIZE * this.size, this.#nextAvail);
      }
      // With EVENT_IDX "disable" is simply not moving avail_event forward.
    } else {
      // used->flags belongs to the device and NO_NOTIFY is its only defined bit
      // (§2.7.8): write it outright rather than read back what the guest can change.
      this.#write16(mem, this.usedRing, enable ? 0 : VIRTQ_USED_F_NO_NOTIFY);
    }
    if (!enable) return false;
    // Our avail_event (or flags) store before the driver's avail index load: fence.ts.
    fullFence();
    return this.pending(mem) > 0;
  }

  /** Serialisable state. */
  save(): QueueState {
    return {
      maxSize: this.maxSize,
      size: this.size,
      ready: this.ready,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      nextAvail: this.#nextAvail,
      nextUsed: this.#nextUsed,
      eventIdx: this.eventIdx,
      signalledUsed: this.#signalledUsed,
      outstanding: this.#outstanding,
    };
  }

  /** Restores state from {@link save}; throws RangeError on a mismatching or corrupt state. */
  restore(s: QueueState): void {
    if (s.maxSize !== this.maxSize) {
      throw new RangeError(`queue state max size ${s.maxSize} ≠ ${this.maxSize}`);
    }
    const u16 = (v: unknown) =>
      Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;
    if (!u16(s.nextAvail) || !u16(s.nextUsed) || !Number.isInteger(s.size)) {
      throw new RangeError(`queue state has bad positions: ${JSON.stringify(s)}`);
    }
    this.size = s.size;
    this.ready = s.ready;
    this.descTable = s.descTable;
    this.availRing = s.availRing;
    this.usedRing = s.usedRing;
    this.eventIdx = s.eventIdx;
    this.#nextAvail = s.nextAvail;
    this.#nextUsed = s.nextUsed;
    this.#signalledUsed = s.signalledUsed;
    this.#outstanding = s.outstanding;
  }

  /**
   * Sets the ring positions directly (vhost-user `SET_VRING_BASE`, or a
   * device taking over a queue whose rings the driver already used).
   */
  setPositions(nextAvail: number, nextUsed: number = nextAvail): void {
    this.#nextAvail = nextAvail & 0xffff;
    this.#nextUsed = nextUsed & 0xffff;
    this.#signalledUsed = null;
  }

  #read16(mem: GuestMemory, addr: number): number {
    try {
      return mem.readU16(addr);
    } catch (e) {
      throw asQueueError(e);
    }
  }
  #read32(mem: GuestMemory, addr: number): number {
    try {
      return mem.readU32(addr);
    } catch (e) {
      throw asQueueError(e);
    }
  }
  #read64(mem: GuestMemory, addr: number): number {
    let v: bigint;
    try {
      v = mem.readU64(addr);
    } catch (e) {
      throw asQueueError(e);
    }
    // Addresses above 2^53 cannot be guest memory; keep them out of range
    // without losing the "outside guest memory" verdict.
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  #write16(mem: GuestMemory, addr: number, v: number): void {
    try {
      mem.writeU16(addr, v);
    } catch (e) {
      throw asQueueError(e);
    }
  }
  #write32(mem: GuestMemory, addr: number, v: number): void {
    try {
      mem.writeU32(addr, v);
    } catch (e) {
      throw asQueueError(e);
    }
  }
}

function asQueueError(e: unknown): unknown {
  if (e instanceof GuestMemoryError) return new VirtqueueError("ring-out-of-memory", e.message);
  return e;
}
