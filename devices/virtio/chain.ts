/**
 * Byte-stream views of a {@link DescriptorChain}: a reader that gathers the
 * device-readable buffers and a writer that scatters into the
 * device-writable ones (after crosvm's `Reader`/`Writer`).
 *
 * All accesses go through {@link GuestMemory}; the chain's segments were
 * validated when it was popped, so these only fail if the memory map changed
 * in between (then {@link GuestMemoryError} propagates to the transport).
 *
 * Guest memory is shared with vCPUs that keep running while a device works,
 * so the reader only ever *copies* device-readable bytes into VMM-private
 * memory (`GuestMemory.read`); it hands out no views of them. Code that
 * parses a request parses the copy: validating a view and reading it again
 * would be a double fetch. The writer may write through views (writes are
 * fine), but nothing written is read back.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import type { DescriptorChain, Segment } from "./queue.ts";

/** Reading past the end of the readable buffers, or writing past the writable ones. */
export class ChainBoundsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChainBoundsError";
  }
}

class Cursor {
  #segs: readonly Segment[];
  #i = 0;
  #off = 0;
  #left: number;
  constructor(segs: readonly Segment[], total: number) {
    this.#segs = segs;
    this.#left = total;
  }
  get remaining(): number {
    return this.#left;
  }
  /** Up to `max` bytes of the current segment as [addr, len]; advances. */
  next(max: number): [number, number] | null {
    while (this.#i < this.#segs.length && this.#off >= this.#segs[this.#i].len) {
      this.#i++;
      this.#off = 0;
    }
    if (this.#i >= this.#segs.length || max <= 0) return null;
    const s = this.#segs[this.#i];
    const n = Math.min(max, s.len - this.#off);
    const at = s.addr + this.#off;
    this.#off += n;
    this.#left -= n;
    return [at, n];
  }
}

/** Gathers the device-readable bytes of a chain. */
export class ChainReader {
  #mem: GuestMemory;
  #cur: Cursor;
  constructor(mem: GuestMemory, chain: DescriptorChain) {
    this.#mem = mem;
    this.#cur = new Cursor(chain.readable, chain.readableLength);
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.#cur.remaining;
  }

  /** Copies up to `dest.length` bytes into `dest`; returns how many. */
  readInto(dest: Uint8Array): number {
    let done = 0;
    for (let s = this.#cur.next(dest.length); s; s = this.#cur.next(dest.length - done)) {
      this.#mem.read(s[0], dest.subarray(done, done + s[1]));
      done += s[1];
    }
    return done;
  }

  /** Exactly `n` bytes (copied); throws {@link ChainBoundsError} if fewer remain. */
  readExact(n: number): Uint8Array<ArrayBuffer> {
    if (n > this.remaining) {
      throw new ChainBoundsError(`need ${n} readable bytes, chain has ${this.remaining}`);
    }
    const out = new Uint8Array(n);
    this.readInto(out);
    return out;
  }

  /** Everything left (copied). */
  readAll(): Uint8Array<ArrayBuffer> {
    return this.readExact(this.remaining);
  }

  /** Skips `n` bytes (or what remains). */
  skip(n: number): void {
    let left = n;
    for (let s = this.#cur.next(left); s; s = this.#cur.next(left)) left -= s[1];
  }
}

/** Scatters bytes into the device-writable buffers of a chain. */
export class ChainWriter {
  #mem: GuestMemory;
  #cur: Cursor;
  #written = 0;
  constructor(mem: GuestMemory, chain: DescriptorChain) {
    this.#mem = mem;
    this.#cur = new Cursor(chain.writable, chain.writableLength);
  }

  /** Room left. */
  get remaining(): number {
    return this.#cur.remaining;
  }

  /** Bytes written so far (the `len` for the used ring). */
  get written(): number {
    return this.#written;
  }

  /** Writes as much of `src` as fits; returns how many bytes. */
  writeSome(src: Uint8Array): number {
    let done = 0;
    for (let s = this.#cur.next(src.length); s; s = this.#cur.next(src.length - done)) {
      this.#mem.write(s[0], src.subarray(done, done + s[1]));
      done += s[1];
    }
    this.#written += done;
    return done;
  }

  /** Writes all of `src`; throws {@link ChainBoundsError} (writing nothing) if it does not fit. */
  write(src: Uint8Array): void {
    if (src.length > this.remaining) {
      throw new ChainBoundsError(
        `need ${src.length} writable bytes, chain has ${this.remaining}`,
      );
    }
    this.writeSome(src);
  }

  /**
   * Zero-copy views of the next `n` writable bytes (fewer if less room), one
   * per guest buffer; counted as written. For writing only: the guest can
   * change these bytes at any time, so nothing may be read back from them.
   */
  slices(n: number): Uint8Array<ArrayBuffer>[] {
    const out: Uint8Array<ArrayBuffer>[] = [];
    let left = n;
    for (let s = this.#cur.next(left); s; s = this.#cur.next(left)) {
      out.push(this.#mem.slice(s[0], s[1]));
      left -= s[1];
      this.#written += s[1];
    }
    return out;
  }
}

/**
 * A VMM-private buffer a chain's device-readable bytes are copied into, once,
 * before anything parses them — how the FUSE adapters (virtio-fs, vhost-user
 * fs) hand requests to the server, which reads a name or a length more than
 * once. Reused from request to request (no allocation per request) and grown
 * on demand up to {@link limit}.
 */
export class RequestBuffer {
  /** Most bytes copied per request; a longer chain is cut here. */
  readonly limit: number;
  #buf: Uint8Array<ArrayBuffer>;

  /**
   * @param limit most bytes per request (e.g. `FuseServer.requestBufferSize`)
   * @param initial starting capacity (grows up to `limit`)
   */
  constructor(limit: number, initial = 64 << 10) {
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new RangeError(`request buffer limit ${limit} is not a positive integer`);
    }
    this.limit = limit;
    this.#buf = new Uint8Array(Math.min(limit, initial));
  }

  /**
   * Copies the device-readable bytes of `chain` — at most {@link limit}: a
   * request cannot be longer, and a guest must not make the VMM allocate
   * what it likes; the parser then sees a request shorter than its header
   * says and rejects it — and returns the copy. The result is a view of
   * this buffer, valid until the next call: consume it synchronously.
   */
  copy(mem: GuestMemory, chain: DescriptorChain): Uint8Array<ArrayBuffer> {
    const n = Math.min(chain.readableLength, this.limit);
    if (n > this.#buf.length) {
      this.#buf = new Uint8Array(Math.min(this.limit, Math.max(n, 2 * this.#buf.length)));
    }
    const out = this.#buf.subarray(0, n);
    new ChainReader(mem, chain).readInto(out);
    return out;
  }
}
