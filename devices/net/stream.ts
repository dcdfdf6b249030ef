/**
 * The QEMU attachment: QEMU's `-netdev stream` (and the older `-netdev
 * socket`) carries Ethernet frames over a stream socket, each preceded by
 * its length as a 4-byte big-endian integer (QEMU `net/stream.c`). skiff
 * listens on a Unix socket and QEMU connects with
 * `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`.
 *
 * {@link listenStream} binds the socket on the calling thread (so it exists
 * before QEMU starts) and hands it to the stack's loop, where
 * {@link StreamLink} accepts the peer and moves frames without blocking:
 * frames for the peer are gathered into one write per loop turn, and when
 * the peer does not keep up they queue up to a bound, then are dropped (the
 * guest's TCP resends). {@link serveStream} serves an already connected
 * `Deno.Conn` from the calling thread instead.
 *
 * @module
 */

import { libc } from "../../kvm_ffi/libc.ts";
import { EPOLL, type Poller, type Watch } from "./poller.ts";
import type { NetStack } from "./service.ts";
import type { NetEngine, NetLink } from "./stack.ts";
import {
  EAGAIN,
  EINTR,
  lastErrno,
  listenUnix,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
} from "./sys.ts";

/** Largest frame accepted from the peer: 64 KiB MTU plus the Ethernet header. */
const MAX_FRAME = 65536 + 14;
/** Bytes queued for the peer before further frames are dropped (the guest's TCP resends). */
const MAX_QUEUED = 8 << 20;
/** The length prefix. */
const PREFIX = 4;
/** First size of the queue for the peer. */
const OUT_MIN = 256 * 1024;

/** Counters of one stream attachment. */
export interface StreamCounters {
  /** Frames read from the peer. */
  framesIn: number;
  /** Frames written to the peer. */
  framesOut: number;
  /** Frames for the peer dropped because too much was queued. */
  dropped: number;
}

/**
 * The loop's side of a stream attachment: accepts one peer on `listenFd`
 * (then closes the listener), attaches as the engine's link, and reports
 * its counters to `onEnd` when the peer disconnects, breaks the framing
 * (a length above 65 550 bytes), or {@link close} is called.
 */
export class StreamLink implements NetLink {
  /** Each frame is copied into the queue for the peer before {@link send} returns. */
  readonly consumesFrames = true;
  /** What went through. */
  readonly counters: StreamCounters = { framesIn: 0, framesOut: 0, dropped: 0 };
  #engine: NetEngine;
  #poller: Poller;
  #listenFd: number;
  #listenWatch: Watch | null;
  #fd = -1;
  #watch: Watch | null = null;
  #onEnd: (c: StreamCounters) => void;
  #in = new Uint8Array(4 * MAX_FRAME);
  #have = 0;
  /** Bytes for the peer: `#out[#outStart, #outStart + #queued)`, grown by doubling up to MAX_QUEUED. */
  #out = new Uint8Array(OUT_MIN);
  #outStart = 0;
  #queued = 0;
  #flushQueued = false;
  #waitingWritable = false;
  #ended = false;

  /** Takes ownership of the listening socket `listenFd`. */
  constructor(
    listenFd: number,
    engine: NetEngine,
    poller: Poller,
    onEnd: (c: StreamCounters) => void,
  ) {
    this.#listenFd = listenFd;
    this.#engine = engine;
    this.#poller = poller;
    this.#onEnd = onEnd;
    this.#listenWatch = poller.watch(listenFd, EPOLL.IN, () => this.#accept());
  }

  #accept(): void {
    const fd = libc.accept4(this.#listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; // EAGAIN (or the peer gave up): wait for the next one
    this.#closeListener();
    this.#fd = fd;
    this.#watch = this.#poller.watch(fd, EPOLL.IN, (ev) => this.#event(ev));
    this.#engine.attach(this);
  }

