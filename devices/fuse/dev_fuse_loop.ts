/**
 * The synchronous `/dev/fuse` request loops: blocking `read` of one request,
 * {@link FuseServer.handleRead}, `write` of the reply. They run on Workers
 * (see `dev_fuse.ts`) so the blocking read never stalls an event loop; one
 * request costs two FFI calls plus the backend's syscalls.
 *
 * Several readers: one primary reader ({@link serveDevFuse}) blocks in
 * `read`; helper readers ({@link serveOverflow}, each on its own clone of the
 * connection, FUSE_DEV_IOC_CLONE) sleep on an {@link OverflowGate} until the
 * primary sees requests keep waiting behind the ones it reads (a
 * zero-timeout `poll` on every 4th read, twice in a row), and then read
 * without blocking until the queue is empty.
 *
 * After each reply the primary looks for the next request for a few
 * microseconds before it blocks ({@link awaitSoon}): a sequential client's
 * next request then needs no wake-up of this thread.
 *
 * Why not all readers blocked in `read`: the kernel hands each request to the
 * reader that has waited longest, so with a client that issues one request
 * at a time every request would wake a different, cold thread — measured
 * here, two blocked readers served a sequential `stat` loop at 0.6× one
 * reader's rate, while two parallel clients ran 1.5× faster. The gate keeps a
 * sequential client on one thread and still lets a queue that builds up
 * (parallel clients) be served concurrently: with the gate, two parallel
 * `stat` loops ran 2× faster on two readers, a sequential one unchanged.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { Op } from "./protocol.ts";
import type { FuseProto, FuseServer } from "./server.ts";
import { r, sys } from "./sys.ts";

/** Counters of a finished loop. */
export interface LoopStats {
  requests: number;
  /** Why the loop ended: "unmounted" (ENODEV) or an errno name. */
  reason: string;
  /** With several readers: each one's requests, the primary's first. */
  byReader?: number[];
}

// Gate words (Int32 in a SharedArrayBuffer).
const G_TICKETS = 0; // wake-ups the primary handed out and no helper took yet
const G_PARKED = 1; // helpers asleep on the gate
const G_STOP = 2; // 1: the connection ended, helpers leave
const G_ALIVE = 3; // helpers still running their loop
const G_PROTO = 4; // 1 once the words below hold the negotiated protocol
const G_MAJOR = 5;
const G_MINOR = 6;
const G_FLAGS_LO = 7;
const G_FLAGS_HI = 8;
const G_MAX_WRITE = 9;
const G_SERVED = 10; // requests the primary has read (wraps), for close() to see progress
const G_WORDS = 16;

/**
 * The shared words through which the primary reader wakes helpers and
 * passes them the protocol it negotiated at INIT.
 */
export class OverflowGate {
  /** The buffer: post it to the helpers' threads. */
  readonly buffer: SharedArrayBuffer;
  #g: Int32Array;

  constructor(buffer = new SharedArrayBuffer(G_WORDS * 4)) {
    this.buffer = buffer;
    this.#g = new Int32Array(buffer);
  }

