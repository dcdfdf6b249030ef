/**
 * The host half of a virtio-mmio device: owns the {@link VirtioDevice} and
 * its queues on the main thread, where back-ends (console streams, the FUSE
 * server, the network stack) live. The registers are in shared memory
 * (mmio_regs.ts) and answered by whichever thread takes the access — every
 * vCPU Worker (mmio_worker.ts) or, in-process, the main thread (mmio.ts).
 *
 * - **Activation**: when the status words say DRIVER_OK, the host builds the
 *   queues from the queue configuration in the shared words and activates
 *   the device with a {@link DeviceContext}. It looks whenever the register
 *   half says the status changed and before every notification
 *   ({@link VirtioMmioHost.reconcile}), so the order in which a Worker's
 *   message and an ioeventfd arrive does not matter.
 * - **Notifications** come through KVM ioeventfds polled here
 *   ({@link VirtioMmioHost.attachIoeventfds}): a QueueNotify write never
 *   leaves `KVM_RUN`. **Interrupts** go out through the `irq` callback (an
 *   irqfd write or `KVM_IRQ_LINE`).
 * - **Reset without waiting for this thread**: the device's memory is a
 *   guarded view. Its first access in a turn of the event loop takes the
 *   device lock (released at the end of the turn, a microtask) and every
 *   access checks the activation's reset epoch. A register half resetting
 *   the device takes the same lock and moves the epoch, so it waits at most
 *   for the batch in progress, and any later access of the old activation —
 *   a queue notify, a back-end completion, a console write — throws
 *   {@link DeviceResetError} instead of touching the re-initialised rings.
 *
 * @module
 */

import { runtimeModuleUrl } from "../../hv/module_url.ts";
import type { DeviceSpec } from "../../hv/device.ts";
import type { GuestMemory, MemoryRegion } from "../../hv/memory.ts";
import { drainEventfd, StopSignal, waitAnyReadable } from "../../kvm_ffi/eventfd.ts";
import { close, EFD, eventfd } from "../../kvm_ffi/libc.ts";
import { bit, type DeviceContext, FEATURE, STATUS, type VirtioDevice } from "./device.ts";
import {
  CONFIG_MIRROR,
  INT,
  MMIO,
  MMIO_WINDOW,
  type MmioDeviceInfo,
  MmioShared,
  W,
} from "./mmio_regs.ts";
import { type MmioTransportState, parseMmioTransportState } from "./mmio_persist.ts";
import { Queue, type QueueState } from "./queue.ts";
import { HOST_OWNER, type SharedLock } from "./shared_lock.ts";
import type { MmioWorkerConfig } from "./mmio_worker.ts";

/** What a register half in a Worker posts to the host half. */
export type MmioHostMessage =
  | { type: "status" }
  | { type: "notify"; index: number }
  | { type: "config-write"; offset: number; data: Uint8Array }
  | { type: "error"; message: string };

/** An access by a device activation the driver has since reset (the access is dropped). */
export class DeviceResetError extends Error {
  constructor(what: string) {
    super(`virtio device ${what}: the driver reset the device; the stale access is dropped`);
    this.name = "DeviceResetError";
  }
}

/** What {@link VirtioMmioHost.attachIoeventfds} needs of a VM (`hv/vm.ts` `Vm` has it). */
export interface IoeventfdVm {
  /** `KVM_IOEVENTFD`: a guest write of `len` bytes at `addr` signals eventfd `fd`. */
  ioeventfd(
    fd: number,
    addr: number,
    len: number,
    opts?: { datamatch?: bigint; deassign?: boolean },
  ): void;
}

/** Options of {@link VirtioMmioHost}. */
export interface MmioHostOptions {
  /** Raises the device's interrupt (an irqfd write, or `() => vm.pulseIrq(gsi)`). */
  irq: () => void;
  /** Guest errors that put the device into DEVICE_NEEDS_RESET (for logs). */
  onDeviceError?: (error: unknown) => void;
  /**
   * Transport state to start from (a snapshot restore). Restore the
   * device's own state first: an active device is activated here.
   */
  state?: MmioTransportState;
}

/** One activation: from DRIVER_OK until reset, failure or FAILED. */
/** Most serve-and-re-arm rounds for one notification (then the next notification goes on). */
const SERVE_ROUNDS = 64;

interface Activation {
  epoch: number;
  queues: Queue[];
  features: bigint;
  mem: GuestMemory;
}

