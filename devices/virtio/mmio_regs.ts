/**
 * The virtio-mmio register file, version 2 (virtio 1.2 §4.2.2), kept in a
 * SharedArrayBuffer so that **any** thread serves any register access: every
 * vCPU Worker of an SMP guest, or the main thread in the in-process
 * transport. {@link MmioShared} is the layout; {@link MmioRegisters} is the
 * register semantics over it — feature negotiation (VIRTIO_F_VERSION_1
 * required), the status state machine (§2.1, §3.1.1), queue setup, config
 * space with its generation counter, InterruptStatus and its acknowledge.
 *
 * The device itself is not here: it runs on the main thread behind
 * `VirtioMmioHost` (mmio_host.ts), which activates it from the queue
 * configuration in these words. The register half tells the host what
 * happened through {@link MmioEvents} (a message from a Worker, a direct
 * call in-process); the host reads the words to see what to do, so a late or
 * repeated event cannot confuse it.
 *
 * Two locks live in the words (shared_lock.ts):
 *
 * - the **register lock** guards multi-word updates (status transitions,
 *   features, queue configuration, the config mirror with its generation);
 *   held only for a few loads and stores;
 * - the **device lock** is held by the host while it serves a batch (its
 *   device touching the rings), and by a register half resetting the device:
 *   under both locks the reset bumps the **epoch**, so a batch that started
 *   before it has finished, and one that starts after it sees the new epoch
 *   and drops its work instead of touching rings the driver is re-creating.
 *   A vCPU therefore waits at most for one batch in progress — never for the
 *   main thread's event loop.
 *
 * No guest action makes these accesses throw: bad accesses are ignored
 * (reads give 0); a bad queue configuration at DRIVER_OK sets
 * DEVICE_NEEDS_RESET and sends a configuration-change interrupt (§2.1.2).
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import { bit, FEATURE, STATUS } from "./device.ts";
import { Queue } from "./queue.ts";
import { SharedLock } from "./shared_lock.ts";

/** §4.2.2 register offsets. */
export const MMIO = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

/** "virt" little-endian (§4.2.2). */
export const MMIO_MAGIC = 0x74726976;
/** Size of one device's MMIO window (registers + config space). */
export const MMIO_WINDOW = 0x1000;
/** Vendor ID reported: "SKIF" little-endian. */
export const SKIFF_VENDOR_ID = 0x46494b53;

/** InterruptStatus bits (§4.2.2). */
export const INT = { USED_BUFFER: 1, CONFIG_CHANGE: 2 } as const;

/** Transport features every device gets: the queue implements them. */
export const TRANSPORT_FEATURES = bit(FEATURE.VERSION_1) | bit(FEATURE.RING_INDIRECT_DESC) |
  bit(FEATURE.RING_EVENT_IDX);

/** Int32 indices of the shared words before the queues. */
export const W = {
  /** Device lock: 0 free, else the holder's token. */
  DEV_LOCK: 0,
  DEV_WAITERS: 1,
  /** Register lock. */
  REG_LOCK: 2,
  REG_WAITERS: 3,
  /** Reset epoch: +1 at every device reset. */
  EPOCH: 4,
  STATUS: 5,
  DEVICE_FEATURES_SEL: 6,
  DRIVER_FEATURES_SEL: 7,
  DRIVER_FEATURES_LO: 8,
  DRIVER_FEATURES_HI: 9,
  QUEUE_SEL: 10,
  INT_STATUS: 11,
  CONFIG_GEN: 12,
} as const;
const HEADER_WORDS = 16;

/** Per-queue words (QueueNum, QueueReady, the three ring addresses as low/high halves). */
export const QW = {
  NUM: 0,
  READY: 1,
  DESC_LO: 2,
  DESC_HI: 3,
  DRIVER_LO: 4,
  DRIVER_HI: 5,
  DEVICE_LO: 6,
  DEVICE_HI: 7,
} as const;
const QUEUE_WORDS = 8;

/** Bytes of device config space mirrored in the shared buffer (reads beyond give 0). */
export const CONFIG_MIRROR = 256;

/** What the register half knows of the device: fixed at creation. */
export interface MmioDeviceInfo {
  /** §5 device ID. */
  deviceType: number;
  /** QueueNumMax per queue. */
  queueMaxSizes: readonly number[];
  /** Device-specific feature bits (the transport adds {@link TRANSPORT_FEATURES}). */
  features: bigint;
}

