/**
 * Any {@link VirtioDevice} as a vhost-user back-end (QEMU
 * docs/interop/vhost-user.rst): the same device code that runs behind
 * skiff's MMIO transport on the kvm engine serves QEMU's `vhost-user-*`
 * devices on the qemu engine.
 *
 * How the contract maps onto the protocol:
 *
 * - features: the device's bits plus VERSION_1, INDIRECT_DESC, EVENT_IDX
 *   (the shared {@link Queue} implements them) and PROTOCOL_FEATURES;
 *   protocol features MQ, REPLY_ACK and CONFIG (QEMU's
 *   `vhost-user-vsock-device` requires CONFIG and reads the guest CID with
 *   GET_CONFIG; devices without a config notifier, like
 *   `vhost-user-fs-device`, leave it unacknowledged).
 * - config space: GET_CONFIG → `readConfig`, SET_CONFIG → `writeConfig`.
 * - queues: a ring is *live* once started (SET_VRING_KICK with an fd) and
 *   enabled (SET_VRING_ENABLE, or always without PROTOCOL_FEATURES) with the
 *   memory table mapped; its {@link Queue} is `ready` exactly then. The device
 *   is activated when the first ring goes live, with a {@link DeviceContext}
 *   whose `signalUsed` writes the ring's call eventfd when the driver wants an
 *   interrupt; rings going live later get a `queueNotify`. The front-end may
 *   leave queues unused (QEMU keeps the vsock event queue to itself).
 * - kicks: each live ring waits on its kick eventfd in `poll` on a thread-pool
 *   thread; a kick runs `queueNotify`, then re-arms notifications (EVENT_IDX
 *   `avail_event`) and runs it again while the device makes progress.
 * - stop: GET_VRING_BASE stops the ring and resets the device (QEMU stops a
 *   device's rings together: guest reset, VM stop, shutdown); RESET_OWNER and
 *   disconnect reset it too and drop the memory table.
 * - errors: a device error (VirtqueueError, a `fail` call) resets the device
 *   until its rings are restarted, signals each ring's error eventfd and is
 *   logged; no front-end message makes the back-end throw.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import { libc } from "../../kvm_ffi/libc.ts";
import type { DeviceContext, VirtioDevice } from "../virtio/device.ts";
import { MAX_QUEUE_SIZE, Queue } from "../virtio/queue.ts";
import { closeFds, MemTable } from "./mem_table.ts";
import {
  configPayload,
  encodeReply,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  HEADER_SIZE,
  parseHeader,
  ProtocolFeature,
  readConfigMsg,
  readMemTable,
  readU64,
  readVringAddr,
  readVringState,
  Req,
  REQ_NAMES,
  u64Payload,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  type VringAddr,
  vringStatePayload,
} from "./protocol.ts";
import { drainEventfd, signalEventfd, StopSignal, waitReadable } from "../../kvm_ffi/eventfd.ts";
import { type UnixConn, UnixListener } from "./socket.ts";

/** virtio 1.2 §6 transport feature bits the shared queue implements. */
const TRANSPORT_FEATURES = (1n << 32n) | (1n << 28n) | (1n << 29n);
/** VIRTIO_RING_F_EVENT_IDX. */
const EVENT_IDX = 1n << 29n;
/** Rounds of queueNotify per kick while the device keeps consuming buffers. */
const MAX_ROUNDS = 64;

/** Options of {@link VhostUserVirtioBackend}. */
export interface VhostUserVirtioOptions {
  /** Diagnostics (protocol errors, device errors); default: ignore. */
  log?: (message: string) => void;
}

class Ring {
  readonly queue = new Queue(MAX_QUEUE_SIZE);
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  enabled = false;
  started = false;
  addr: VringAddr | null = null;
  stop: StopSignal | null = null;
  loop: Promise<void> | null = null;
}

/** One front-end connection's vhost-user state around a {@link VirtioDevice}. */
export class VhostUserVirtioBackend {
  readonly device: VirtioDevice;
  #log: (m: string) => void;
  #rings: Ring[];
  #features = 0n;
  #protocolFeatures = 0n;
  #mem: MemTable | null = null;
  #active = false;
  /** The device failed; it stays down until a ring is restarted. */
  #broken = false;
  /** Requests handled, by name (for tests and `--verbose`). */
  readonly counts = new Map<string, number>();

  constructor(device: VirtioDevice, opts: VhostUserVirtioOptions = {}) {
    this.device = device;
    this.#log = opts.log ?? (() => {});
    this.#rings = device.queueMaxSizes.map(() => new Ring());
  }

  /** Feature bits offered in GET_FEATURES. */
  get offeredFeatures(): bigint {
    return this.device.features | TRANSPORT_FEATURES | F_PROTOCOL_FEATURES;
  }