/** Guest memory that checks, on every access, that its activation is still current. */
class GuardedMemory implements GuestMemory {
  readonly #inner: GuestMemory;
  readonly #guard: () => void;
  constructor(inner: GuestMemory, guard: () => void) {
    this.#inner = inner;
    this.#guard = guard;
  }
  get regions(): readonly MemoryRegion[] {
    return this.#inner.regions;
  }
  contains(addr: number, length: number): boolean {
    return this.#inner.contains(addr, length);
  }
  slice(addr: number, length: number): Uint8Array<ArrayBuffer> {
    this.#guard();
    return this.#inner.slice(addr, length);
  }
  read(addr: number, dest: Uint8Array): void {
    this.#guard();
    this.#inner.read(addr, dest);
  }
  write(addr: number, src: Uint8Array): void {
    this.#guard();
    this.#inner.write(addr, src);
  }
  readU8(addr: number): number {
    this.#guard();
    return this.#inner.readU8(addr);
  }
  readU16(addr: number): number {
    this.#guard();
    return this.#inner.readU16(addr);
  }
  readU32(addr: number): number {
    this.#guard();
    return this.#inner.readU32(addr);
  }
  readU64(addr: number): bigint {
    this.#guard();
    return this.#inner.readU64(addr);
  }
  writeU8(addr: number, value: number): void {
    this.#guard();
    this.#inner.writeU8(addr, value);
  }
  writeU16(addr: number, value: number): void {
    this.#guard();
    this.#inner.writeU16(addr, value);
  }
  writeU32(addr: number, value: number): void {
    this.#guard();
    this.#inner.writeU32(addr, value);
  }
  writeU64(addr: number, value: bigint): void {
    this.#guard();
    this.#inner.writeU64(addr, value);
  }
}

/** The host half; see the module doc. */
export class VirtioMmioHost {
  readonly device: VirtioDevice;
  /** The register file shared with the register halves. */
  readonly shared: MmioShared;
  /** Device type, queue sizes and features, as the register halves need them. */
  readonly info: MmioDeviceInfo;
  /** Last guest error that set DEVICE_NEEDS_RESET (diagnostics). */
  lastError: unknown = null;
  readonly #mem: GuestMemory;
  readonly #irq: () => void;
  readonly #onError: (e: unknown) => void;
  readonly #dev: SharedLock;
  readonly #reg: SharedLock;
  #held = false;
  #seenEpoch = 0;
  #activation: Activation | null = null;
  #idle: Queue[];

  constructor(device: VirtioDevice, mem: GuestMemory, opts: MmioHostOptions) {
    this.device = device;
    this.info = {
      deviceType: device.deviceType,
      queueMaxSizes: [...device.queueMaxSizes],
      features: device.features,
    };
    this.shared = MmioShared.create(this.info.queueMaxSizes);
    this.#dev = this.shared.devLock(HOST_OWNER);
    this.#reg = this.shared.regLock(HOST_OWNER);
    this.#mem = mem;
    this.#irq = opts.irq;
    this.#onError = opts.onDeviceError ?? (() => {});
    this.#idle = this.#freshQueues();
    this.refreshConfig(false);
    if (opts.state) this.restore(opts.state);
  }