  #closeListener(): void {
    if (!this.#listenWatch) return;
    this.#listenWatch.close();
    this.#listenWatch = null;
    libc.close(this.#listenFd);
  }

  #event(ev: number): void {
    if (ev & (EPOLL.IN | EPOLL.ERR | EPOLL.HUP)) this.#readable();
    if (!this.#ended && this.#waitingWritable && ev & (EPOLL.OUT | EPOLL.ERR | EPOLL.HUP)) {
      this.#waitingWritable = false;
      this.#watch?.set(EPOLL.IN);
      this.#flush();
    }
  }

  #readable(): void {
    const buf = this.#in;
    const n = libc.read_n(
      this.#fd,
      buf.subarray(this.#have) as Uint8Array<ArrayBuffer>,
      BigInt(buf.length - this.#have),
    );
    if (n === 0) return this.close(); // the peer went away
    if (n < 0) {
      const e = lastErrno();
      if (e !== EAGAIN && e !== EINTR) this.close();
      return;
    }
    this.#have += n;
    let o = 0;
    while (this.#have - o >= PREFIX) {
      const len = ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
      if (len > MAX_FRAME) return this.close(); // a broken framing, not a frame
      if (this.#have - o - PREFIX < len) break;
      this.counters.framesIn++;
      this.#engine.input(buf.subarray(o + PREFIX, o + PREFIX + len));
      if (this.#ended) return;
      o += PREFIX + len;
    }
    buf.copyWithin(0, o, this.#have);
    this.#have -= o;
  }

  /** Queues one frame for the peer; the queue is written at the end of the loop's turn. */
  send(frame: Uint8Array): void {
    if (this.#ended || this.#fd < 0) return;
    const need = PREFIX + frame.length;
    if (this.#queued + need > MAX_QUEUED) {
      this.counters.dropped++;
      return;
    }
    let out = this.#out;
    if (this.#outStart + this.#queued + need > out.length) {
      if (this.#queued + need <= out.length) {
        out.copyWithin(0, this.#outStart, this.#outStart + this.#queued);
      } else {
        let cap = out.length * 2;
        while (cap < this.#queued + need) cap *= 2;
        const bigger = new Uint8Array(cap);
        bigger.set(out.subarray(this.#outStart, this.#outStart + this.#queued));
        out = this.#out = bigger;
      }
      this.#outStart = 0;
    }
    const at = this.#outStart + this.#queued;
    const len = frame.length;
    out[at] = len >>> 24;
    out[at + 1] = (len >>> 16) & 255;
    out[at + 2] = (len >>> 8) & 255;
    out[at + 3] = len & 255;
    out.set(frame, at + PREFIX);
    this.#queued += need;
    this.counters.framesOut++;
    if (!this.#flushQueued && !this.#waitingWritable) {
      this.#flushQueued = true;
      this.#poller.defer(() => {
        this.#flushQueued = false;
        this.#flush();
      });
    }
  }

  #flush(): void {
    if (this.#ended || this.#queued === 0 || this.#waitingWritable) return;
    const chunk = this.#out.subarray(this.#outStart, this.#outStart + this.#queued);
    const n = libc.send_n(
      this.#fd,
      chunk as Uint8Array<ArrayBuffer>,
      BigInt(chunk.length),
      MSG_NOSIGNAL | MSG_DONTWAIT,
    );
    if (n < 0) {
      const e = lastErrno();
      if (e !== EAGAIN && e !== EINTR) return this.close();
    }
    const sent = Math.max(0, n);
    this.#queued -= sent;
    this.#outStart = this.#queued === 0 ? 0 : this.#outStart + sent;
    if (this.#queued > 0) {
      // The peer is slow: wait until its socket drains.
      this.#waitingWritable = true;
      this.#watch?.set(EPOLL.IN | EPOLL.OUT);
    }
  }

  /** Ends the attachment: detaches from the engine, closes the sockets, reports the counters. */
  close(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#engine.detach(this);
    this.#closeListener();
    if (this.#fd >= 0) {
      this.#watch?.close();
      libc.close(this.#fd);
    }
    this.#queued = 0;
    this.#onEnd({ ...this.counters });
  }
}

/**
 * Serves `stack` over one connected stream socket speaking QEMU's
 * length-prefixed framing, from the calling thread: frames read from `conn`
 * go to {@link NetStack.input}, frames from the stack are written to `conn`.
 * Attaches itself as the stack's link; resolves (with the counters) when
 * the peer closes the connection or sends a length above 65 550 bytes
 * (which is a protocol error, not a frame), and detaches then. Prefer
 * {@link listenStream}, which moves the frames inside the stack's loop.
 */
export async function serveStream(stack: NetStack, conn: Deno.Conn): Promise<StreamCounters> {
  const counters: StreamCounters = { framesIn: 0, framesOut: 0, dropped: 0 };
  let queue: Uint8Array[] = [];
  let queued = 0;
  let writing = false;
  let closed = false;
  const flush = async () => {
    writing = true;
    try {
      while (queue.length > 0 && !closed) {
        const parts = queue;
        queue = [];
        const buf = new Uint8Array(queued);
        queued = 0;
        let o = 0;
        for (const p of parts) {
          buf.set(p, o);
          o += p.length;
        }
        for (let w = 0; w < buf.length;) w += await conn.write(buf.subarray(w));
      }
    } catch {
      closed = true;
    } finally {
      writing = false;
    }
  };
  const link = {
    send(frame: Uint8Array) {
      if (closed) return;
      if (queued + frame.length + PREFIX > MAX_QUEUED) {
        counters.dropped++;
        return;
      }
      const hdr = new Uint8Array(PREFIX);
      new DataView(hdr.buffer).setUint32(0, frame.length);
      queue.push(hdr, frame);
      queued += PREFIX + frame.length;
      counters.framesOut++;
      if (!writing) flush();
    },
  };
  stack.attach(link);
  const buf = new Uint8Array(4 * MAX_FRAME);
  let have = 0;
  try {
    for (;;) {
      const n = await conn.read(buf.subarray(have));
      if (n === null) break;
      have += n;
      let o = 0;
      while (have - o >= PREFIX) {
        const len = new DataView(buf.buffer, o, PREFIX).getUint32(0);
        if (len > MAX_FRAME) throw new Error(`stream: frame length ${len} is too large`);
        if (have - o - PREFIX < len) break;
        counters.framesIn++;
        stack.input(buf.subarray(o + PREFIX, o + PREFIX + len));
        o += PREFIX + len;
      }
      buf.copyWithin(0, o, have);
      have -= o;
    }
  } catch {
    // The peer went away or broke the framing: end this attachment.
  } finally {
    closed = true;
    stack.detach();
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
  return counters;
}

/** A Unix socket QEMU connects to; see {@link listenStream}. */
export interface StreamListener extends AsyncDisposable {
  /** The socket path (give it to QEMU as `addr.path`). */
  readonly path: string;
  /** Resolves when the first (and only) peer has disconnected, or the listener is closed. */
  readonly done: Promise<StreamCounters>;
  /** Stops listening, drops the connection and removes the socket file. */
  close(): Promise<void>;
}

/**
 * Listens on the Unix socket `path` (bound before this returns) and serves
 * the first connection inside `stack`'s loop; start QEMU with
 * `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH
 * -device virtio-net-device,netdev=n0` (or `virtio-net-pci`).
 */
export function listenStream(stack: NetStack, path: string): StreamListener {
  const served = stack.serveStream(listenUnix(path));
  let closing: Promise<void> | null = null;
  const close = () =>
    closing ??= (async () => {
      await served.close();
      await Deno.remove(path).catch(() => {});
    })();
  return { path, done: served.done, close, [Symbol.asyncDispose]: close };
}
