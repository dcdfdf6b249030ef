/**
 * The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): registers,
 * feature negotiation (VIRTIO_F_VERSION_1 required), the status state machine
 * (§2.1, §3.1.1), queue setup, config space with a generation counter,
 * interrupt status and acknowledge.
 *
 * Register accesses come from the vCPU's MMIO exits through
 * {@link VirtioMmioTransport.read} / {@link VirtioMmioTransport.write}. No
 * guest action makes these throw: bad accesses are ignored (reads give 0),
 * and a device error while serving a queue sets DEVICE_NEEDS_RESET and sends
 * a configuration-change interrupt (§2.1.2).
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import { bit, type DeviceContext, FEATURE, STATUS, type VirtioDevice } from "./device.ts";
import { Queue, type QueueState } from "./queue.ts";

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
/** Vendor ID reported ("SKIF" would be cute, but QEMU's 0x554d4551 style is arbitrary too). */
export const SKIFF_VENDOR_ID = 0x46494b53;

/** InterruptStatus bits (§4.2.2). */
export const INT = { USED_BUFFER: 1, CONFIG_CHANGE: 2 } as const;

/**
 * The interrupt line: called with true on every interrupt the device raises
 * (an edge-triggered line or irqfd pulses each time), and with false when the
 * driver's acknowledge clears InterruptStatus (a level-triggered line drops).
 */
export type IrqCallback = (asserted: boolean) => void;

/** Transport features every device gets: the queue implements them. */
const TRANSPORT_FEATURES = bit(FEATURE.VERSION_1) | bit(FEATURE.RING_INDIRECT_DESC) |
  bit(FEATURE.RING_EVENT_IDX);

/** Serialisable transport state (snapshots). */
export interface MmioState {
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  driverFeatures: string;
  queueSel: number;
  interruptStatus: number;
  configGeneration: number;
  queues: QueueState[];
  device: unknown;
}

/** Options of {@link VirtioMmioTransport}. */
export interface MmioOptions {
  /** Told about guest errors that put the device into DEVICE_NEEDS_RESET (logging). */
  onDeviceError?: (error: unknown) => void;
  /**
   * Words shared with a device back-end on another thread (see
   * `mmio_remote.ts`): {@link SHARED}. Default: private words.
   */
  shared?: Int32Array;
  /** Called after every Status change with the transport's state (the remote host keeps a copy). */
  onStatusChange?: (state: MmioState) => void;
}

/** Int32 word indices of the shared transport words. */
export const SHARED = {
  /** InterruptStatus: raised by whoever serves the queues, cleared by InterruptACK. */
  INT_STATUS: 0,
  /** ConfigGeneration. */
  CONFIG_GEN: 1,
  /** {@link HOST_FLAG} bits set by a host-side back-end. */
  HOST_FLAGS: 2,
  /** Reset handshake: epoch the transport asked for / the host completed. */
  RESET_REQ: 3,
  RESET_ACK: 4,
} as const;
/** Number of shared Int32 words (the device config bytes follow them in a remote buffer). */
export const SHARED_WORDS = 8;
/** Host flag: the back-end hit a guest error; the transport sets DEVICE_NEEDS_RESET. */
export const HOST_FLAG_NEEDS_RESET = 1;

/** One virtio-mmio device window. */
export class VirtioMmioTransport {
  readonly device: VirtioDevice;
  readonly queues: Queue[];
  #mem: GuestMemory;
  #irq: IrqCallback;
  #onError: (error: unknown) => void;
  #status = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  #queueSel = 0;
  /** InterruptStatus, ConfigGeneration and host flags, shared with a host-side back-end. */
  #shared: Int32Array;
  #active = false;
  /** Last error that set DEVICE_NEEDS_RESET (for diagnostics). */
  lastError: unknown = null;

  constructor(device: VirtioDevice, mem: GuestMemory, irq: IrqCallback, opts: MmioOptions = {}) {
    this.device = device;
    this.queues = device.queueMaxSizes.map((n) => new Queue(n));
    this.#mem = mem;
    this.#irq = irq;
    this.#onError = opts.onDeviceError ?? (() => {});
    this.#shared = opts.shared ?? new Int32Array(SHARED_WORDS);
    this.#onStatusChange = opts.onStatusChange ?? null;
  }

  #onStatusChange: ((state: MmioState) => void) | null;

  get #interruptStatus(): number {
    return Atomics.load(this.#shared, SHARED.INT_STATUS);
  }
  get #configGeneration(): number {
    return Atomics.load(this.#shared, SHARED.CONFIG_GEN) >>> 0;
  }

