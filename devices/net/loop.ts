/**
 * The network stack's loop, the part that runs in its Worker
 * (`loop_worker.ts`): one {@link Poller} over the guest's frame sources (a
 * TAP fd, a QEMU stream socket, a frame ring from the host thread) and every
 * host socket of the {@link NetEngine}, so a request/response through the
 * stack costs one wake-up. The host thread talks to it through
 * {@link LoopCommand} messages (each announced by a counter in shared
 * memory and a control eventfd, so a loop blocked in epoll_wait notices
 * them) and reads its counters from shared memory.
 *
 * @module
 */

import { libc } from "../../kvm_ffi/libc.ts";
import type { NetConfig } from "./config.ts";
import { EPOLL, Poller, type Watch } from "./poller.ts";
import { FrameRing, type FrameRingBuffers } from "./ring.ts";
import { PollSockets } from "./sockets.ts";
import { NetEngine, type NetLink } from "./stack.ts";
import { type StreamCounters, StreamLink } from "./stream.ts";
import { TapLink } from "./tap.ts";

/** prctl(2) through syscall(2): the x86-64 number (asm/unistd_64.h) and the option (linux/prctl.h). */
const SYS_PRCTL = 157n, PR_SET_TIMERSLACK = 29n;
/**
 * The loop thread's timer slack: how late the kernel may fire a timeout of
 * its epoll_wait (the delayed ACK's ~1 ms, the 25 ms tick). A timeout
 * shorter than the scheduler tick (4 ms at HZ=250) otherwise becomes the
 * CPU's next timer event: arming it reprograms the clock event device and
 * cancelling it (a reply carried the ACK) reprograms it back, which in a VM
 * (TSC-deadline MSR writes) cost ~10 µs of CPU per request/response — half
 * the loop's time per transaction. With a slack of one tick the timeout
 * fires with the next tick instead; only timeouts move (a delayed ACK is
 * due within 1–5 ms, still far below the 40 ms of Linux peers), never a
 * wake-up for I/O.
 */
const TIMER_SLACK_NS = 4_000_000n;

/** Control words shared by the host thread and the loop (Int32Array indices). */
export const CONTROL = {
  /** Commands posted by the host thread (incremented before each postMessage). */
  POSTED: 0,
} as const;

/** The first message: everything the loop needs to start. */
export interface LoopInit {
  t: "init";
  config: NetConfig;
  /** `--publish` sockets bound by the host thread, by requested address (see `sockets.ts`). */
  prebound: [string, number[]][];
  /** Float64Array of the counters in `COUNTER_KEYS` order (config.ts). */
  counters: SharedArrayBuffer;
  /** Int32Array of {@link CONTROL} words. */
  control: SharedArrayBuffer;
  /** An eventfd the host thread writes after posting a command. */
  controlFd: number;
}

/** A command from the host thread. Those with an `id` are answered with a `done` event. */
export type LoopCommand =
  | { t: "tap"; id: number; fd: number }
  | { t: "stream"; id: number; fd: number }
  | {
    t: "port";
    id: number;
    toLoop: FrameRingBuffers;
    fromLoop: FrameRingBuffers;
    wakeFd: number;
  }
  | { t: "link"; id: number; on: boolean }
  | { t: "detach"; id: number; target: number }
  | { t: "reset"; id: number }
  | { t: "sync"; id: number }
  | { t: "close"; id: number };

/** What the loop tells the host thread. */
export type LoopEvent =
  | { t: "ready" }
  | { t: "error"; message: string }
  | { t: "done"; id: number }
  | { t: "stream-end"; id: number; counters: StreamCounters };

/** Something attached to the loop that can be detached by id. */
interface Attachment {
  close(): void;
}

/**
 * The loop's side of a frame-ring port: frames the host thread pushes are
 * fed to the engine when `wakeFd` fires; as the engine's link, frames for
 * the guest go into the other ring and the host thread is notified once per
 * turn.
 */
class RingPort implements NetLink, Attachment {
  /** Each frame is copied into the ring before {@link send} returns. */
  readonly consumesFrames = true;
  #engine: NetEngine;
  #poller: Poller;
  #toLoop: FrameRing;
  #fromLoop: FrameRing;
  #wakeFd: number;
  #watch: Watch;
  #eventBuf = new Uint8Array(8);
  #notifyQueued = false;
  #commandsWaiting: () => boolean;
  #closed = false;

  /**
   * @param commandsWaiting whether the host thread posted commands the loop
   *   has not handled yet: frames wait for them, as the host thread posted
   *   them first (a `link` command before the frames that expect the link).
   */
  constructor(
    engine: NetEngine,
    poller: Poller,
    cmd: Extract<LoopCommand, { t: "port" }>,
    commandsWaiting: () => boolean,
  ) {
    this.#engine = engine;
    this.#poller = poller;
    this.#toLoop = new FrameRing(cmd.toLoop);
    this.#fromLoop = new FrameRing(cmd.fromLoop);
    this.#wakeFd = cmd.wakeFd;
    this.#commandsWaiting = commandsWaiting;
    this.#watch = poller.watch(cmd.wakeFd, EPOLL.IN, () => this.#readable());
    this.drainLater(); // frames pushed before the loop knew the port
  }

