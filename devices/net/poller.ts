/**
 * The network stack's event loop: one epoll(7) instance over every file
 * descriptor the stack owns (the guest's frame source, host sockets,
 * listeners, wake-up eventfds), plus timers and end-of-batch work, in one
 * thread. A request/response through the stack costs one wake-up here,
 * where a Worker feeding the main thread's event loop cost two (as
 * slirp4netns, which also polls everything in one thread).
 *
 * The waits are synchronous `epoll_wait` calls, so the thread running a
 * {@link Poller} never returns to the JavaScript event loop while it waits:
 * nothing it drives may use promises or `setTimeout` (see `host.ts`).
 *
 * @module
 */

import { check, libc } from "../../kvm_ffi/libc.ts";
import type { Scheduler } from "./host.ts";
import { EINTR, lastErrno } from "./sys.ts";

/** epoll event bits (linux/eventpoll.h). */
export const EPOLL = { IN: 0x001, OUT: 0x004, ERR: 0x008, HUP: 0x010, RDHUP: 0x2000 } as const;
/** clock_gettime(2) clock (linux/time.h). */
const CLOCK_MONOTONIC = 1;
/** epoll_ctl(2) operations. */
const EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLL_CTL_MOD = 3;
const EPOLL_CLOEXEC = 0o2000000;
/**
 * `struct epoll_event` is packed on x86-64 (linux/eventpoll.h,
 * EPOLL_PACKED): u32 events, then u64 data at offset 4.
 */
const EVENT_SIZE = 12;
const MAX_EVENTS = 256;
/** Deferred callbacks run per turn before the rest waits for the next one (a loop guard). */
const MAX_DEFERRED = 65536;

/** Called with the ready event bits of a watched fd. */
export type WatchHandler = (events: number) => void;

/** One fd registered with a {@link Poller}. */
export interface Watch {
  /** The fd. */
  readonly fd: number;
  /** Changes the events waited for (0 waits for nothing but errors and hang-ups). */
  set(events: number): void;
  /** Removes the fd from the poller (does not close it). */
  close(): void;
}

interface Entry {
  gen: number;
  events: number;
  handler: WatchHandler;
}

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/** An epoll loop with timers and deferred work; also the engine's {@link Scheduler}. */
export class Poller implements Scheduler {
  #epfd: number;
  #entries = new Map<number, Entry>();
  #gen = 0;
  #buf = new Uint8Array(EVENT_SIZE * MAX_EVENTS);
  #dv = new DataView(this.#buf.buffer);
  #ctl = new Uint8Array(EVENT_SIZE);
  #ctlDv = new DataView(this.#ctl.buffer);
  #timers: Timer[] = [];
  #timerSeq = 0;
  #deferred: (() => void)[] = [];
  #onError: (e: unknown) => void;
  /** A `struct timespec` for clock_gettime: seconds and nanoseconds as 64-bit words. */
  #ts = new Int32Array(4);
  #tsBytes = new Uint8Array(this.#ts.buffer);
  #now = 0;
  #closed = false;

  /** `onError` receives exceptions thrown by handlers (the loop keeps running). */
  constructor(onError: (e: unknown) => void = (e) => console.error("skiff net loop:", e)) {
    this.#epfd = check("epoll_create1", libc.epoll_create1(EPOLL_CLOEXEC));
    this.#onError = onError;
    this.#readClock();
  }

  /**
   * CLOCK_MONOTONIC in ms, straight from clock_gettime (cheaper here than
   * `performance.now()`; seconds since boot fit the low word).
   */
  #readClock(): void {
    libc.clock_gettime(CLOCK_MONOTONIC, this.#tsBytes);
    this.#now = (this.#ts[0] >>> 0) * 1000 + this.#ts[2] / 1e6;
  }

