/**
 * The QEMU attachment: QEMU's `-netdev stream` (and the older `-netdev
 * socket`) carries Ethernet frames over a stream socket, each preceded by
 * its length as a 4-byte big-endian integer (QEMU `net/stream.c`). skiff
 * listens on a Unix socket and QEMU connects with
 * `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`.
 *
 * @module
 */

import type { NetStack } from "./stack.ts";

/** Largest frame accepted from the peer: 64 KiB MTU plus the Ethernet header. */
const MAX_FRAME = 65536 + 14;
/** Bytes queued for the peer before further frames are dropped (the guest's TCP resends). */
const MAX_QUEUED = 8 << 20;

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
 * Serves `stack` over one connected stream socket speaking QEMU's
 * length-prefixed framing: frames read from `conn` go to
 * {@link NetStack.input}, frames from the stack are written to `conn`.
 * Attaches itself as the stack's link; resolves (with the counters) when
 * the peer closes the connection or sends a length above 65 550 bytes
 * (which is a protocol error, not a frame), and detaches then.
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
      if (queued + frame.length + 4 > MAX_QUEUED) {
        counters.dropped++;
        return;
      }
      const hdr = new Uint8Array(4);
      new DataView(hdr.buffer).setUint32(0, frame.length);
      queue.push(hdr, frame);
      queued += 4 + frame.length;
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
      while (have - o >= 4) {
        const len = new DataView(buf.buffer, o, 4).getUint32(0);
        if (len > MAX_FRAME) throw new Error(`stream: frame length ${len} is too large`);
        if (have - o - 4 < len) break;
        counters.framesIn++;
        stack.input(buf.subarray(o + 4, o + 4 + len));
        o += 4 + len;
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
  /** Resolves when the first (and only) peer has disconnected. */
  readonly done: Promise<StreamCounters>;
  /** Stops listening, drops the connection and removes the socket file. */
  close(): Promise<void>;
}

/**
 * Listens on the Unix socket `path` and serves the first connection with
 * {@link serveStream}; start QEMU with
 * `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH
 * -device virtio-net-device,netdev=n0` (or `virtio-net-pci`).
 */
export function listenStream(stack: NetStack, path: string): StreamListener {
  const listener = Deno.listen({ transport: "unix", path });
  let conn: Deno.Conn | null = null;
  let closed = false;
  const done = (async () => {
    try {
      conn = await listener.accept();
    } catch {
      return { framesIn: 0, framesOut: 0, dropped: 0 };
    } finally {
      try {
        listener.close();
      } catch {
        // closed
      }
    }
    if (closed) {
      conn.close();
      return { framesIn: 0, framesOut: 0, dropped: 0 };
    }
    return await serveStream(stack, conn);
  })();
  const close = async () => {
    if (closed) return;
    closed = true;
    try {
      listener.close();
    } catch {
      // closed
    }
    try {
      (conn as Deno.Conn | null)?.close();
    } catch {
      // closed
    }
    await done;
    await Deno.remove(path).catch(() => {});
  };
  return { path, done, close, [Symbol.asyncDispose]: close };
}