  /** Takes the ring's frames in a later turn (after a command, frames may be waiting). */
  drainLater(): void {
    this.#poller.defer(() => this.#drain());
  }

  #readable(): void {
    libc.read_n(this.#wakeFd, this.#eventBuf, 8n); // reset the eventfd
    this.#drain();
  }

  #drain(): void {
    // The handler of the last waiting command calls drainLater, so frames left here are taken.
    if (this.#commandsWaiting()) return;
    for (let f = this.#toLoop.peek(); f && !this.#closed; f = this.#toLoop.peek()) {
      this.#engine.input(f);
      this.#toLoop.release();
    }
  }

  send(frame: Uint8Array): void {
    if (this.#closed || !this.#fromLoop.push(frame) || this.#notifyQueued) return;
    this.#notifyQueued = true;
    this.#poller.defer(() => {
      this.#notifyQueued = false;
      const w = this.#fromLoop.headWord;
      Atomics.notify(w.array, w.index);
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    this.#engine.detach(this);
  }
}

/** The loop: builds the engine from {@link LoopInit} and serves commands between turns. */
export class NetLoop {
  /** The engine. */
  readonly engine: NetEngine;
  #poller: Poller;
  #sockets: PollSockets;
  #post: (e: LoopEvent) => void;
  #counters: Float64Array<SharedArrayBuffer>;
  #controlWatch: Watch;
  #controlBuf = new Uint8Array(8);
  #attachments = new Map<number, Attachment>();
  #port: RingPort | null = null;
  /** Whether commands wait (the predicate `run` was given; none before it runs). */
  #commandsWaiting: () => boolean = () => false;
  #closed = false;

  /** Starts the engine (adopting the prebound `--publish` sockets); events go to `post`. */
  constructor(init: LoopInit, post: (e: LoopEvent) => void) {
    this.#counters = new Float64Array(init.counters);
    // This runs on the loop's own thread (the Worker's), which the slack is for.
    libc.syscall(SYS_PRCTL, PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0n, 0n, 0n, 0n); // best effort
    // Counters first, so the host thread never sees an event before what led to it.
    this.#post = (e) => {
      this.engine?.writeCounters(this.#counters);
      post(e);
    };
    this.#poller = new Poller((e) => this.engine?.internalError(e));
    this.#sockets = new PollSockets(this.#poller, new Map(init.prebound));
    try {
      this.engine = new NetEngine(init.config, {
        sockets: this.#sockets,
        scheduler: this.#poller,
      });
    } catch (e) {
      this.#sockets.close();
      this.#poller.close();
      throw e;
    }
    this.#sockets.close(); // prebound sockets no rule adopted (none, normally)
    const fd = init.controlFd;
    this.#controlWatch = this.#poller.watch(fd, EPOLL.IN, () => {
      libc.read_n(fd, this.#controlBuf, 8n); // the command itself arrives as a message
    });
    this.engine.writeCounters(this.#counters);
  }

  /** Whether {@link close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Runs turns until `stop()` is true (a command is waiting) or the loop is closed. */
  run(stop: () => boolean): void {
    this.#commandsWaiting = stop;
    while (!this.#closed && !stop()) {
      this.#poller.turn();
      this.engine.writeCounters(this.#counters);
    }
  }

  /** Carries out one command from the host thread (and answers it, also when it throws). */
  handle(cmd: LoopCommand): void {
    try {
      if (!this.#closed) this.#handle(cmd);
    } finally {
      this.#port?.drainLater();
      if (!this.#closed) this.engine.writeCounters(this.#counters);
      this.#post({ t: "done", id: cmd.id });
    }
  }

  #handle(cmd: LoopCommand): void {
    switch (cmd.t) {
      case "tap":
        this.#attachments.set(cmd.id, new TapLink(cmd.fd, this.engine, this.#poller));
        break;
      case "stream": {
        const id = cmd.id;
        const link = new StreamLink(cmd.fd, this.engine, this.#poller, (counters) => {
          this.#attachments.delete(id);
          this.#post({ t: "stream-end", id, counters });
        });
        this.#attachments.set(id, link);
        break;
      }
      case "port":
        this.#port?.close();
        this.#port = new RingPort(this.engine, this.#poller, cmd, () => this.#commandsWaiting());
        this.#attachments.set(cmd.id, this.#port);
        break;
      case "link":
        if (this.#port) {
          if (cmd.on) this.engine.attach(this.#port);
          else this.engine.detach(this.#port);
        }
        break;
      case "detach":
        this.#attachments.get(cmd.target)?.close();
        this.#attachments.delete(cmd.target);
        break;
      case "reset":
        this.engine.resetConnections();
        break;
      case "sync": // nothing to do: answering it publishes the counters of every turn before it
        break;
      case "close":
        this.close();
        break;
    }
  }

  /** Stops the engine (resets connections), ends every attachment, closes the epoll fd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void this.engine.close();
    for (const a of [...this.#attachments.values()]) a.close();
    this.#attachments.clear();
    this.#controlWatch.close();
    this.engine.writeCounters(this.#counters);
    this.#poller.close();
  }
}