  /** Registers `fd` for `events`; `handler` gets the ready bits. */
  watch(fd: number, events: number, handler: WatchHandler): Watch {
    if (this.#entries.has(fd)) throw new Error(`poller: fd ${fd} is already watched`);
    const gen = this.#gen = (this.#gen + 1) >>> 0;
    this.#control(EPOLL_CTL_ADD, fd, events, gen);
    const entry: Entry = { gen, events, handler };
    this.#entries.set(fd, entry);
    let open = true;
    return {
      fd,
      set: (ev: number) => {
        if (!open || entry.events === ev) return;
        entry.events = ev;
        this.#control(EPOLL_CTL_MOD, fd, ev, gen);
      },
      close: () => {
        if (!open) return;
        open = false;
        if (this.#entries.get(fd) === entry) this.#entries.delete(fd);
        if (!this.#closed) libc.epoll_ctl(this.#epfd, EPOLL_CTL_DEL, fd, this.#ctl);
      },
    };
  }

  #control(op: number, fd: number, events: number, gen: number): void {
    this.#ctlDv.setUint32(0, events, true);
    // data: the fd in the low word, a generation in the high word, so an
    // event for a closed fd is never delivered to a new owner of its number.
    this.#ctlDv.setUint32(4, fd, true);
    this.#ctlDv.setUint32(8, gen, true);
    check(`epoll_ctl(fd ${fd})`, libc.epoll_ctl(this.#epfd, op, fd, this.#ctl));
  }

  /** Runs `fn` after the current batch, before the next wait. */
  defer(fn: () => void): void {
    this.#deferred.push(fn);
  }

  /** Runs `fn` once after `ms`; returns a canceller. */
  after(ms: number, fn: () => void): () => void {
    const t: Timer = { at: this.#now + ms, seq: this.#timerSeq++, fn, cancelled: false };
    this.#push(t);
    return () => {
      t.cancelled = true;
    };
  }

  /** The time (ms, CLOCK_MONOTONIC) read when the current turn's wait ended. */
  now(): number {
    return this.#now;
  }

  /** Whether work is queued that must run without waiting. */
  get busy(): boolean {
    return this.#deferred.length > 0;
  }

  /**
   * One turn: waits for events (up to the next timer, or `maxWaitMs` when
   * that is sooner; -1 waits without a bound), dispatches them, runs due
   * timers, then the deferred work. Returns the number of fd events.
   */
  turn(maxWaitMs = -1): number {
    let timeout = maxWaitMs;
    if (this.#deferred.length > 0) timeout = 0;
    else {
      const next = this.#nextTimer();
      if (next) {
        const ms = Math.max(0, Math.ceil(next.at - this.#now));
        timeout = timeout < 0 ? ms : Math.min(timeout, ms);
      }
    }
    const n = libc.epoll_wait(this.#epfd, this.#buf, MAX_EVENTS, timeout);
    this.#readClock();
    if (n < 0) {
      const e = lastErrno();
      if (e !== EINTR) throw new Error(`epoll_wait failed: errno ${e}`);
    }
    const dv = this.#dv;
    for (let i = 0; i < n; i++) {
      const o = i * EVENT_SIZE;
      const ev = dv.getUint32(o, true);
      const entry = this.#entries.get(dv.getUint32(o + 4, true));
      if (!entry || entry.gen !== dv.getUint32(o + 8, true)) continue; // closed meanwhile
      try {
        entry.handler(ev);
      } catch (e) {
        this.#onError(e);
      }
    }
    this.#runTimers();
    this.#runDeferred();
    return Math.max(0, n);
  }

  #runTimers(): void {
    const now = this.#now;
    for (let t = this.#nextTimer(); t && t.at <= now; t = this.#nextTimer()) {
      this.#pop();
      try {
        t.fn();
      } catch (e) {
        this.#onError(e);
      }
    }
  }

  #runDeferred(): void {
    // Work deferred by deferred work runs in the same pass, up to a bound.
    const q = this.#deferred;
    let i = 0;
    for (; i < q.length && i < MAX_DEFERRED; i++) {
      try {
        q[i]();
      } catch (e) {
        this.#onError(e);
      }
    }
    if (i === q.length) q.length = 0;
    else q.splice(0, i);
  }

  /** The earliest live timer (cancelled ones are dropped on the way). */
  #nextTimer(): Timer | undefined {
    while (this.#timers.length > 0 && this.#timers[0].cancelled) this.#pop();
    return this.#timers[0];
  }

  // A binary min-heap on (at, seq).
  #less(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  #push(t: Timer): void {
    const h = this.#timers;
    h.push(t);
    for (let i = h.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (!this.#less(h[i], h[p])) break;
      const t = h[i];
      h[i] = h[p];
      h[p] = t;
      i = p;
    }
  }

  #pop(): void {
    const h = this.#timers;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    for (let i = 0;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < h.length && this.#less(h[l], h[m])) m = l;
      if (r < h.length && this.#less(h[r], h[m])) m = r;
      if (m === i) break;
      const t = h[i];
      h[i] = h[m];
      h[m] = t;
      i = m;
    }
  }

  /** Closes the epoll fd; watched fds are not closed (their owners close them). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#entries.clear();
    this.#timers = [];
    this.#deferred = [];
    libc.close(this.#epfd);
  }
}
