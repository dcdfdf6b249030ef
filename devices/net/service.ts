/**
 * {@link NetStack}: the host thread's handle on a network stack whose engine
 * runs in its own Worker, in one poll loop with the guest's frame source and
 * every host socket (`loop.ts`). The handle binds the `--publish` ports
 * before anything starts (a taken port throws here), starts the loop, and
 * offers a narrow interface: attachments (a TAP fd, a QEMU stream listener,
 * or frames from this thread through {@link NetStack.input} and
 * {@link NetStack.attach}), counters read from shared memory, reset and
 * close.
 *
 * @module
 */

import { EFD, eventfd, libc } from "../../kvm_ffi/libc.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";
import {
  COUNTER_KEYS,
  type NetConfig,
  type NetCounters,
  publishLines,
  resolveConfig,
  type ResolvedNetConfig,
} from "./config.ts";
import { CONTROL, type LoopCommand, type LoopEvent, type LoopInit } from "./loop.ts";
import { FrameRing } from "./ring.ts";
import { preboundKey } from "./sockets.ts";
import type { NetLink } from "./stack.ts";
import type { StreamCounters } from "./stream.ts";
import { bindInet, SOCK_DGRAM, SOCK_STREAM } from "./sys.ts";

/** Bytes of each frame ring between this thread and the loop (frames up to 2 MiB − 8). */
const RING_BYTES = 4 << 20;

/** Options of {@link NetStack}. */
export interface NetStackOptions {
  /** Where the loop's errors are reported (default: `console.error`). */
  onError?: (message: string) => void;
}

/** Frames between this thread and the loop: rings both ways and the loop's wake-up eventfd. */
interface Port {
  id: number;
  toLoop: FrameRing;
  fromLoop: FrameRing;
  wakeFd: number;
  wakeQueued: boolean;
}

type Distribute<T> = T extends unknown ? Omit<T, "id"> : never;

const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/**
 * The user-mode network stack of one VM. The engine and its host sockets
 * live in a Worker that waits on all of them at once; this object starts,
 * feeds, observes and stops it.
 */
export class NetStack implements AsyncDisposable {
  /** The configuration with defaults applied. */
  readonly config: ResolvedNetConfig;
  /** Settles once the loop runs; rejects when it could not start. */
  readonly ready: Promise<void>;
  #worker: Worker | null;
  #control = new Int32Array(new SharedArrayBuffer(4 * 4));
  #controlFd: number;
  #counters = new Float64Array(new SharedArrayBuffer(8 * COUNTER_KEYS.length));
  #published: Deno.NetAddr[] = [];
  /** The bound host port of every `--publish` rule (TCP and UDP), in rule order. */
  #ports: number[] = [];
  #prebound: number[] = [];
  #started = false;
  #settleReady: (e?: Error) => void = () => {};
  #replies = new Map<number, () => void>();
  #streamEnds = new Map<number, (c: StreamCounters) => void>();
  #nextId = 1;
  #failed: Error | null = null;
  #onError: (message: string) => void;
  #port: Port | null = null;
  #link: NetLink | null = null;
  #closed = false;
  #closing: Promise<void> | null = null;

  /**
   * Binds the `--publish` ports (throws naming the rule whose port is taken)
   * and starts the loop.
   */
  constructor(config: NetConfig = {}, options: NetStackOptions = {}) {
    this.config = resolveConfig(config);
    this.#onError = options.onError ?? ((m) => console.error(`skiff net: ${m}`));
    const prebound = new Map<string, number[]>();
    try {
      for (const rule of this.config.publish) {
        const what = `${rule.hostIp}:${rule.hostPort}/${rule.proto}`;
        let b;
        try {
          b = bindInet(rule.proto === "tcp" ? SOCK_STREAM : SOCK_DGRAM, rule.hostIp, rule.hostPort);
        } catch (e) {
          throw new Error(`net: cannot listen on --publish ${what}: ${(e as Error).message}`);
        }
        this.#prebound.push(b.fd);
        const key = preboundKey(rule.proto, rule.hostIp, rule.hostPort);
        prebound.set(key, [...(prebound.get(key) ?? []), b.fd]);
        if (rule.proto === "tcp") this.#published.push(b.addr);
        this.#ports.push(b.addr.port);
      }
      this.#controlFd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
    } catch (e) {
      for (const fd of this.#prebound) libc.close(fd);
      throw e;
    }
    this.ready = new Promise<void>((resolve, reject) => {
      this.#settleReady = (e) => e ? reject(e) : resolve();
    });
    this.ready.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
    const worker = new Worker(runtimeModuleUrl("devices/net/loop_worker.ts"), { type: "module" });
    this.#worker = worker;
    worker.onmessage = (e: MessageEvent<LoopEvent>) => this.#event(e.data);
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.#fail(new Error(`net: the network loop failed: ${e.message}`));
    };
    const init: LoopInit = {
      t: "init",
      config,
      prebound: [...prebound],
      counters: this.#counters.buffer,
      control: this.#control.buffer,
      controlFd: this.#controlFd,
    };
    this.#post(init);
  }