  /** Protocol features offered in GET_PROTOCOL_FEATURES. */
  get offeredProtocolFeatures(): bigint {
    return [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG]
      .reduce((a, b) => a | (1n << BigInt(b)), 0n);
  }

  /** Whether the device is activated. */
  get active(): boolean {
    return this.#active;
  }

  /** The guest memory currently mapped (null before SET_MEM_TABLE). */
  get memory(): GuestMemory | null {
    return this.#mem?.memory ?? null;
  }

  /**
   * Serves `conn` until the front-end disconnects or `stop` fires; then
   * resets the device and releases memory and fds.
   */
  async serve(conn: UnixConn, stop: StopSignal): Promise<void> {
    try {
      for (;;) {
        const head = await conn.recvExact(HEADER_SIZE, stop);
        if (!head) break;
        let fds = head.fds;
        let hdr;
        try {
          hdr = parseHeader(head.bytes);
        } catch (e) {
          closeFds(fds);
          throw e; // a framing error: the stream cannot be resynchronised
        }
        let payload = new Uint8Array(0);
        if (hdr.size > 0) {
          const body = await conn.recvExact(hdr.size, stop);
          if (!body) {
            closeFds(fds);
            break;
          }
          payload = body.bytes;
          fds = fds.concat(body.fds);
        }
        const name = REQ_NAMES[hdr.request] ?? `request ${hdr.request}`;
        this.counts.set(name, (this.counts.get(name) ?? 0) + 1);
        let reply: Uint8Array | null = null;
        let ok = true;
        try {
          reply = await this.#handle(hdr.request, payload, fds);
        } catch (e) {
          ok = false;
          closeFds(fds);
          this.#log(`vhost-user ${name} failed: ${(e as Error).message}`);
        }
        if (reply) {
          conn.send(encodeReply(hdr.request, reply));
        } else if (
          (hdr.flags & FLAG_NEED_REPLY) &&
          (this.#protocolFeatures & (1n << BigInt(ProtocolFeature.REPLY_ACK)))
        ) {
          conn.send(encodeReply(hdr.request, u64Payload(ok ? 0n : 1n)));
        } else if (!ok && expectsReply(hdr.request)) {
          // The front-end waits for a reply: answer (it will see a bad size) rather than hang it.
          conn.send(encodeReply(hdr.request, new Uint8Array(8)));
        }
      }
    } finally {
      await this.#resetAll();
    }
  }

  async #handle(req: number, p: Uint8Array, fds: number[]): Promise<Uint8Array | null> {
    switch (req) {
      case Req.GET_FEATURES:
        return u64Payload(this.offeredFeatures);
      case Req.SET_FEATURES: {
        const f = readU64(p, "SET_FEATURES");
        const unknown = f & ~this.offeredFeatures;
        if (unknown) throw new Error(`SET_FEATURES with unoffered bits 0x${unknown.toString(16)}`);
        this.#features = f;
        for (const r of this.#rings) r.queue.eventIdx = (f & EVENT_IDX) !== 0n;
        return null;
      }
      case Req.GET_PROTOCOL_FEATURES:
        return u64Payload(this.offeredProtocolFeatures);
      case Req.SET_PROTOCOL_FEATURES:
        this.#protocolFeatures = readU64(p, "SET_PROTOCOL_FEATURES") &
          this.offeredProtocolFeatures;
        return null;
      case Req.SET_OWNER:
        return null;
      case Req.RESET_OWNER:
        await this.#resetAll();
        return null;
      case Req.GET_QUEUE_NUM:
        return u64Payload(BigInt(this.#rings.length));
      case Req.GET_CONFIG: {
        const m = readConfigMsg(p, "GET_CONFIG");
        const region = new Uint8Array(m.size);
        this.device.readConfig(m.offset, region);
        return configPayload({ ...m, region });
      }
      case Req.SET_CONFIG: {
        const m = readConfigMsg(p, "SET_CONFIG");
        this.device.writeConfig(m.offset, m.region);
        return null;
      }
      case Req.SET_MEM_TABLE:
        this.#setMemTable(p, fds);
        return null;
      case Req.SET_VRING_NUM: {
        const { index, num } = readVringState(p, "SET_VRING_NUM");
        const r = this.#ring(index);
        if (num < 1 || num > MAX_QUEUE_SIZE || (num & (num - 1)) !== 0) {
          throw new RangeError(`ring ${index} size ${num} is not a power of two ≤ 32768`);
        }
        r.queue.size = num;
        return null;
      }
      case Req.SET_VRING_ADDR: {
        const a = readVringAddr(p);
        const r = this.#ring(a.index);
        r.addr = a;
        this.#translate(r);
        return null;
      }
      case Req.SET_VRING_BASE: {
        const { index, num } = readVringState(p, "SET_VRING_BASE");
        this.#ring(index).queue.setPositions(num & 0xffff);
        return null;
      }
      case Req.GET_VRING_BASE: {
        const { index } = readVringState(p, "GET_VRING_BASE");
        const r = this.#ring(index);
        // QEMU stops all of a device's rings together: the device goes down with the first.
        this.#deactivate();
        this.#broken = false;
        await this.#stopRing(r);
        return vringStatePayload(index, r.queue.nextAvail);
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR: {
        const v = readU64(p, REQ_NAMES[req]);
        const index = Number(v & VRING_IDX_MASK);
        const r = this.#ring(index);
        const fd = (v & VRING_NOFD_MASK) ? -1 : fds.shift() ?? -1;
        closeFds(fds);
        if ((v & VRING_NOFD_MASK) === 0n && fd < 0) {
          throw new Error(`${REQ_NAMES[req]} without a file descriptor`);
        }
        if (req === Req.SET_VRING_KICK) {
          await this.#stopRing(r);
          r.kickFd = fd;
          if (fd >= 0) this.#startRing(r, index);
          else this.#log(`ring ${index}: polling mode (no kick fd) is not supported`);
        } else if (req === Req.SET_VRING_CALL) {
          if (r.callFd >= 0) libc.close(r.callFd);
          r.callFd = fd;
        } else {
          if (r.errFd >= 0) libc.close(r.errFd);
          r.errFd = fd;
        }
        return null;
      }
      case Req.SET_VRING_ENABLE: {
        const { index, num } = readVringState(p, "SET_VRING_ENABLE");
        this.#ring(index).enabled = num !== 0;
        this.#updateLive(index);
        return null;
      }
      case Req.SET_BACKEND_REQ_FD:
        closeFds(fds);
        return null;
      default:
        closeFds(fds);
        throw new Error(`unsupported request ${REQ_NAMES[req] ?? req}`);
    }
  }

  #ring(index: number): Ring {
    const r = this.#rings[index];
    if (!r) throw new RangeError(`ring index ${index} ≥ ${this.#rings.length}`);
    return r;
  }

  #translate(r: Ring): void {
    if (!r.addr || !this.#mem) return;
    r.queue.descTable = this.#mem.toGuest(r.addr.desc, 16, "descriptor table");
    r.queue.availRing = this.#mem.toGuest(r.addr.avail, 4, "available ring");
    r.queue.usedRing = this.#mem.toGuest(r.addr.used, 4, "used ring");
  }

  #setMemTable(p: Uint8Array, fds: number[]): void {
    let regions;
    try {
      regions = readMemTable(p);
    } catch (e) {
      closeFds(fds);
      throw e;
    }
    const table = MemTable.map(regions, fds);
    const old = this.#mem;
    this.#mem = table;
    for (const r of this.#rings) this.#translate(r);
    // The context's `mem` reads the current table, so an active device moves over with it.
    old?.[Symbol.dispose]();
    this.#rings.forEach((_, i) => this.#updateLive(i));
  }

  /** Whether ring `index` may be used by the device now. */
  #isLive(r: Ring): boolean {
    const enabled = r.enabled || (this.#features & F_PROTOCOL_FEATURES) === 0n;
    return r.started && enabled && this.#mem !== null;
  }

  /** Re-evaluates a ring after a change: activates the device or tells it the ring is usable. */
  #updateLive(index: number): void {
    const r = this.#rings[index];
    const live = this.#isLive(r);
    const was = r.queue.ready;
    r.queue.ready = live;
    if (!live || was || this.#broken) return;
    if (!this.#active) {
      this.#activate();
    } else {
      this.#kicked(index);
    }
  }

  #context(): DeviceContext {
    // deno-lint-ignore no-this-alias
    const self = this;
    return {
      get mem(): GuestMemory {
        return self.#mem!.memory;
      },
      queues: this.#rings.map((r) => r.queue),
      features: this.#features & ~F_PROTOCOL_FEATURES,
      signalUsed: (index) => this.#signalUsed(index),
      // No back-end request channel: QEMU reads config space when it needs it.
      signalConfig: () => {},
      fail: (error) => this.#fail(error),
    };
  }

  #activate(): void {
    if (!this.#mem) return;
    try {
      this.#active = true;
      this.device.activate(this.#context());
    } catch (e) {
      this.#fail(e);
    }
  }

  #deactivate(): void {
    if (!this.#active) return;
    this.#active = false;
    try {
      this.device.reset();
    } catch (e) {
      this.#log(`device reset failed: ${(e as Error).message}`);
    }
  }

  #fail(error: unknown): void {
    this.#log(`device error: ${(error as Error)?.message ?? error}`);
    this.#broken = true;
    this.#deactivate();
    for (const r of this.#rings) if (r.errFd >= 0) signalEventfd(r.errFd);
  }

  #signalUsed(index: number): void {
    const r = this.#rings[index];
    const mem = this.#mem?.memory;
    if (!r || !r.queue.ready || !mem || r.callFd < 0) return;
    try {
      if (r.queue.needsNotification(mem)) signalEventfd(r.callFd);
    } catch (e) {
      this.#fail(e);
    }
  }

  /** The driver kicked ring `index` (or it just went live). */
  #kicked(index: number): void {
    const q = this.#rings[index].queue;
    try {
      for (let round = 0; round < MAX_ROUNDS; round++) {
        if (!this.#active || !q.ready || !this.#mem) return;
        const before = q.nextAvail;
        this.device.queueNotify(index);
        // Re-arm (EVENT_IDX: avail_event) and go again only while the device
        // consumes buffers: one that leaves buffers posted (vsock rx waiting
        // for data) would otherwise spin here.
        if (!this.#active || !q.ready) return;
        if (!q.setNotification(this.#mem.memory, true) || q.nextAvail === before) return;
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  #startRing(r: Ring, index: number): void {
    r.started = true;
    const stop = new StopSignal();
    r.stop = stop;
    const kick = r.kickFd;
    this.#updateLive(index);
    r.loop = (async () => {
      while ((await waitReadable(kick, stop)) === "ready") {
        drainEventfd(kick);
        this.#kicked(index);
      }
    })();
  }

  async #stopRing(r: Ring): Promise<void> {
    if (r.stop) {
      r.stop.fire();
      await r.loop;
      r.stop[Symbol.dispose]();
      r.stop = null;
      r.loop = null;
    }
    if (r.kickFd >= 0) libc.close(r.kickFd);
    r.kickFd = -1;
    r.started = false;
    r.queue.ready = false;
  }

  async #resetAll(): Promise<void> {
    // The device first: it must not touch memory or fds released below.
    this.#deactivate();
    this.#broken = false;
    for (const r of this.#rings) {
      await this.#stopRing(r);
      if (r.callFd >= 0) libc.close(r.callFd);
      if (r.errFd >= 0) libc.close(r.errFd);
      r.callFd = r.errFd = -1;
      r.enabled = false;
      r.addr = null;
      r.queue.reset();
    }
    this.#features = 0n;
    this.#protocolFeatures = 0n;
    this.#mem?.[Symbol.dispose]();
    this.#mem = null;
  }
}

function expectsReply(req: number): boolean {
  return req === Req.GET_FEATURES || req === Req.GET_PROTOCOL_FEATURES ||
    req === Req.GET_VRING_BASE || req === Req.GET_QUEUE_NUM || req === Req.GET_CONFIG ||
    req === Req.GET_MAX_MEM_SLOTS;
}

/** Options of {@link VhostUserVirtioServer}. */
export interface VhostUserVirtioServerOptions extends VhostUserVirtioOptions {
  /** End after the first front-end connection closes (a VM's lifetime). */
  once?: boolean;
}

/** A listening vhost-user socket serving one {@link VirtioDevice} to one front-end at a time. */
export class VhostUserVirtioServer implements AsyncDisposable {
  readonly listener: UnixListener;
  readonly backend: VhostUserVirtioBackend;
  #stop = new StopSignal();
  #loop: Promise<void>;
  /** Connections served so far. */
  connections = 0;

  /** Listens on `path` (an existing socket file is replaced) and serves `device`. */
  constructor(path: string, device: VirtioDevice, opts: VhostUserVirtioServerOptions = {}) {
    const listener = this.listener = new UnixListener(path);
    const backend = this.backend = new VhostUserVirtioBackend(device, opts);
    const stop = this.#stop;
    this.#loop = (async () => {
      for (;;) {
        const conn = await listener.accept(stop);
        if (!conn) return;
        this.connections++;
        try {
          await backend.serve(conn, stop);
        } catch (e) {
          opts.log?.(`vhost-user connection failed: ${(e as Error).message}`);
        } finally {
          conn[Symbol.dispose]();
        }
        if (opts.once) return;
      }
    })();
  }

  /** Resolves when the server has stopped (front-end gone with `once`, or closed). */
  get done(): Promise<void> {
    return this.#loop;
  }

  /** Stops serving; releases the socket, its path, memory and fds. */
  async close(): Promise<void> {
    this.#stop.fire();
    await this.#loop;
    this.listener[Symbol.dispose]();
    this.#stop[Symbol.dispose]();
  }

  /** {@link close} for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