  /** Registers one more helper (before its thread starts). */
  addHelper(): void {
    Atomics.add(this.#g, G_ALIVE, 1);
  }

  /** Helpers still running. */
  get alive(): number {
    return Atomics.load(this.#g, G_ALIVE);
  }

  /** Whether some helper is asleep on the gate (worth a poll for a waiting request). */
  get parked(): boolean {
    return Atomics.load(this.#g, G_PARKED) > 0;
  }

  /** Wakes one sleeping helper. */
  wakeOne(): void {
    Atomics.add(this.#g, G_TICKETS, 1);
    Atomics.notify(this.#g, G_TICKETS, 1);
  }

  /** Tells every helper to leave (the connection ended). */
  stop(): void {
    Atomics.store(this.#g, G_STOP, 1);
    Atomics.add(this.#g, G_TICKETS, 1);
    Atomics.notify(this.#g, G_TICKETS);
  }

  get stopped(): boolean {
    return Atomics.load(this.#g, G_STOP) === 1;
  }

  /** Requests the primary has read so far (mod 2^32): whether it is still busy. */
  get served(): number {
    return Atomics.load(this.#g, G_SERVED);
  }

  /** The primary: `n` requests read so far (a plain store; readers only compare). */
  setServed(n: number): void {
    this.#g[G_SERVED] = n;
  }

  /**
   * A helper sleeps here until woken; returns false when it should leave. Takes
   * one ticket (a wake-up may find another helper took it first: sleep again).
   */
  park(): boolean {
    const g = this.#g;
    for (;;) {
      if (Atomics.load(g, G_STOP)) return false;
      const t = Atomics.load(g, G_TICKETS);
      if (t > 0) {
        if (Atomics.compareExchange(g, G_TICKETS, t, t - 1) === t) return true;
        continue;
      }
      Atomics.add(g, G_PARKED, 1);
      Atomics.wait(g, G_TICKETS, 0);
      Atomics.sub(g, G_PARKED, 1);
    }
  }

  /** A helper leaving its loop. */
  leave(): void {
    Atomics.sub(this.#g, G_ALIVE, 1);
    Atomics.notify(this.#g, G_ALIVE);
  }

  /**
   * Waits (at most `ms`) until every helper has left; returns whether they did. The
   * primary does this before closing the back-end they share.
   */
  waitHelpers(ms: number): boolean {
    const end = Date.now() + ms;
    for (;;) {
      const alive = Atomics.load(this.#g, G_ALIVE);
      if (alive <= 0) return true;
      const left = end - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.#g, G_ALIVE, alive, left);
    }
  }

  /** Publishes the protocol the primary negotiated (after INIT, before any wake-up). */
  publish(p: FuseProto): void {
    const g = this.#g;
    const flags = BigInt(p.flags);
    g[G_MAJOR] = p.major;
    g[G_MINOR] = p.minor;
    g[G_FLAGS_LO] = Number(flags & 0xffffffffn) | 0;
    g[G_FLAGS_HI] = Number(flags >> 32n) | 0;
    g[G_MAX_WRITE] = p.maxWrite;
    Atomics.store(g, G_PROTO, 1);
    Atomics.notify(g, G_PROTO);
  }

  /**
   * Resolves once the protocol is published (the INIT reply is written, so the
   * kernel has applied it). The kernel sends INIT as it mounts, so this comes
   * unless the server ends first: race it with that, and {@link unblock} the
   * waiter when the server wins.
   */
  async published(): Promise<void> {
    const w = Atomics.waitAsync(this.#g, G_PROTO, 0);
    if (w.async) await w.value;
  }

  /** Ends a {@link published} wait that lost its race (an unresolved wait would be left behind). */
  unblock(): void {
    Atomics.notify(this.#g, G_PROTO);
  }

  /** The published protocol, or null before INIT. */
  proto(): FuseProto | null {
    const g = this.#g;
    if (Atomics.load(g, G_PROTO) !== 1) return null;
    const flags = (BigInt(g[G_FLAGS_HI] >>> 0) << 32n) | BigInt(g[G_FLAGS_LO] >>> 0);
    return {
      major: g[G_MAJOR],
      minor: g[G_MINOR],
      flags: String(flags),
      maxWrite: g[G_MAX_WRITE],
    };
  }
}

const POLLIN = 1;
/** Consecutive looks that found another request waiting before a helper is woken. */
const BACKLOG_WAKE = 2;
/** The primary looks for waiting requests on every this many reads (a power of two). */
const BACKLOG_SAMPLE = 4;

/**
 * How long the primary looks for the next request after a reply before it
 * blocks in `read`. A client that waits for each reply (fio's psync reads, a
 * shell creating files) sends its next request microseconds after the reply:
 * found by looking, it costs no sleep and wake-up of this thread, which on
 * this host (a VM: waking an idle CPU is an IPI through the hypervisor) is
 * most of a small request's round trip when client and server run on
 * different CPUs. Measured (fuse_bench on 2 CPUs, one run without and one
 * with, ratios to bindfs in the same run): rand-read-4k 0.91 → 1.29 (24.9k →
 * 41.7k IOPS), create-stat-10k 0.88 → 1.13, find-usr 2.47 → 2.76; with
 * client and server pinned to one CPU the look costs 5-10% instead (a poll
 * and a yield per request). The network stack's loop
 * does not do this: the same look there halved `net-bench rr`, its four
 * processes competing for two CPUs.
 */
const REPLY_SPIN_MS = 0.03;
/** Replies after a look that found nothing before the next look: a slow client costs ~1/16 of a look per request. */
const SPIN_COOLDOWN = 16;

/**
 * Looks for a request on `fd` for up to {@link REPLY_SPIN_MS}, yielding the
 * CPU between looks (a client on this same CPU must get to run to send it).
 * Returns whether one is waiting.
 */
function awaitSoon(fd: number): boolean {
  const until = performance.now() + REPLY_SPIN_MS;
  for (;;) {
    if (pending(fd)) return true;
    if (performance.now() >= until) return false;
    sys.sched_yield();
  }
}

/** `struct pollfd` (int fd; short events; short revents) as two Int32 words, and its bytes. */
const pfd = new Int32Array(2);
const pfdBytes = new Uint8Array(pfd.buffer);

/** Whether a request is waiting on `fd` (poll with a zero timeout). */
function pending(fd: number): boolean {
  pfd[0] = fd;
  pfd[1] = POLLIN; // events = POLLIN, revents = 0
  return sys.poll(pfdBytes, 1n, 0) > 0 && ((pfd[1] >>> 16) & POLLIN) !== 0;
}

/**
 * Serves `fd` (an open `/dev/fuse`) until the connection ends (unmount →
 * ENODEV). Blocks the calling thread. With `gate`, wakes a helper whenever a
 * request is waiting behind the one just read, and publishes the protocol
 * after INIT.
 */
export function serveDevFuse(fd: number, server: FuseServer, gate?: OverflowGate): LoopStats {
  const req = new Uint8Array(Math.max(server.requestBufferSize, 8192 + 4096));
  const out = new Uint8Array(server.replyBufferSize);
  let requests = 0;
  let published = false;
  /** Reads in a row that found another request already waiting. */
  let backlog = 0;
  /** Replies left before the next look for a following request ({@link awaitSoon}). */
  let cooldown = 0;
  const len = BigInt(req.length);
  for (;;) {
    const n = r(sys.read(fd, req, len));
    if (n < 0) {
      // EINTR: a signal; ENOENT: the request was interrupted before we read it.
      if (n === -Errno.EINTR || n === -Errno.EAGAIN || n === -Errno.ENOENT) continue;
      return { requests, reason: n === -Errno.ENODEV ? "unmounted" : `errno ${-n}` };
    }
    requests++;
    gate?.setServed(requests);
    // A helper only when requests keep waiting: one queued behind the current one is
    // usually the kernel's background RELEASE of a sequential client, which one
    // thread serves faster than two (measured: a shell loop creating files on one
    // CPU ran at 0.75× with a helper woken for it).
    // The poll costs a system call, so only every BACKLOG_SAMPLE-th read looks; a queue
    // that persists is seen soon enough. Data requests do not count: READ/WRITE are
    // memory copies, and a second thread copying on the same few CPUs only slows the
    // first (measured: a helper taking readahead READs cut dd's rate by 15% on 2 CPUs).
    const op = n >= 8 ? req[4] | req[5] << 8 : 0;
    if (
      gate && published && (requests & (BACKLOG_SAMPLE - 1)) === 0 && gate.parked &&
      op !== Op.READ && op !== Op.WRITE
    ) {
      backlog = pending(fd) ? backlog + 1 : 0;
      if (backlog >= BACKLOG_WAKE) {
        backlog = 0;
        gate.wakeOne();
      }
    }
    const m = server.handleRead(req, n, out);
    if (m > 0) {
      // ENOENT here means the client gave up on the request (interrupted): nothing to do.
      sys.write(fd, out, BigInt(m));
    }
    if (gate && !published && server.proto) {
      gate.publish(server.proto);
      published = true;
    }
    if (m > 0 && server.proto !== null) {
      if (cooldown > 0) cooldown--;
      else if (!awaitSoon(fd)) cooldown = SPIN_COOLDOWN;
    }
  }
}

/**
 * A helper reader: sleeps on `gate`, and once woken serves `fd` (a
 * non-blocking clone of the connection) until no request is waiting. Returns
 * when the gate stops or the connection ends.
 */
export function serveOverflow(fd: number, server: FuseServer, gate: OverflowGate): LoopStats {
  const req = new Uint8Array(Math.max(server.requestBufferSize, 8192 + 4096));
  const out = new Uint8Array(server.replyBufferSize);
  const len = BigInt(req.length);
  let requests = 0;
  try {
    while (gate.park()) {
      if (!server.proto) {
        const p = gate.proto();
        if (p) server.useProto(p);
      }
      for (;;) {
        const n = r(sys.read(fd, req, len));
        if (n < 0) {
          if (n === -Errno.EAGAIN) break;
          if (n === -Errno.EINTR || n === -Errno.ENOENT) continue;
          return { requests, reason: n === -Errno.ENODEV ? "unmounted" : `errno ${-n}` };
        }
        requests++;
        const m = server.handleRead(req, n, out);
        if (m > 0) sys.write(fd, out, BigInt(m));
      }
    }
    return { requests, reason: "unmounted" };
  } finally {
    gate.leave();
  }
}