  #event(ev: LoopEvent): void {
    switch (ev.t) {
      case "ready":
        this.#started = true; // the loop owns the prebound sockets now
        this.#settleReady();
        break;
      case "error":
        if (!this.#started) {
          this.#fail(new Error(`net: the network loop did not start: ${ev.message}`));
        } else this.#onError(ev.message);
        break;
      case "done": {
        const r = this.#replies.get(ev.id);
        this.#replies.delete(ev.id);
        r?.();
        break;
      }
      case "stream-end": {
        const r = this.#streamEnds.get(ev.id);
        this.#streamEnds.delete(ev.id);
        r?.(ev.counters);
        break;
      }
    }
  }

  /** The loop is gone (it failed): nothing more will be answered. */
  #fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    if (!this.#started) {
      for (const fd of this.#prebound) libc.close(fd);
      this.#settleReady(e);
    } else {
      this.#onError(e.message);
    }
    this.#worker?.terminate();
    this.#worker = null;
    this.#settleAll();
  }

  #settleAll(): void {
    for (const r of this.#replies.values()) r();
    this.#replies.clear();
    for (const r of this.#streamEnds.values()) r({ framesIn: 0, framesOut: 0, dropped: 0 });
    this.#streamEnds.clear();
  }

  /** Counts the message in shared memory, posts it, then wakes the loop out of epoll_wait. */
  #post(msg: LoopInit | LoopCommand): void {
    const w = this.#worker;
    if (!w) return;
    Atomics.add(this.#control, CONTROL.POSTED, 1);
    w.postMessage(msg);
    libc.write(this.#controlFd, ONE, 8n);
  }

  /** Posts `cmd` with a fresh id; resolves once the loop carried it out (or is gone). */
  #request(cmd: Distribute<LoopCommand>): Promise<void> {
    if (!this.#worker) return Promise.resolve();
    const id = this.#nextId++;
    const done = new Promise<void>((r) => this.#replies.set(id, r));
    this.#post({ ...cmd, id } as LoopCommand);
    return done;
  }

  /** The host addresses of the TCP `--publish` listeners, in rule order (useful with port 0). */
  get publishedAddrs(): Deno.NetAddr[] {
    return this.#published.map((a) => ({ ...a }));
  }

  /**
   * Lines saying where the `--publish` rules listen (see {@link publishLines}):
   * every rule when `all`, else those whose host port 0 the OS picked.
   */
  publishLines(all: boolean): string[] {
    return publishLines(this.config.publish, this.#ports, all);
  }

  /**
   * The counters once the loop has finished the turns it started before this
   * call. A guest or host program can see a frame's effect (an RST, a reply)
   * before the loop's turn that sent it publishes its counters; read these
   * after such an effect instead of {@link counters}.
   */
  async settledCounters(): Promise<NetCounters> {
    await this.#request({ t: "sync" });
    return this.counters();
  }

  /** A snapshot of the counters (published by the loop after each of its turns). */
  counters(): NetCounters {
    const out = {} as NetCounters;
    for (let i = 0; i < COUNTER_KEYS.length; i++) out[COUNTER_KEYS[i]] = this.#counters[i];
    return out;
  }

  /**
   * Hands a TAP fd to the loop, which reads it and attaches it as the link
   * (`TapDevice.serve`). The caller keeps owning the fd: close it only after
   * `detach()` resolved.
   */
  serveTap(fd: number): { detach(): Promise<void> } {
    const id = this.#nextId++;
    this.#post({ t: "tap", id, fd });
    return { detach: () => this.#request({ t: "detach", target: id }) };
  }

  /**
   * Hands a listening Unix stream socket to the loop (which owns it from now
   * on): the first peer is served with QEMU's stream framing
   * (`listenStream`). `done` resolves with the counters when the peer is
   * gone or `close` ran.
   */
  serveStream(listenFd: number): { done: Promise<StreamCounters>; close(): Promise<void> } {
    const id = this.#nextId++;
    const done = new Promise<StreamCounters>((r) => this.#streamEnds.set(id, r));
    if (this.#worker) this.#post({ t: "stream", id, fd: listenFd });
    else {
      libc.close(listenFd);
      this.#streamEnds.get(id)!({ framesIn: 0, framesOut: 0, dropped: 0 });
    }
    return {
      done,
      close: async () => {
        await this.#request({ t: "detach", target: id });
        await done;
      },
    };
  }

  /**
   * Attaches the link frames for the guest go to (replacing any previous
   * one), on this thread: frames cross from the loop through a shared ring.
   * The link always gets complete checksums.
   */
  attach(link: NetLink): void {
    if (this.#closed) return;
    this.#link = link;
    this.#ensurePort();
    this.#post({ t: "link", id: this.#nextId++, on: true });
  }

  /** Detaches the link; frames for the guest are dropped until the next {@link attach}. */
  detach(): void {
    this.#link = null;
    if (this.#port && !this.#closed) this.#post({ t: "link", id: this.#nextId++, on: false });
  }

  /**
   * Processes one Ethernet frame from the guest: it is copied into the ring
   * to the loop during the call (the caller may reuse its buffer). Frames
   * are dropped when the loop is more than a ring behind.
   */
  input(frame: Uint8Array): void {
    if (this.#closed) return;
    const port = this.#ensurePort();
    port.toLoop.push(frame);
    if (port.wakeQueued) return;
    // One wake-up for the frames of this task (a virtio notify brings a batch).
    port.wakeQueued = true;
    queueMicrotask(() => {
      port.wakeQueued = false;
      if (!this.#closed) libc.write(port.wakeFd, ONE, 8n);
    });
  }

  #ensurePort(): Port {
    if (this.#port) return this.#port;
    const port: Port = {
      id: this.#nextId++,
      toLoop: new FrameRing(RING_BYTES),
      fromLoop: new FrameRing(RING_BYTES),
      wakeFd: eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK),
      wakeQueued: false,
    };
    this.#port = port;
    this.#post({
      t: "port",
      id: port.id,
      toLoop: port.toLoop.buffers,
      fromLoop: port.fromLoop.buffers,
      wakeFd: port.wakeFd,
    });
    this.#pump(port.fromLoop).catch((e) => this.#onError(`frame pump: ${e}`));
    return port;
  }

  /** Delivers the loop's frames for the guest to the attached link on this thread. */
  async #pump(ring: FrameRing): Promise<void> {
    const { array, index } = ring.headWord;
    while (!this.#closed) {
      const head = ring.head;
      for (let f = ring.peek(); f; f = ring.peek()) {
        const copy = f.slice(); // the link may keep it
        ring.release();
        this.#link?.send(copy);
      }
      if (!ring.empty) continue;
      const w = Atomics.waitAsync(array, index, head);
      if (w.async) await w.value;
    }
  }

  /**
   * Resets every open connection (RST to the guest, host socket closed) and
   * closes UDP flows: used after a snapshot restore, when the guest's view of
   * its connections no longer matches the host sockets.
   */
  resetConnections(): Promise<void> {
    return this.#request({ t: "reset" });
  }

  /** Resets all connections, closes every socket of the loop and stops its Worker. */
  close(): Promise<void> {
    return this.#closing ??= (async () => {
      await this.#request({ t: "close" });
      this.#closed = true;
      this.#worker?.terminate();
      this.#worker = null;
      this.#settleAll();
      this.#settleReady(new Error("net: the stack was closed before its loop started"));
      const port = this.#port;
      if (port) {
        const w = port.fromLoop.headWord;
        Atomics.add(w.array, w.index, 0);
        Atomics.notify(w.array, w.index); // the pump sees #closed and ends
        libc.close(port.wakeFd);
      }
      libc.close(this.#controlFd);
    })();
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