/** One queue's configuration as the driver wrote it. */
export interface QueueConfig {
  size: number;
  ready: boolean;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** A 64-bit guest address from two 32-bit halves (≥ 2^53 cannot be guest memory: clamped). */
function address(lo: number, hi: number): number {
  return hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + lo;
}

/** The shared buffer's layout: words, queue words, config mirror. */
export class MmioShared {
  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  readonly config: Uint8Array;
  readonly queueMaxSizes: readonly number[];

  constructor(buffer: SharedArrayBuffer, queueMaxSizes: readonly number[]) {
    const need = MmioShared.bytes(queueMaxSizes.length);
    if (buffer.byteLength !== need) {
      throw new RangeError(
        `mmio shared buffer is ${buffer.byteLength} bytes; ${queueMaxSizes.length} queues need ${need}`,
      );
    }
    this.buffer = buffer;
    this.queueMaxSizes = queueMaxSizes;
    const nwords = HEADER_WORDS + QUEUE_WORDS * queueMaxSizes.length;
    this.words = new Int32Array(buffer, 0, nwords);
    this.config = new Uint8Array(buffer, nwords * 4, CONFIG_MIRROR);
  }

  /** Bytes of the shared buffer for `queues` queues. */
  static bytes(queues: number): number {
    return 4 * (HEADER_WORDS + QUEUE_WORDS * queues) + CONFIG_MIRROR;
  }

  /** A fresh buffer with the registers at their reset values. */
  static create(queueMaxSizes: readonly number[]): MmioShared {
    const s = new MmioShared(new SharedArrayBuffer(MmioShared.bytes(queueMaxSizes.length)), [
      ...queueMaxSizes,
    ]);
    s.resetRegisters();
    return s;
  }

  /** Index of queue `q`'s word `field` ({@link QW}). */
  q(q: number, field: number): number {
    return HEADER_WORDS + QUEUE_WORDS * q + field;
  }

  /** The device lock as seen by `owner`. */
  devLock(owner: number): SharedLock {
    return new SharedLock(this.words, W.DEV_LOCK, W.DEV_WAITERS, owner);
  }

  /** The register lock as seen by `owner`. */
  regLock(owner: number): SharedLock {
    return new SharedLock(this.words, W.REG_LOCK, W.REG_WAITERS, owner);
  }

  /** A shared word as an unsigned 32-bit value. */
  load(index: number): number {
    return Atomics.load(this.words, index) >>> 0;
  }

  /** Stores an unsigned 32-bit value. */
  store(index: number, value: number): void {
    Atomics.store(this.words, index, value | 0);
  }

  /** Registers back to their state after a device reset (§2.4); InterruptStatus is the caller's. */
  resetRegisters(): void {
    for (const i of [W.STATUS, W.DEVICE_FEATURES_SEL, W.DRIVER_FEATURES_SEL, W.QUEUE_SEL]) {
      this.store(i, 0);
    }
    this.store(W.DRIVER_FEATURES_LO, 0);
    this.store(W.DRIVER_FEATURES_HI, 0);
    this.queueMaxSizes.forEach((max, q) => {
      this.store(this.q(q, QW.NUM), max);
      for (let f = QW.READY; f <= QW.DEVICE_HI; f++) this.store(this.q(q, f), 0);
    });
  }

  /** The negotiated (driver) features. */
  driverFeatures(): bigint {
    return (BigInt(this.load(W.DRIVER_FEATURES_HI)) << 32n) |
      BigInt(this.load(W.DRIVER_FEATURES_LO));
  }

  /** Queue `q`'s configuration. */
  queueConfig(q: number): QueueConfig {
    const l = (f: number) => this.load(this.q(q, f));
    return {
      size: l(QW.NUM),
      ready: l(QW.READY) === 1,
      descTable: address(l(QW.DESC_LO), l(QW.DESC_HI)),
      availRing: address(l(QW.DRIVER_LO), l(QW.DRIVER_HI)),
      usedRing: address(l(QW.DEVICE_LO), l(QW.DEVICE_HI)),
    };
  }

  /** Writes queue `q`'s configuration (a restore). */
  setQueueConfig(q: number, c: QueueConfig): void {
    const halves = (a: number) => [a % 2 ** 32, Math.floor(a / 2 ** 32)];
    this.store(this.q(q, QW.NUM), c.size);
    this.store(this.q(q, QW.READY), c.ready ? 1 : 0);
    for (
      const [lo, v] of [[QW.DESC_LO, c.descTable], [QW.DRIVER_LO, c.availRing], [
        QW.DEVICE_LO,
        c.usedRing,
      ]] as const
    ) {
      const [l, h] = halves(v);
      this.store(this.q(q, lo), l);
      this.store(this.q(q, lo + 1), h);
    }
  }