  /** Picks up a back-end's NEEDS_RESET request (shared flag) before serving an access. */
  #syncHost(): void {
    if (Atomics.load(this.#shared, SHARED.HOST_FLAGS) & HOST_FLAG_NEEDS_RESET) {
      Atomics.and(this.#shared, SHARED.HOST_FLAGS, ~HOST_FLAG_NEEDS_RESET);
      if (this.#status !== 0 && !(this.#status & STATUS.DEVICE_NEEDS_RESET)) {
        this.#active = false;
        this.#status |= STATUS.DEVICE_NEEDS_RESET;
        this.#statusChanged();
      }
    }
  }

  #statusChanged(): void {
    this.#onStatusChange?.(this.save());
  }

  /** Features offered to the driver. */
  get deviceFeatures(): bigint {
    return this.device.features | TRANSPORT_FEATURES;
  }
  /** Features the driver accepted (valid once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }
  /** The Status register. */
  get status(): number {
    return this.#status;
  }
  /** InterruptStatus. */
  get interruptStatus(): number {
    return this.#interruptStatus;
  }
  /** Whether the device is activated (DRIVER_OK and not failed). */
  get active(): boolean {
    return this.#active;
  }

  /** A register read of `data.length` bytes at `offset` in the window. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    this.#syncHost();
    if (offset >= MMIO.CONFIG) {
      try {
        this.device.readConfig(offset - MMIO.CONFIG, data);
      } catch (e) {
        this.#onError(e);
      }
      return;
    }
    // §4.2.2.2: the driver MUST use 32-bit wide, aligned accesses for the
    // registers; anything else reads as zero.
    if (data.length !== 4 || offset % 4 !== 0) return;
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.readRegister(offset), true);
  }

  /** A register write of `data.length` bytes at `offset` in the window. */
  write(offset: number, data: Uint8Array): void {
    this.#syncHost();
    if (offset >= MMIO.CONFIG) {
      try {
        this.device.writeConfig(offset - MMIO.CONFIG, data);
      } catch (e) {
        this.#onError(e);
      }
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) return;
    this.writeRegister(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  /** A 32-bit register read. */
  readRegister(offset: number): number {
    const q = this.queues[this.#queueSel];
    switch (offset) {
      case MMIO.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MMIO.VERSION:
        return 2;
      case MMIO.DEVICE_ID:
        return this.device.deviceType;
      case MMIO.VENDOR_ID:
        return SKIFF_VENDOR_ID;
      case MMIO.DEVICE_FEATURES:
        if (this.#deviceFeaturesSel > 1) return 0;
        return Number((this.deviceFeatures >> BigInt(32 * this.#deviceFeaturesSel)) & 0xffffffffn);
      case MMIO.QUEUE_NUM_MAX:
        return q ? q.maxSize : 0;
      case MMIO.QUEUE_READY:
        return q?.ready ? 1 : 0;
      case MMIO.INTERRUPT_STATUS:
        return this.#interruptStatus;
      case MMIO.STATUS:
        return this.#status;
      case MMIO.QUEUE_DESC_LOW:
        return q ? q.descTable % 2 ** 32 : 0;
      case MMIO.QUEUE_DESC_HIGH:
        return q ? Math.floor(q.descTable / 2 ** 32) : 0;
      case MMIO.QUEUE_DRIVER_LOW:
        return q ? q.availRing % 2 ** 32 : 0;
      case MMIO.QUEUE_DRIVER_HIGH:
        return q ? Math.floor(q.availRing / 2 ** 32) : 0;
      case MMIO.QUEUE_DEVICE_LOW:
        return q ? q.usedRing % 2 ** 32 : 0;
      case MMIO.QUEUE_DEVICE_HIGH:
        return q ? Math.floor(q.usedRing / 2 ** 32) : 0;
      case MMIO.QUEUE_NUM:
        return q ? q.size : 0;
      // §4.2.2: no shared memory regions: length reads as -1.
      case MMIO.SHM_LEN_LOW:
      case MMIO.SHM_LEN_HIGH:
      case MMIO.SHM_BASE_LOW:
      case MMIO.SHM_BASE_HIGH:
        return 0xffffffff;
      case MMIO.CONFIG_GENERATION:
        return this.#configGeneration;
      default:
        return 0;
    }
  }

  /** A 32-bit register write. */
  writeRegister(offset: number, value: number): void {
    value >>>= 0;
    switch (offset) {
      case MMIO.DEVICE_FEATURES_SEL:
        this.#deviceFeaturesSel = value;
        return;
      case MMIO.DRIVER_FEATURES:
        // §3.1.1: features are written after DRIVER and before FEATURES_OK.
        if (this.#status !== (STATUS.ACKNOWLEDGE | STATUS.DRIVER)) return;
        if (this.#driverFeaturesSel > 1) return;
        {
          const shift = BigInt(32 * this.#driverFeaturesSel);
          this.#driverFeatures = (this.#driverFeatures & ~(0xffffffffn << shift)) |
            (BigInt(value) << shift);
        }
        return;
      case MMIO.DRIVER_FEATURES_SEL:
        this.#driverFeaturesSel = value;
        return;
      case MMIO.QUEUE_SEL:
        this.#queueSel = value;
        return;
      case MMIO.QUEUE_NOTIFY:
        // §4.2.2: the value is the queue index (low 16 bits; NOTIFICATION_DATA is not offered).
        this.notify(value & 0xffff);
        return;
      case MMIO.INTERRUPT_ACK:
        if ((Atomics.and(this.#shared, SHARED.INT_STATUS, ~value) & ~value) === 0) this.#irq(false);
        return;
      case MMIO.STATUS:
        this.#setStatus(value);
        return;
    }
    this.#writeQueueRegister(offset, value);
  }

  #writeQueueRegister(offset: number, value: number): void {
    const q = this.queues[this.#queueSel];
    // Queue configuration is legal after FEATURES_OK and before DRIVER_OK
    // (§3.1.1 step 7), and only while the queue is not ready (§4.2.2.3: "the
    // driver MUST NOT write ... when QueueReady is not zero" — we ignore it).
    const configurable = (this.#status & STATUS.FEATURES_OK) !== 0 &&
      (this.#status & (STATUS.DRIVER_OK | STATUS.FAILED | STATUS.DEVICE_NEEDS_RESET)) === 0;
    if (!q || !configurable) return;
    if (offset === MMIO.QUEUE_READY) {
      q.ready = (value & 1) === 1;
      return;
    }
    if (q.ready) return;
    const lo = (addr: number) => Math.floor(addr / 2 ** 32) * 2 ** 32 + value;
    const hi = (addr: number) =>
      // Above 2^53 an address cannot be represented; such a ring is outside guest memory anyway.
      value >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : value * 2 ** 32 + (addr % 2 ** 32);
    switch (offset) {
      case MMIO.QUEUE_NUM:
        q.size = value;
        return;
      case MMIO.QUEUE_DESC_LOW:
        q.descTable = lo(q.descTable);
        return;
      case MMIO.QUEUE_DESC_HIGH:
        q.descTable = hi(q.descTable);
        return;
      case MMIO.QUEUE_DRIVER_LOW:
        q.availRing = lo(q.availRing);
        return;
      case MMIO.QUEUE_DRIVER_HIGH:
        q.availRing = hi(q.availRing);
        return;
      case MMIO.QUEUE_DEVICE_LOW:
        q.usedRing = lo(q.usedRing);
        return;
      case MMIO.QUEUE_DEVICE_HIGH:
        q.usedRing = hi(q.usedRing);
        return;
    }
  }

  #setStatus(value: number): void {
    if (value === 0) {
      this.reset();
      return;
    }
    const old = this.#status;
    // FAILED may be set at any time (§2.1.1); the device stops.
    if (value & STATUS.FAILED) {
      this.#status |= STATUS.FAILED;
      this.#deactivate();
      this.#statusChanged();
      return;
    }
    // Otherwise the driver only ever adds bits, one step of §3.1.1 at a time;
    // DEVICE_NEEDS_RESET is the device's to set and survives driver writes.
    const keep = old & STATUS.DEVICE_NEEDS_RESET;
    const v = value & ~STATUS.DEVICE_NEEDS_RESET;
    if ((v & (old & ~STATUS.DEVICE_NEEDS_RESET)) !== (old & ~STATUS.DEVICE_NEEDS_RESET)) return;
    const added = v & ~old;
    const A = STATUS.ACKNOWLEDGE, D = STATUS.DRIVER, F = STATUS.FEATURES_OK, K = STATUS.DRIVER_OK;
    const ok = (added === A && old === 0) ||
      (added === D && (old & ~keep) === A) ||
      (added === F && (old & ~keep) === (A | D)) ||
      (added === K && (old & ~keep) === (A | D | F)) ||
      added === 0;
    if (!ok) return;
    if (added === F && !this.#featuresAcceptable()) {
      // §3.1.1 step 6: leave FEATURES_OK clear; the driver reads it back and gives up.
      return;
    }
    this.#status = v | keep;
    if (added === K && !keep) this.#activate();
    this.#statusChanged();
  }

  #featuresAcceptable(): boolean {
    const f = this.#driverFeatures;
    return (f & ~this.deviceFeatures) === 0n && (f & bit(FEATURE.VERSION_1)) !== 0n;
  }

  #context(): DeviceContext {
    return {
      mem: this.#mem,
      queues: this.queues,
      features: this.#driverFeatures,
      signalUsed: (index) => this.signalUsed(index),
      signalConfig: () => this.signalConfig(),
      fail: (error) => this.#needsReset(error),
    };
  }

  #activate(): void {
    const eventIdx = (this.#driverFeatures & bit(FEATURE.RING_EVENT_IDX)) !== 0n;
    for (const q of this.queues) {
      q.eventIdx = eventIdx;
      if (q.ready) {
        const why = q.configError(this.#mem);
        if (why !== null) {
          this.#needsReset(new Error(`queue ${this.queues.indexOf(q)}: ${why}`));
          return;
        }
      }
    }
    try {
      this.device.activate(this.#context());
      this.#active = true;
    } catch (e) {
      this.#needsReset(e);
    }
  }

  #deactivate(): void {
    if (!this.#active) return;
    this.#active = false;
    try {
      this.device.reset();
    } catch (e) {
      this.#onError(e);
    }
  }

  /** §2.1.2: the device hit an error it cannot recover from without a reset. */
  #needsReset(error: unknown): void {
    this.lastError = error;
    this.#onError(error);
    if (this.#status & STATUS.DEVICE_NEEDS_RESET) return;
    this.#deactivate();
    this.#status |= STATUS.DEVICE_NEEDS_RESET;
    this.#statusChanged();
    // "If DEVICE_NEEDS_RESET is set, the device MUST send a device configuration change notification".
    this.signalConfig();
  }

  /** Device reset (Status written 0, §2.4): queues, features, interrupts back to initial. */
  reset(): void {
    this.#deactivate();
    for (const q of this.queues) q.reset();
    this.#status = 0;
    this.#driverFeatures = 0n;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#queueSel = 0;
    Atomics.store(this.#shared, SHARED.HOST_FLAGS, 0);
    this.#statusChanged();
    if (Atomics.exchange(this.#shared, SHARED.INT_STATUS, 0) !== 0) this.#irq(false);
  }

  /**
   * The driver notified queue `index` (from QueueNotify or an ioeventfd).
   * Device errors set DEVICE_NEEDS_RESET; nothing throws.
   */
  notify(index: number): void {
    if (!this.#active || index >= this.queues.length || !this.queues[index].ready) return;
    try {
      this.device.queueNotify(index);
    } catch (e) {
      this.#needsReset(e);
    }
  }

  /** Interrupts the driver for used buffers on queue `index` if its suppression state asks for it. */
  signalUsed(index: number): void {
    const q = this.queues[index];
    if (!q || !this.#active) return;
    let needed: boolean;
    try {
      needed = q.needsNotification(this.#mem);
    } catch (e) {
      this.#needsReset(e);
      return;
    }
    if (needed) this.#raise(INT.USED_BUFFER);
  }

  /** Config space changed: bumps ConfigGeneration (§2.5.1) and sends a config interrupt. */
  signalConfig(): void {
    Atomics.add(this.#shared, SHARED.CONFIG_GEN, 1);
    // Only a driver that got as far as DRIVER_OK listens (§2.5.1 config notifications).
    if (this.#status & (STATUS.DRIVER_OK | STATUS.DEVICE_NEEDS_RESET)) {
      this.#raise(INT.CONFIG_CHANGE);
    }
  }

  #raise(bits: number): void {
    Atomics.or(this.#shared, SHARED.INT_STATUS, bits);
    this.#irq(true);
  }

  /** Serialisable state of the transport, its queues and its device. */
  save(): MmioState {
    return {
      status: this.#status,
      deviceFeaturesSel: this.#deviceFeaturesSel,
      driverFeaturesSel: this.#driverFeaturesSel,
      driverFeatures: this.#driverFeatures.toString(),
      queueSel: this.#queueSel,
      interruptStatus: this.#interruptStatus,
      configGeneration: this.#configGeneration,
      queues: this.queues.map((q) => q.save()),
      device: this.device.save(),
    };
  }

  /** Restores {@link save}'s state; re-activates the device when it was active. */
  restore(s: MmioState): void {
    if (s.queues.length !== this.queues.length) {
      throw new RangeError(
        `mmio state has ${s.queues.length} queues, device has ${this.queues.length}`,
      );
    }
    this.#deactivate();
    this.#status = s.status;
    this.#deviceFeaturesSel = s.deviceFeaturesSel;
    this.#driverFeaturesSel = s.driverFeaturesSel;
    this.#driverFeatures = BigInt(s.driverFeatures);
    this.#queueSel = s.queueSel;
    Atomics.store(this.#shared, SHARED.INT_STATUS, s.interruptStatus);
    Atomics.store(this.#shared, SHARED.CONFIG_GEN, s.configGeneration | 0);
    s.queues.forEach((qs, i) => this.queues[i].restore(qs));
    this.device.restore(s.device);
    const on = STATUS.DRIVER_OK;
    if ((s.status & on) && !(s.status & (STATUS.FAILED | STATUS.DEVICE_NEEDS_RESET))) {
      try {
        this.device.activate(this.#context());
        this.#active = true;
      } catch (e) {
        this.#needsReset(e);
      }
    }
    if (this.#interruptStatus !== 0) this.#irq(true);
  }
}