  #freshQueues(): Queue[] {
    return this.info.queueMaxSizes.map((n) => new Queue(n));
  }

  /** Whether the device is activated (DRIVER_OK, not reset or failed). */
  get active(): boolean {
    return this.#activation !== null;
  }

  /** The queues of the current activation (fresh, unconfigured ones while inactive). */
  get queues(): readonly Queue[] {
    return this.#activation?.queues ?? this.#idle;
  }

  /**
   * Holds the device lock until the end of this turn of the event loop (a
   * microtask releases it), so the batch of device work in this turn runs
   * while no register half can reset the device.
   */
  #enter(): void {
    if (this.#held) return;
    const took = this.#dev.acquire();
    this.#held = true;
    queueMicrotask(() => {
      this.#held = false;
      if (took) this.#dev.release();
    });
  }

  #guard(a: Activation): void {
    if (this.#activation !== a) throw new DeviceResetError(`type ${this.info.deviceType}`);
    this.#enter();
    if (Atomics.load(this.shared.words, W.EPOCH) !== a.epoch) {
      throw new DeviceResetError(`type ${this.info.deviceType}`);
    }
  }

  /** Records a guest error for logs. */
  reportError(e: unknown): void {
    if (e instanceof DeviceResetError) return;
    this.lastError = e;
    this.#onError(e);
  }

  /**
   * Brings the device in line with the status words: deactivates it after a
   * reset, FAILED or DEVICE_NEEDS_RESET, activates it at DRIVER_OK.
   */
  reconcile(): void {
    this.#enter();
    const s = this.shared;
    const epoch = Atomics.load(s.words, W.EPOCH);
    const status = s.load(W.STATUS);
    const want = (status & STATUS.DRIVER_OK) !== 0 &&
      (status & (STATUS.FAILED | STATUS.DEVICE_NEEDS_RESET)) === 0;
    const a = this.#activation;
    if (a && (a.epoch !== epoch || !want)) this.#deactivate();
    if (epoch !== this.#seenEpoch) {
      // A driver starting over reads config space next: give it the current one.
      this.#seenEpoch = epoch;
      this.refreshConfig(false);
    }
    if (!this.#activation && want) this.#activate(epoch, null);
  }

  #activate(epoch: number, saved: readonly QueueState[] | null): void {
    // One consistent read of the negotiated features and queue configuration.
    const { features, queues } = this.#reg.with(() => {
      const features = this.shared.driverFeatures();
      const eventIdx = (features & bit(FEATURE.RING_EVENT_IDX)) !== 0n;
      const queues = this.info.queueMaxSizes.map((_, i) => this.shared.queue(i, eventIdx));
      return { features, queues };
    });
    if (saved) queues.forEach((q, i) => q.restore(saved[i]));
    const a: Activation = { epoch, queues, features, mem: this.#mem };
    a.mem = new GuardedMemory(this.#mem, () => this.#guard(a));
    this.#activation = a;
    for (const [i, q] of queues.entries()) {
      const why = q.ready ? q.configError(this.#mem) : null;
      if (why !== null) {
        this.#fail(a, new Error(`queue ${i}: ${why}`));
        return;
      }
    }
    const ctx: DeviceContext = {
      mem: a.mem,
      queues,
      features,
      signalUsed: (index) => this.#signalUsed(a, index),
      signalConfig: () => this.signalConfig(),
      fail: (e) => this.#fail(a, e),
    };
    try {
      this.device.activate(ctx);
    } catch (e) {
      this.#fail(a, e);
      return;
    }
    this.refreshConfig(false);
  }

  /**
   * Finishes a restore once the VM's interrupt controllers have their state
   * back (and before the vCPUs run): raises the interrupt if InterruptStatus
   * is set, and looks at every ready queue once — notifications that were
   * still in an eventfd at capture are not in the snapshot (a spurious
   * notify is harmless).
   */
  resumeAfterRestore(): void {
    this.reconcile();
    if (this.shared.load(W.INT_STATUS) !== 0) this.#irq();
    const a = this.#activation;
    a?.queues.forEach((q, i) => {
      if (q.ready && this.#activation === a) this.#serve(a, i);
    });
  }

  #deactivate(): void {
    if (this.#activation === null) return;
    this.#activation = null;
    this.#idle = this.#freshQueues();
    try {
      this.device.reset();
    } catch (e) {
      this.reportError(e);
    }
  }

  /** §2.1.2: the device hit an error it cannot recover from without a reset. */
  #fail(a: Activation, e: unknown): void {
    this.reportError(e);
    if (this.#activation !== a) return;
    this.#enter();
    if (Atomics.load(this.shared.words, W.EPOCH) !== a.epoch) {
      // The driver reset the device meanwhile: nothing to report to it.
      this.reconcile();
      return;
    }
    const s = this.shared;
    const raise = this.#reg.with(() => {
      const status = s.load(W.STATUS);
      if (status & STATUS.DEVICE_NEEDS_RESET) return false;
      s.store(W.STATUS, status | STATUS.DEVICE_NEEDS_RESET);
      // "If DEVICE_NEEDS_RESET is set, the device MUST send a device configuration change notification".
      Atomics.add(s.words, W.CONFIG_GEN, 1);
      Atomics.or(s.words, W.INT_STATUS, INT.CONFIG_CHANGE);
      return true;
    });
    this.#deactivate();
    if (raise) this.#irq();
  }

  #signalUsed(a: Activation, index: number): void {
    if (this.#activation !== a) return;
    const q = a.queues[index];
    if (!q) return;
    try {
      if (q.needsNotification(a.mem)) this.#raise(INT.USED_BUFFER);
    } catch (e) {
      this.#fail(a, e);
    }
  }

  #raise(bits: number): void {
    Atomics.or(this.shared.words, W.INT_STATUS, bits);
    this.#irq();
  }

  /**
   * Serves a notified queue, then re-arms its notifications — with EVENT_IDX
   * that means moving `avail_event` on (§2.7.10): a driver that sees it
   * unmoved stops notifying after the first batch — and serves again while
   * buffers arrived meanwhile and the device keeps consuming them (a device
   * that leaves buffers posted, as vsock rx waiting for data, ends the loop).
   */
  #serve(a: Activation, index: number): void {
    const q = a.queues[index];
    try {
      for (let round = 0; round < SERVE_ROUNDS; round++) {
        const before = q.nextAvail;
        this.device.queueNotify(index);
        if (this.#activation !== a || !q.ready) return;
        if (!q.setNotification(a.mem, true) || q.nextAvail === before) return;
      }
    } catch (e) {
      this.#fail(a, e);
    }
  }

  /** The driver notified queue `index` (an ioeventfd, or a QueueNotify the register half saw). */
  notify(index: number): void {
    this.reconcile();
    const a = this.#activation;
    if (!a || !Number.isInteger(index) || !a.queues[index]?.ready) return;
    this.#serve(a, index);
  }

  /** The driver wrote device config space. */
  configWrite(offset: number, data: Uint8Array): void {
    try {
      this.device.writeConfig(offset, data);
    } catch (e) {
      this.reportError(e);
    }
    this.refreshConfig(false);
  }

  /**
   * Copies the device's config space into the shared mirror the register
   * halves read; with `bump`, also moves ConfigGeneration (§2.5.1), in the
   * same critical section so a driver's generation check sees either both
   * or neither.
   */
  refreshConfig(bump: boolean): void {
    const tmp = new Uint8Array(CONFIG_MIRROR);
    try {
      this.device.readConfig(0, tmp);
    } catch (e) {
      this.reportError(e);
    }
    this.#reg.with(() => {
      this.shared.config.set(tmp);
      if (bump) Atomics.add(this.shared.words, W.CONFIG_GEN, 1);
    });
  }

  /** The device config changed: refreshes the mirror, bumps ConfigGeneration, interrupts a live driver. */
  signalConfig(): void {
    this.refreshConfig(true);
    // Only a driver that got as far as DRIVER_OK listens (§2.5.1 config notifications).
    if (this.shared.load(W.STATUS) & (STATUS.DRIVER_OK | STATUS.DEVICE_NEEDS_RESET)) {
      this.#raise(INT.CONFIG_CHANGE);
    }
  }

  /** Handles one message from a register half in a Worker. Never throws. */
  handle(message: unknown): void {
    const m = message as MmioHostMessage;
    try {
      switch (m?.type) {
        case "status":
          this.reconcile();
          return;
        case "notify":
          this.notify(m.index);
          return;
        case "config-write":
          if (Number.isInteger(m.offset) && m.data instanceof Uint8Array) {
            this.configWrite(m.offset, m.data);
          }
          return;
        case "error":
          this.reportError(new Error(String(m.message)));
          return;
      }
    } catch (e) {
      this.reportError(e);
    }
  }

  /** The structured-cloneable config of the Worker factory (mmio_worker.ts). */
  workerConfig(gsi: number, irqfd?: number): MmioWorkerConfig {
    return {
      shared: this.shared.buffer,
      deviceType: this.info.deviceType,
      queueMaxSizes: [...this.info.queueMaxSizes],
      features: this.info.features.toString(),
      gsi,
      irqfd,
    };
  }

  /** The `DeviceSpec` placing the register half at MMIO `base` with interrupt `gsi`. */
  spec(name: string, base: number, gsi: number, irqfd?: number): DeviceSpec {
    return {
      name,
      module: runtimeModuleUrl("devices/virtio/mmio_worker.ts"),
      config: this.workerConfig(gsi, irqfd),
      mmio: [{ base, length: MMIO_WINDOW }],
    };
  }

  /**
   * Serves the driver's QueueNotify writes through KVM ioeventfds: one per
   * queue at `base` + QueueNotify (4 bytes, datamatch = queue index), so a
   * notify never leaves `KVM_RUN`, whichever vCPU writes it; one `poll` on
   * the FFI thread pool waits for all of them (as vhost-user kicks are).
   * Writes that match no queue still exit and reach a register half. Call
   * before the VM starts; dispose (await) to stop polling and deassign.
   */
  attachIoeventfds(vm: IoeventfdVm, base: number): AsyncDisposable {
    const addr = base + MMIO.QUEUE_NOTIFY;
    const stop = new StopSignal();
    const fds: number[] = [];
    const loops: Promise<void>[] = [];
    const detach = () => {
      for (const [i, fd] of fds.entries()) {
        try {
          vm.ioeventfd(fd, addr, 4, { datamatch: BigInt(i), deassign: true });
        } catch {
          // the VM is already closed: its ioeventfds went with it
        }
      }
    };
    try {
      for (let i = 0; i < this.info.queueMaxSizes.length; i++) {
        const fd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
        fds.push(fd);
        vm.ioeventfd(fd, addr, 4, { datamatch: BigInt(i) });
      }
    } catch (e) {
      detach();
      for (const fd of fds) close(fd);
      stop[Symbol.dispose]();
      throw e;
    }
    // One pool thread waits for all of this device's queues.
    loops.push((async () => {
      for (;;) {
        const ready = await waitAnyReadable(fds, stop);
        if (ready === "stopped") return;
        for (const fd of ready) {
          if (drainEventfd(fd) > 0n) this.handle({ type: "notify", index: fds.indexOf(fd) });
        }
      }
    })());
    let disposed = false;
    return {
      [Symbol.asyncDispose]: async () => {
        if (disposed) return;
        disposed = true;
        stop.fire();
        await Promise.all(loops);
        detach();
        for (const fd of fds) close(fd);
        stop[Symbol.dispose]();
      },
    };
  }

  /**
   * The transport's state: registers, and each queue's configuration and
   * ring positions. Take it with the vCPUs paused.
   */
  save(): MmioTransportState {
    this.#enter();
    const s = this.shared;
    const a = this.#activation;
    const current = a !== null && a.epoch === Atomics.load(s.words, W.EPOCH);
    return this.#reg.with(() => ({
      status: s.load(W.STATUS),
      deviceFeaturesSel: s.load(W.DEVICE_FEATURES_SEL),
      driverFeaturesSel: s.load(W.DRIVER_FEATURES_SEL),
      driverFeatures: s.driverFeatures().toString(),
      queueSel: s.load(W.QUEUE_SEL),
      interruptStatus: s.load(W.INT_STATUS),
      configGeneration: s.load(W.CONFIG_GEN),
      queues: current
        ? a.queues.map((q) => q.save())
        : this.info.queueMaxSizes.map((_, i) => s.queue(i, false).save()),
    }));
  }

  /**
   * Restores a {@link save}d state (checked: a `StateError` names a bad
   * field) before the VM runs: registers into the shared words, and an
   * active device activated with its saved ring positions; call
   * {@link resumeAfterRestore} once the VM state is back. The device's own
   * state must be restored before that: already (a new device), or by
   * `restoreDevice`, called once a device that was active has been reset.
   */
  restore(state: unknown, restoreDevice?: () => void): void {
    const st = parseMmioTransportState(state, this.info.queueMaxSizes);
    this.#enter();
    this.#deactivate();
    restoreDevice?.();
    const s = this.shared;
    this.#reg.with(() => {
      s.store(W.STATUS, st.status);
      s.store(W.DEVICE_FEATURES_SEL, st.deviceFeaturesSel);
      s.store(W.DRIVER_FEATURES_SEL, st.driverFeaturesSel);
      const f = BigInt(st.driverFeatures);
      s.store(W.DRIVER_FEATURES_LO, Number(f & 0xffffffffn));
      s.store(W.DRIVER_FEATURES_HI, Number(f >> 32n));
      s.store(W.QUEUE_SEL, st.queueSel);
      s.store(W.INT_STATUS, st.interruptStatus);
      s.store(W.CONFIG_GEN, st.configGeneration);
      st.queues.forEach((q, i) => s.setQueueConfig(i, q));
    });
    this.refreshConfig(false);
    const want = (st.status & STATUS.DRIVER_OK) !== 0 &&
      (st.status & (STATUS.FAILED | STATUS.DEVICE_NEEDS_RESET)) === 0;
    if (want) this.#activate(Atomics.load(s.words, W.EPOCH), st.queues);
  }
}