  /** A Queue object configured as queue `q` (positions zero). */
  queue(q: number, eventIdx: boolean): Queue {
    const c = this.queueConfig(q);
    const queue = new Queue(this.queueMaxSizes[q]);
    queue.size = c.size;
    queue.ready = c.ready;
    queue.descTable = c.descTable;
    queue.availRing = c.availRing;
    queue.usedRing = c.usedRing;
    queue.eventIdx = eventIdx;
    return queue;
  }
}

/** What the register half tells the device's host half (see the module doc). */
export interface MmioEvents {
  /** DRIVER_OK or FAILED was set, or the device was reset: the host reconciles with the words. */
  statusChanged(): void;
  /** QueueNotify for queue `index` reached the register half (no ioeventfd took it). */
  notify(index: number): void;
  /** The driver wrote device config space. */
  configWrite(offset: number, data: Uint8Array): void;
  /** Raise the interrupt (InterruptStatus bits are already set). */
  raise(): void;
  /** An acknowledge cleared InterruptStatus (a level-triggered line drops; edges ignore it). */
  lower?(): void;
  /** A guest error the register half found (bad queue configuration at DRIVER_OK), for logs. */
  error?(e: unknown): void;
}

/**
 * The register semantics over {@link MmioShared}, for one thread (its
 * `owner` token): one instance per vCPU Worker, or one on the main thread.
 */
export class MmioRegisters {
  readonly shared: MmioShared;
  readonly info: MmioDeviceInfo;
  readonly #w: Int32Array;
  readonly #mem: GuestMemory;
  readonly #events: MmioEvents;
  readonly #reg: SharedLock;
  readonly #dev: SharedLock;
  readonly #features: bigint;

  /**
   * @param mem guest memory, to check the queue configuration at DRIVER_OK
   * @param owner this thread's lock token (shared_lock.ts)
   */
  constructor(
    shared: MmioShared,
    info: MmioDeviceInfo,
    mem: GuestMemory,
    owner: number,
    events: MmioEvents,
  ) {
    if (info.queueMaxSizes.length !== shared.queueMaxSizes.length) {
      throw new RangeError(
        `mmio registers: device has ${info.queueMaxSizes.length} queues, the shared buffer ${shared.queueMaxSizes.length}`,
      );
    }
    this.shared = shared;
    this.info = info;
    this.#w = shared.words;
    this.#mem = mem;
    this.#events = events;
    this.#reg = shared.regLock(owner);
    this.#dev = shared.devLock(owner);
    this.#features = info.features | TRANSPORT_FEATURES;
  }

