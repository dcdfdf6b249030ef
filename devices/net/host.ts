/**
 * The host side of NAT as the engine sees it: non-blocking host sockets
 * that report readiness through callbacks, and a {@link Scheduler} for
 * timers and end-of-batch work. Nothing here returns a promise: the engine
 * runs inside a poll loop that never yields to the JavaScript event loop
 * (see `poller.ts`), so every continuation is a plain callback.
 *
 * {@link HostSockets} is an interface so tests can observe every address the
 * engine tries to reach (the fuzz test); `PollSockets` (`sockets.ts`) is the
 * real implementation over libc sockets and epoll.
 *
 * @module
 */

/** What a {@link HostTcp} reports to its owner; called from the loop, never re-entrantly. */
export interface HostTcpEvents {
  /** A `connectTcp` finished: `ok` is false when the host refused or failed. */
  connected(ok: boolean): void;
  /** Bytes, the end of the stream or an error can be read (only while reading is on). */
  readable(): void;
  /** A short {@link HostTcp.write} can continue. */
  writable(): void;
}

/** A non-blocking host TCP stream. */
export interface HostTcp {
  /** Where events go; an accepted connection's owner sets it. */
  events: HostTcpEvents;
  /**
   * Reads into `p`: the byte count (> 0), 0 when nothing is available now,
   * null at the end of the stream. Throws on a socket error (reset).
   */
  read(p: Uint8Array): number | null;
  /**
   * Writes some of `p` (only read during the call): the byte count. A short
   * count (0 included) arms one {@link HostTcpEvents.writable}. Throws on a
   * socket error (reset, broken pipe).
   */
  write(p: Uint8Array): number;
  /** Turns {@link HostTcpEvents.readable} on or off (flow control towards the host). */
  setReading(on: boolean): void;
  /** Half-closes the sending direction (FIN). */
  shutdownWrite(): void;
  /** Closes the socket; no more events. */
  close(): void;
}

/** A host UDP socket. */
export interface HostUdp {
  /** Sends one datagram (`p` is only read during the call; errors are silent, as UDP). */
  send(p: Uint8Array, hostname: string, port: number): void;
  /** Closes the socket; no more messages are delivered. */
  close(): void;
}

/** Called with each datagram a {@link HostUdp} receives; `data` is only valid during the call. */
export type UdpHandler = (data: Uint8Array, hostname: string, port: number) => void;

/** A listening host TCP socket (for `--publish`). */
export interface HostTcpListener {
  /** Stops listening. */
  close(): void;
  /** The bound address. */
  readonly addr: Deno.NetAddr;
}

/** Opens host sockets on behalf of the guest. */
export interface HostSockets {
  /**
   * Starts a non-blocking connect to `hostname:port` (an IPv4 literal);
   * `events.connected` reports the outcome later, never during this call.
   * Throws only when no socket can be made at all (e.g. EMFILE).
   */
  connectTcp(hostname: string, port: number, events: HostTcpEvents): HostTcp;
  /**
   * Opens a UDP socket. With `bind` it is bound to that address first (and
   * throws when the port is taken); without, the kernel binds it to an
   * ephemeral port on first send.
   */
  openUdp(onMessage: UdpHandler, bind?: { hostname: string; port: number }): HostUdp;
  /** Listens on `hostname:port` for `--publish`; throws when the port is taken. */
  listenTcp(
    hostname: string,
    port: number,
    onAccept: (conn: HostTcp) => void,
  ): HostTcpListener;
}

/** Time, timers and end-of-batch work for the engine. */
export interface Scheduler {
  /**
   * The current time in ms on a monotonic clock (only differences matter);
   * the loop reads the clock once per turn (a clock read costs as much as a
   * small syscall here).
   */
  now(): number;
  /** Runs `fn` once the current batch of events is processed, before the loop waits again. */
  defer(fn: () => void): void;
  /** Runs `fn` once after `ms`; returns a function that cancels it. */
  after(ms: number, fn: () => void): () => void;
}

/**
 * A {@link Scheduler} on the JavaScript event loop (microtasks and timers),
 * for an engine used in-process (unit tests with fake sockets). Its timers
 * keep the process alive until the engine is closed.
 */
export const eventLoopScheduler: Scheduler = {
  now: () => performance.now(),
  defer: queueMicrotask,
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};
