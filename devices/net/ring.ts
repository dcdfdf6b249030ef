/**
 * A single-producer, single-consumer ring of variable-length frames in a
 * SharedArrayBuffer, carrying Ethernet frames between a thread that owns a
 * NIC model (e.g. skiff's in-process virtio-net device on the main thread)
 * and the network stack's loop in its Worker. The producer copies a frame
 * in once; the consumer reads it in place and then releases it.
 *
 * Layout: a control block (write and read positions, drop count) and a data
 * area of `capacity` bytes (a power of two). Each record is a u32 length
 * (little-endian) and the frame, padded to 4 bytes; a record never wraps:
 * when it does not fit before the end, a wrap marker (or fewer than 4 spare
 * bytes) sends the consumer back to offset 0. Positions count bytes modulo
 * 2^32 and only their difference is used.
 *
 * @module
 */

/** Control words (Int32Array indices). */
const HEAD = 0, TAIL = 1, DROPPED = 2;
const CONTROL_BYTES = 16;
const WRAP = 0xffffffff;

/** The shared memory of one ring (send it to the other thread). */
export interface FrameRingBuffers {
  control: SharedArrayBuffer;
  data: SharedArrayBuffer;
}

/** One end of a frame ring (either end may be made from the same buffers). */
export class FrameRing {
  /** The shared memory, for the other end. */
  readonly buffers: FrameRingBuffers;
  #ctl: Int32Array<SharedArrayBuffer>;
  #data: Uint8Array<SharedArrayBuffer>;
  #dv: DataView<SharedArrayBuffer>;
  #mask: number;
  #pendingTail = 0;
  #peeked = false;

  /** A new ring of `capacity` bytes (a power of two, at least 4 KiB), or one end of `buffers`. */
  constructor(capacity: number | FrameRingBuffers) {
    if (typeof capacity === "number") {
      if (capacity < 4096 || (capacity & (capacity - 1)) !== 0 || capacity > 1 << 30) {
        throw new RangeError(`frame ring capacity must be a power of two ≥ 4096, got ${capacity}`);
      }
      capacity = {
        control: new SharedArrayBuffer(CONTROL_BYTES),
        data: new SharedArrayBuffer(capacity),
      };
    }
    this.buffers = capacity;
    this.#ctl = new Int32Array(capacity.control);
    this.#data = new Uint8Array(capacity.data);
    this.#dv = new DataView(capacity.data);
    this.#mask = capacity.data.byteLength - 1;
  }

  /** The largest frame {@link push} accepts. */
  get maxFrame(): number {
    return (this.#mask + 1) / 2 - 8;
  }

  /** Frames refused because the ring was full or the frame too large. */
  get dropped(): number {
    return Atomics.load(this.#ctl, DROPPED);
  }

  /** The control array and index the producer notifies (for `Atomics.waitAsync`). */
  get headWord(): { array: Int32Array<SharedArrayBuffer>; index: number } {
    return { array: this.#ctl, index: HEAD };
  }

  /** The producer's position (for `Atomics.waitAsync` on {@link headWord}). */
  get head(): number {
    return Atomics.load(this.#ctl, HEAD);
  }

  /** Whether nothing is waiting to be read. */
  get empty(): boolean {
    return Atomics.load(this.#ctl, HEAD) === Atomics.load(this.#ctl, TAIL);
  }

  /**
   * Producer: copies `frame` in; false (and counted) when the ring is full
   * or the frame is too large. Does not wake the consumer.
   */
  push(frame: Uint8Array): boolean {
    const cap = this.#mask + 1;
    const need = 4 + ((frame.length + 3) & ~3);
    let head = Atomics.load(this.#ctl, HEAD);
    const used = (head - Atomics.load(this.#ctl, TAIL)) >>> 0;
    const off = head & this.#mask;
    const room = cap - off;
    const total = need <= room ? need : room + need;
    if (frame.length > this.maxFrame || used + total > cap) {
      Atomics.add(this.#ctl, DROPPED, 1);
      return false;
    }
    if (need > room) {
      if (room >= 4) this.#dv.setUint32(off, WRAP, true);
      head = (head + room) | 0;
    }
    const at = head & this.#mask;
    this.#dv.setUint32(at, frame.length, true);
    this.#data.set(frame, at + 4);
    Atomics.store(this.#ctl, HEAD, (head + need) | 0);
    return true;
  }

  /**
   * Consumer: the next frame, a view into the ring valid until
   * {@link release}; null when empty.
   */
  peek(): Uint8Array | null {
    const head = Atomics.load(this.#ctl, HEAD);
    let tail = Atomics.load(this.#ctl, TAIL);
    for (;;) {
      if (tail === head) return null;
      const off = tail & this.#mask;
      const room = this.#mask + 1 - off;
      const len = room >= 4 ? this.#dv.getUint32(off, true) : WRAP;
      if (len === WRAP) {
        tail = (tail + room) | 0;
        Atomics.store(this.#ctl, TAIL, tail);
        continue;
      }
      this.#pendingTail = (tail + 4 + ((len + 3) & ~3)) | 0;
      this.#peeked = true;
      return this.#data.subarray(off + 4, off + 4 + len);
    }
  }

  /** Consumer: frees the frame returned by the last {@link peek}. */
  release(): void {
    if (!this.#peeked) return;
    this.#peeked = false;
    Atomics.store(this.#ctl, TAIL, this.#pendingTail);
  }
}