  /** Features offered to the driver. */
  get deviceFeatures(): bigint {
    return this.#features;
  }
  /** The Status register. */
  get status(): number {
    return this.shared.load(W.STATUS);
  }
  /** InterruptStatus. */
  get interruptStatus(): number {
    return this.shared.load(W.INT_STATUS);
  }
  /** Features the driver accepted (valid once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.shared.driverFeatures();
  }

  /** A register read of `data.length` bytes at `offset` in the window. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= MMIO.CONFIG) {
      const at = offset - MMIO.CONFIG;
      const cfg = this.shared.config;
      // Under the register lock: the host updates the mirror and the generation together.
      this.#reg.with(() => {
        for (let i = 0; i < data.length; i++) {
          data[i] = at + i < CONFIG_MIRROR ? cfg[at + i] : 0;
        }
      });
      return;
    }
    // §4.2.2.2: the driver MUST use 32-bit wide, aligned accesses for the
    // registers; anything else reads as zero.
    if (data.length !== 4 || offset % 4 !== 0) return;
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.readRegister(offset), true);
  }

  /** A register write of `data.length` bytes at `offset` in the window. */
  write(offset: number, data: Uint8Array): void {
    if (offset >= MMIO.CONFIG) {
      this.#events.configWrite(offset - MMIO.CONFIG, data.slice());
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) return;
    this.writeRegister(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  /** A 32-bit register read. */
  readRegister(offset: number): number {
    const s = this.shared;
    const sel = s.load(W.QUEUE_SEL);
    const has = sel < this.info.queueMaxSizes.length;
    const q = (f: number) => has ? s.load(s.q(sel, f)) : 0;
    switch (offset) {
      case MMIO.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MMIO.VERSION:
        return 2;
      case MMIO.DEVICE_ID:
        return this.info.deviceType;
      case MMIO.VENDOR_ID:
        return SKIFF_VENDOR_ID;
      case MMIO.DEVICE_FEATURES: {
        const fsel = s.load(W.DEVICE_FEATURES_SEL);
        if (fsel > 1) return 0;
        return Number((this.#features >> BigInt(32 * fsel)) & 0xffffffffn);
      }
      case MMIO.QUEUE_NUM_MAX:
        return has ? this.info.queueMaxSizes[sel] : 0;
      case MMIO.QUEUE_NUM:
        return q(QW.NUM);
      case MMIO.QUEUE_READY:
        return q(QW.READY);
      case MMIO.INTERRUPT_STATUS:
        return s.load(W.INT_STATUS);
      case MMIO.STATUS:
        return s.load(W.STATUS);
      case MMIO.QUEUE_DESC_LOW:
        return q(QW.DESC_LO);
      case MMIO.QUEUE_DESC_HIGH:
        return q(QW.DESC_HI);
      case MMIO.QUEUE_DRIVER_LOW:
        return q(QW.DRIVER_LO);
      case MMIO.QUEUE_DRIVER_HIGH:
        return q(QW.DRIVER_HI);
      case MMIO.QUEUE_DEVICE_LOW:
        return q(QW.DEVICE_LO);
      case MMIO.QUEUE_DEVICE_HIGH:
        return q(QW.DEVICE_HI);
      // §4.2.2: no shared memory regions: length reads as -1.
      case MMIO.SHM_LEN_LOW:
      case MMIO.SHM_LEN_HIGH:
      case MMIO.SHM_BASE_LOW:
      case MMIO.SHM_BASE_HIGH:
        return 0xffffffff;
      case MMIO.CONFIG_GENERATION:
        return s.load(W.CONFIG_GEN);
      default:
        return 0;
    }
  }

  /** A 32-bit register write. */
  writeRegister(offset: number, value: number): void {
    value >>>= 0;
    const s = this.shared;
    switch (offset) {
      case MMIO.DEVICE_FEATURES_SEL:
        s.store(W.DEVICE_FEATURES_SEL, value);
        return;
      case MMIO.DRIVER_FEATURES_SEL:
        s.store(W.DRIVER_FEATURES_SEL, value);
        return;
      case MMIO.QUEUE_SEL:
        s.store(W.QUEUE_SEL, value);
        return;
      case MMIO.QUEUE_NOTIFY:
        // §4.2.2: the value is the queue index (low 16 bits; NOTIFICATION_DATA is not offered).
        this.#events.notify(value & 0xffff);
        return;
      case MMIO.INTERRUPT_ACK:
        if ((Atomics.and(this.#w, W.INT_STATUS, ~value) & ~value) === 0) this.#events.lower?.();
        return;
      case MMIO.STATUS:
        if (value === 0) this.reset();
        else this.#setStatus(value);
        return;
      case MMIO.DRIVER_FEATURES:
        this.#reg.with(() => {
          // §3.1.1: features are written after DRIVER and before FEATURES_OK.
          if (s.load(W.STATUS) !== (STATUS.ACKNOWLEDGE | STATUS.DRIVER)) return;
          const fsel = s.load(W.DRIVER_FEATURES_SEL);
          if (fsel === 0) s.store(W.DRIVER_FEATURES_LO, value);
          else if (fsel === 1) s.store(W.DRIVER_FEATURES_HI, value);
        });
        return;
    }
    this.#reg.with(() => this.#writeQueueRegister(offset, value));
  }

  #writeQueueRegister(offset: number, value: number): void {
    const s = this.shared;
    const sel = s.load(W.QUEUE_SEL);
    const status = s.load(W.STATUS);
    // Queue configuration is legal after FEATURES_OK and before DRIVER_OK
    // (§3.1.1 step 7), and only while the queue is not ready (§4.2.2.3: "the
    // driver MUST NOT write ... when QueueReady is not zero" — we ignore it).
    const configurable = (status & STATUS.FEATURES_OK) !== 0 &&
      (status & (STATUS.DRIVER_OK | STATUS.FAILED | STATUS.DEVICE_NEEDS_RESET)) === 0;
    if (sel >= this.info.queueMaxSizes.length || !configurable) return;
    if (offset === MMIO.QUEUE_READY) {
      s.store(s.q(sel, QW.READY), value & 1);
      return;
    }
    if (s.load(s.q(sel, QW.READY))) return;
    const field = ({
      [MMIO.QUEUE_NUM]: QW.NUM,
      [MMIO.QUEUE_DESC_LOW]: QW.DESC_LO,
      [MMIO.QUEUE_DESC_HIGH]: QW.DESC_HI,
      [MMIO.QUEUE_DRIVER_LOW]: QW.DRIVER_LO,
      [MMIO.QUEUE_DRIVER_HIGH]: QW.DRIVER_HI,
      [MMIO.QUEUE_DEVICE_LOW]: QW.DEVICE_LO,
      [MMIO.QUEUE_DEVICE_HIGH]: QW.DEVICE_HI,
    } as Record<number, number | undefined>)[offset];
    if (field !== undefined) s.store(s.q(sel, field), value);
  }

  #setStatus(value: number): void {
    const s = this.shared;
    let event = false;
    let raise = false;
    this.#reg.with(() => {
      const old = s.load(W.STATUS);
      // FAILED may be set at any time (§2.1.1); the device stops.
      if (value & STATUS.FAILED) {
        s.store(W.STATUS, old | STATUS.FAILED);
        event = true;
        return;
      }
      // Otherwise the driver only ever adds bits, one step of §3.1.1 at a time;
      // DEVICE_NEEDS_RESET is the device's to set and survives driver writes.
      const keep = old & STATUS.DEVICE_NEEDS_RESET;
      const v = value & ~STATUS.DEVICE_NEEDS_RESET;
      const had = old & ~STATUS.DEVICE_NEEDS_RESET;
      if ((v & had) !== had) return;
      const added = v & ~old;
      const A = STATUS.ACKNOWLEDGE, D = STATUS.DRIVER, F = STATUS.FEATURES_OK;
      const K = STATUS.DRIVER_OK;
      const ok = (added === A && old === 0) ||
        (added === D && had === A) ||
        (added === F && had === (A | D)) ||
        (added === K && had === (A | D | F)) ||
        added === 0;
      if (!ok) return;
      if (added === F && !this.#featuresAcceptable()) {
        // §3.1.1 step 6: leave FEATURES_OK clear; the driver reads it back and gives up.
        return;
      }
      s.store(W.STATUS, v | keep);
      if (added === K && !keep) {
        const why = this.#queueError();
        if (why !== null) {
          this.#events.error?.(new Error(why));
          raise = this.#needsReset();
        }
        event = true;
      }
    });
    if (raise) this.#events.raise();
    if (event) this.#events.statusChanged();
  }

  #featuresAcceptable(): boolean {
    const f = this.shared.driverFeatures();
    return (f & ~this.#features) === 0n && (f & bit(FEATURE.VERSION_1)) !== 0n;
  }

  /** Why a ready queue's configuration is unusable, or null (checked at DRIVER_OK). */
  #queueError(): string | null {
    for (let q = 0; q < this.info.queueMaxSizes.length; q++) {
      const queue = this.shared.queue(q, false);
      if (!queue.ready) continue;
      const why = queue.configError(this.#mem);
      if (why !== null) return `queue ${q}: ${why}`;
    }
    return null;
  }

  /**
   * §2.1.2: sets DEVICE_NEEDS_RESET, bumps ConfigGeneration and sets the
   * config-change bit (the caller raises the interrupt when this returns
   * true). Call with the register lock held.
   */
  #needsReset(): boolean {
    const s = this.shared;
    const status = s.load(W.STATUS);
    if (status & STATUS.DEVICE_NEEDS_RESET) return false;
    s.store(W.STATUS, status | STATUS.DEVICE_NEEDS_RESET);
    Atomics.add(this.#w, W.CONFIG_GEN, 1);
    Atomics.or(this.#w, W.INT_STATUS, INT.CONFIG_CHANGE);
    return true;
  }

  /**
   * Device reset (Status written 0, §2.4). Takes the device lock first: the
   * host finishes the batch it is serving, then the epoch moves under both
   * locks, so nothing of the old configuration touches the rings afterwards.
   */
  reset(): void {
    const s = this.shared;
    let lowered = false;
    const tookDev = this.#dev.acquire();
    try {
      this.#reg.with(() => {
        Atomics.add(this.#w, W.EPOCH, 1);
        s.resetRegisters();
        lowered = Atomics.exchange(this.#w, W.INT_STATUS, 0) !== 0;
      });
    } finally {
      if (tookDev) this.#dev.release();
    }
    if (lowered) this.#events.lower?.();
    this.#events.statusChanged();
  }
}
