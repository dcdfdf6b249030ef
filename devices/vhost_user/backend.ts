/**
 * A vhost-user back-end (QEMU docs/interop/vhost-user.rst) serving one
 * {@link VhostUserDevice}: the front-end (QEMU) sends the guest memory table
 * as memfd regions (mapped here into a {@link RegionMemory} keyed by guest
 * physical address), the ring sizes, addresses and positions, and a kick and
 * a call eventfd per ring. Each started ring waits on its kick eventfd in
 * `poll` on a thread-pool thread; when kicked, the device pops chains with
 * the shared virtqueue code ({@link Queue}) and the call eventfd is
 * signalled when the driver wants an interrupt.
 *
 * @module
 */

import { type GuestMemory, type MemoryRegion, RegionMemory } from "../../hv/memory.ts";
import { libc, MAP, mmap, PROT, viewAt } from "../../kvm_ffi/libc.ts";
import { Queue } from "../virtio/queue.ts";
import {
  encodeReply,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  HEADER_SIZE,
  type MemRegionDesc,
  parseHeader,
  ProtocolFeature,
  readMemTable,
  readU64,
  readVringAddr,
  readVringState,
  Req,
  REQ_NAMES,
  u64Payload,
  validateMemTable,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  type VringAddr,
  vringStatePayload,
} from "./protocol.ts";
import { drainEventfd, signalEventfd, StopSignal, waitReadable } from "../../kvm_ffi/eventfd.ts";
import { type UnixConn, UnixListener } from "./socket.ts";

/** virtio 1.2 §6: VIRTIO_F_VERSION_1. */
export const VIRTIO_F_VERSION_1 = 1n << 32n;
/** §6: VIRTIO_RING_F_INDIRECT_DESC. */
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
/** §6: VIRTIO_RING_F_EVENT_IDX. */
export const VIRTIO_RING_F_EVENT_IDX = 1n << 29n;

/** A virtio device whose queues a vhost-user back-end drives. */
export interface VhostUserDevice {
  /** Number of virtqueues (GET_QUEUE_NUM). */
  readonly numQueues: number;
  /** Largest ring size accepted. */
  readonly maxQueueSize: number;
  /** Device-specific feature bits (ring and version bits are added by the back-end). */
  readonly features: bigint;
  /**
   * Handles what the driver made available on queue `index`; returns true
   * when used entries were added (the back-end then decides on an interrupt).
   */
  process(index: number, queue: Queue, mem: GuestMemory): boolean;
  /** Called on RESET_OWNER and disconnect. */
  reset?(): void;
}

/** Options of a {@link VhostUserBackend}. */
export interface VhostUserBackendOptions {
  /** Diagnostics (protocol errors, guest errors); default: ignore. */
  log?: (message: string) => void;
}

class Vring {
  queue: Queue;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  enabled = false;
  started = false;
  addr: VringAddr | null = null;
  stop: StopSignal | null = null;
  loop: Promise<void> | null = null;
  broken = false;
  constructor(max: number) {
    this.queue = new Queue(max);
  }
}

/** One front-end connection's worth of vhost-user state around a device. */
export class VhostUserBackend {
  readonly device: VhostUserDevice;
  #log: (m: string) => void;
  #rings: Vring[];
  #features = 0n;
  #protocolFeatures = 0n;
  #mem: RegionMemory | null = null;
  #userRegions: MemRegionDesc[] = [];
  /** Requests handled, by name (for tests and `--verbose`). */
  readonly counts = new Map<string, number>();

  constructor(device: VhostUserDevice, opts: VhostUserBackendOptions = {}) {
    this.device = device;
    this.#log = opts.log ?? (() => {});
    this.#rings = Array.from({ length: device.numQueues }, () => new Vring(device.maxQueueSize));
  }

  /** Feature bits offered in GET_FEATURES. */
  get offeredFeatures(): bigint {
    return this.device.features | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC |
      VIRTIO_RING_F_EVENT_IDX | F_PROTOCOL_FEATURES;
  }

  /** Protocol features offered in GET_PROTOCOL_FEATURES. */
  get offeredProtocolFeatures(): bigint {
    return (1n << BigInt(ProtocolFeature.MQ)) | (1n << BigInt(ProtocolFeature.REPLY_ACK));
  }

