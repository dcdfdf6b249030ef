/**
 * Large READ replies on `/dev/fuse` without a copy through this process:
 * the reply header is written into a pipe, the file's pages are spliced in
 * after it (page references, no copy) and the whole message is spliced into
 * `/dev/fuse` (fs/fuse/dev.c fuse_dev_splice_write), which copies it once
 * into the client's pages. The ordinary path copies twice: `pread` into our
 * buffer, `write` from it.
 *
 * The header carries the reply's length, so the byte count must be known
 * before the data: it is the file's size past the offset (one `statx`). If
 * the file shrank meanwhile the splice comes up short; the pipe is then
 * drained and the server replies the ordinary way, as it does for anything
 * else this path cannot take (a file that does not splice, a READ larger
 * than the pipe).
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import type { ReadSender } from "./server.ts";
import { AT, r, STATX, STATX_OFF, sys } from "./sys.ts";

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const PAGE = 4096;
const HEADER = 16;
const EMPTY = new Uint8Array(1);
const MAX_OFFSET = (1n << 63n) - 1n;

/** Splices large READ replies into one `/dev/fuse` fd (one per reader thread: it owns a pipe). */
export class SpliceSender implements ReadSender {
  readonly minSize: number;
  #dev: number;
  #rd: number;
  #wr: number;
  /** The largest payload the pipe holds behind a header (slots are pages; one for the header, one for an unaligned start). */
  #maxData: number;
  #hdr = new Uint8Array(HEADER);
  #hv = new DataView(this.#hdr.buffer);
  #off = new BigInt64Array(1);
  #offBytes = new Uint8Array(this.#off.buffer);
  #stx = new Uint8Array(256);
  #stxv = new DataView(this.#stx.buffer);
  #sink = new Uint8Array(64 << 10);

  private constructor(dev: number, rd: number, wr: number, capacity: number, minSize: number) {
    this.#dev = dev;
    this.#rd = rd;
    this.#wr = wr;
    this.#maxData = capacity - 2 * PAGE;
    this.minSize = minSize;
  }

  /**
   * A sender for `/dev/fuse` fd `dev` whose pipe holds `maxRead` bytes of data if
   * the system allows (an unprivileged pipe holds at most /proc/sys/fs/pipe-max-size,
   * 1 MiB by default; larger READs then take the ordinary path), or null when no
   * pipe can be made. READs below `minSize` are not worth the extra system calls.
   */
  static open(dev: number, maxRead: number, minSize = 64 << 10): SpliceSender | null {
    const fds = new Int32Array(2);
    if (r(sys.pipe2(new Uint8Array(fds.buffer), O_NONBLOCK | O_CLOEXEC)) < 0) return null;
    let capacity = -1;
    // Capacity rounds up to a power of two pages; try the need, then smaller.
    for (let want = maxRead + 2 * PAGE; want >= minSize + 2 * PAGE && capacity < 0; want >>= 1) {
      capacity = r(sys.fcntl(fds[1], F_SETPIPE_SZ, want));
    }
    if (capacity < minSize + 2 * PAGE) {
      sys.close(fds[0]);
      sys.close(fds[1]);
      return null;
    }
    return new SpliceSender(dev, fds[0], fds[1], capacity, minSize);
  }

  /** Closes the pipe. */
  close(): void {
    sys.close(this.#rd);
    sys.close(this.#wr);
  }

  send(uniqueLo: number, uniqueHi: number, fd: number, offset: bigint, size: number): number {
    // The offset came in as a u64; splice takes a signed loff_t.
    if (size > this.#maxData || offset < 0n || offset > MAX_OFFSET) return -1;
    const st = r(sys.statx(fd, EMPTY, AT.EMPTY_PATH, STATX.SIZE, this.#stx));
    if (st < 0) return -1;
    const end = this.#stxv.getBigUint64(STATX_OFF.size, true);
    if (offset >= end) return -1; // EOF: a header-only reply, nothing to splice
    const left = end - offset;
    const n = left < BigInt(size) ? Number(left) : size;
    const hv = this.#hv;
    hv.setUint32(0, HEADER + n, true);
    hv.setInt32(4, 0, true);
    hv.setUint32(8, uniqueLo, true);
    hv.setUint32(12, uniqueHi, true);
    if (r(sys.write(this.#wr, this.#hdr, BigInt(HEADER))) !== HEADER) return this.#abandon();
    this.#off[0] = offset;
    let got = 0;
    while (got < n) {
      const k = r(sys.splice(fd, this.#offBytes, this.#wr, null, BigInt(n - got), 0));
      if (k <= 0) return this.#abandon(); // shrank, unspliceable, or an I/O error
      got += k;
    }
    const sent = r(sys.splice(this.#rd, null, this.#dev, null, BigInt(HEADER + n), 0));
    if (sent === HEADER + n) return n;
    // The kernel takes the message out of the pipe before it looks for the request, so
    // ENOENT (the client gave up on it, as the write path sees too) leaves it empty.
    if (sent === -Errno.ENOENT) return n;
    return this.#abandon();
  }

  /** Empties the pipe (nothing of a half-built reply may precede the next); -1: send it the ordinary way. */
  #abandon(): number {
    while (r(sys.read(this.#rd, this.#sink, BigInt(this.#sink.length))) > 0) { /* drain */ }
    return -1;
  }
}