  /** The guest memory currently mapped (null before SET_MEM_TABLE). */
  get memory(): GuestMemory | null {
    return this.#mem;
  }

  /**
   * Serves `conn` until the front-end disconnects or `stop` fires; then
   * stops every ring and releases memory and fds.
   */
  async serve(conn: UnixConn, stop: StopSignal): Promise<void> {
    try {
      for (;;) {
        const head = await conn.recvExact(HEADER_SIZE, stop);
        if (!head) break;
        let fds = head.fds;
        const hdr = parseHeader(head.bytes);
        let payload = new Uint8Array(0);
        if (hdr.size > 0) {
          const body = await conn.recvExact(hdr.size, stop);
          if (!body) {
            closeAll(fds);
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
          closeAll(fds);
          this.#log(`vhost-user ${name} failed: ${(e as Error).message}`);
        }
        if (reply) {
          conn.send(encodeReply(hdr.request, reply));
        } else if (
          (hdr.flags & FLAG_NEED_REPLY) &&
          (this.#protocolFeatures & (1n << BigInt(ProtocolFeature.REPLY_ACK)))
        ) {
          conn.send(encodeReply(hdr.request, u64Payload(ok ? 0n : 1n)));
        } else if (!ok && hasReply(hdr.request)) {
          // The front-end waits for a reply: answer with zeroes rather than hang it.
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
        for (const r of this.#rings) r.queue.eventIdx = (f & VIRTIO_RING_F_EVENT_IDX) !== 0n;
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
        return u64Payload(BigInt(this.device.numQueues));
      case Req.SET_MEM_TABLE:
        this.#setMemTable(readMemTable(p), fds);
        return null;
      case Req.SET_VRING_NUM: {
        const { index, num } = readVringState(p, "SET_VRING_NUM");
        const r = this.#ring(index);
        if (num < 1 || num > this.device.maxQueueSize || (num & (num - 1)) !== 0) {
          throw new RangeError(
            `ring ${index} size ${num} is not a power of two ≤ ${r.queue.maxSize}`,
          );
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
        await this.#stopRing(r);
        const base = r.queue.nextAvail;
        return vringStatePayload(index, base);
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR: {
        const v = readU64(p, REQ_NAMES[req]);
        const r = this.#ring(Number(v & VRING_IDX_MASK));
        const fd = (v & VRING_NOFD_MASK) ? -1 : fds.shift() ?? -1;
        closeAll(fds);
        if ((v & VRING_NOFD_MASK) === 0n && fd < 0) {
          throw new Error(`${REQ_NAMES[req]} without a file descriptor`);
        }
        if (req === Req.SET_VRING_KICK) {
          await this.#stopRing(r);
          r.kickFd = fd;
          if (fd >= 0) this.#startRing(r);
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
        const r = this.#ring(index);
        r.enabled = num !== 0;
        if (r.enabled) this.#process(index);
        return null;
      }
      case Req.SET_BACKEND_REQ_FD:
        closeAll(fds);
        return null;
      default:
        closeAll(fds);
        throw new Error(`unsupported request ${REQ_NAMES[req] ?? req}`);
    }
  }

  #ring(index: number): Vring {
    const r = this.#rings[index];
    if (!r) throw new RangeError(`ring index ${index} ≥ ${this.#rings.length}`);
    return r;
  }

  /** Front-end virtual address → guest physical address, through the memory table. */
  #toGuest(user: bigint, len: number, what: string): number {
    for (const m of this.#userRegions) {
      if (user >= m.userspaceAddr && user + BigInt(len) <= m.userspaceAddr + m.memorySize) {
        return Number(user - m.userspaceAddr + m.guestPhysAddr);
      }
    }
    throw new RangeError(`${what} at user address 0x${user.toString(16)} is in no memory region`);
  }

  #translate(r: Vring): void {
    if (!r.addr || !this.#mem) return;
    r.queue.descTable = this.#toGuest(r.addr.desc, 16, "descriptor table");
    r.queue.availRing = this.#toGuest(r.addr.avail, 4, "available ring");
    r.queue.usedRing = this.#toGuest(r.addr.used, 4, "used ring");
  }

  #setMemTable(regions: MemRegionDesc[], fds: number[]): void {
    if (fds.length !== regions.length) {
      closeAll(fds);
      throw new Error(`SET_MEM_TABLE: ${regions.length} regions but ${fds.length} fds`);
    }
    try {
      validateMemTable(regions);
    } catch (e) {
      closeAll(fds);
      throw e;
    }
    const mapped: MemoryRegion[] = [];
    const owned: { ptr: Deno.PointerObject; size: number; fd?: number }[] = [];
    let mem: RegionMemory;
    try {
      for (const [i, r] of regions.entries()) {
        const off = Number(r.mmapOffset);
        const size = Number(r.memorySize);
        const total = off + size;
        const ptr = mmap(total, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.NORESERVE, fds[i], 0);
        owned.push({ ptr, size: total, fd: fds[i] });
        const base = Deno.UnsafePointer.create(Deno.UnsafePointer.value(ptr) + BigInt(off))!;
        mapped.push({
          guestAddr: Number(r.guestPhysAddr),
          size,
          bytes: viewAt(base, size),
          hostPtr: base,
          fd: fds[i],
          fdOffset: off,
        });
      }
      mem = new RegionMemory(mapped, owned);
    } catch (e) {
      for (const o of owned) libc.munmap(o.ptr, BigInt(o.size));
      closeAll(fds);
      throw e;
    }
    const old = this.#mem;
    this.#mem = mem;
    this.#userRegions = regions;
    for (const r of this.#rings) this.#translate(r);
    old?.[Symbol.dispose]();
  }

  #startRing(r: Vring): void {
    r.started = true;
    r.broken = false;
    r.queue.ready = true;
    const stop = new StopSignal();
    r.stop = stop;
    const index = this.#rings.indexOf(r);
    const kick = r.kickFd;
    r.loop = (async () => {
      // Buffers may already be waiting (e.g. after a ring restart).
      this.#process(index);
      while ((await waitReadable(kick, stop)) === "ready") {
        drainEventfd(kick);
        this.#process(index);
      }
    })();
  }

  async #stopRing(r: Vring): Promise<void> {
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

  #process(index: number): void {
    const r = this.#rings[index];
    const mem = this.#mem;
    const enabled = r.enabled || (this.#features & F_PROTOCOL_FEATURES) === 0n;
    if (!r.started || !enabled || r.broken || !mem) return;
    try {
      let used = false;
      // Re-arm notifications (with EVENT_IDX: move avail_event, §2.7.10)
      // and look again: the driver may have added buffers meanwhile.
      do used = this.device.process(index, r.queue, mem) || used; while (
        r.queue.setNotification(mem, true)
      );
      if (used && r.callFd >= 0 && r.queue.needsNotification(mem)) signalEventfd(r.callFd);
    } catch (e) {
      // A bad ring from the guest: stop using it and tell the front-end.
      r.broken = true;
      this.#log(`vhost-user ring ${index}: ${(e as Error).message}`);
      if (r.errFd >= 0) signalEventfd(r.errFd);
    }
  }

  async #resetAll(): Promise<void> {
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
    this.#userRegions = [];
    this.device.reset?.();
  }
}

function hasReply(req: number): boolean {
  return req === Req.GET_FEATURES || req === Req.GET_PROTOCOL_FEATURES ||
    req === Req.GET_VRING_BASE || req === Req.GET_QUEUE_NUM || req === Req.GET_CONFIG ||
    req === Req.GET_MAX_MEM_SLOTS;
}

function closeAll(fds: number[]): void {
  for (const fd of fds.splice(0)) libc.close(fd);
}

/** A listening vhost-user socket serving one front-end connection at a time. */
export class VhostUserServer implements AsyncDisposable {
  readonly listener: UnixListener;
  readonly backend: VhostUserBackend;
  #stop = new StopSignal();
  #loop: Promise<void>;
  /** Connections served so far. */
  connections = 0;

  /**
   * Listens on `path` and serves `device`. With `once`, the server ends
   * after its first connection closes (a VM's lifetime).
   */
  constructor(
    path: string,
    device: VhostUserDevice,
    opts: VhostUserBackendOptions & { once?: boolean } = {},
  ) {
    const listener = this.listener = new UnixListener(path);
    const backend = this.backend = new VhostUserBackend(device, opts);
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

  /** Stops serving, releases the socket, its path, memory and fds. */
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
