/**
 * A virtio-mmio device split across threads, the way the kvm engine runs it:
 *
 * - the **transport** (registers, negotiation, status machine, queue setup)
 *   runs in every vCPU Worker and answers register accesses on the vCPU's own
 *   thread (hv/device.ts) — the factory {@link create} below;
 * - the **device** (queues, back-end: console streams, FUSE server, network
 *   stack) runs on the host's main thread in a {@link VirtioMmioHost}, because
 *   a Worker blocked in `KVM_RUN` never runs its event loop.
 *
 * The two halves share a SharedArrayBuffer: InterruptStatus, ConfigGeneration
 * and host flags ({@link SHARED}), then a snapshot of the device config space.
 * The transport posts `activate` (with the queue configuration), `notify`,
 * `reset`, `config-write` and `status` messages; the host serves the queues
 * itself (it maps the same guest memory), raises InterruptStatus bits in the
 * shared words and pulses the interrupt line (KVM_IRQ_LINE or an irqfd) — as
 * vhost-user splits a device between QEMU and a back-end.
 *
 * Limitation: the transport's register state lives per Worker, so a VM with
 * virtio devices must have one vCPU that touches them (the kvm engine runs
 * one vCPU; see hv/kvm/plan.ts).
 *
 * @module
 */

import type { DeviceContext as WorkerContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import type { GuestMemory } from "../../hv/memory.ts";
import type { DeviceContext, VirtioDevice } from "./device.ts";
import {
  HOST_FLAG_NEEDS_RESET,
  MMIO,
  MMIO_WINDOW,
  type MmioState,
  SHARED,
  SHARED_WORDS,
  VirtioMmioTransport,
} from "./mmio.ts";
import { Queue, type QueueState } from "./queue.ts";
import { close, EFD, eventfd, libc } from "../../kvm_ffi/libc.ts";
import { drainEventfd, StopSignal, waitReadable } from "../../kvm_ffi/eventfd.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";

/** Bytes of device config space mirrored in the shared buffer. */
export const CONFIG_MIRROR = 256;
const CONFIG_OFFSET = SHARED_WORDS * 4;

/** How long the transport waits for the host to finish a device reset (ms). */
const RESET_WAIT_MS = 2000;

/** What the transport half posts to the host half. */
export type RemoteMessage =
  | { type: "activate"; features: string; queues: QueueState[] }
  | { type: "notify"; index: number }
  | { type: "reset"; epoch: number }
  | { type: "config-write"; offset: number; data: Uint8Array }
  | { type: "status"; state: MmioState };

/** The structured-cloneable config of the Worker factory. */
export interface RemoteMmioConfig {
  shared: SharedArrayBuffer;
  deviceType: number;
  queueMaxSizes: number[];
  /** Device features as a decimal string (bigint does not clone everywhere). */
  features: string;
  /** GSI of the device's interrupt. */
  gsi: number;
  /** When set, interrupts are raised by writing this eventfd (registered as an irqfd). */
  irqfd?: number;
  /** Transport state to start from (snapshot restore). */
  state?: MmioState;
}

/** The transport-side stand-in for a device that lives on the host thread. */
class ProxyDevice implements VirtioDevice {
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  #words: Int32Array;
  #config: Uint8Array;
  #post: (m: RemoteMessage) => void;
  constructor(cfg: RemoteMmioConfig, post: (m: RemoteMessage) => void) {
    this.deviceType = cfg.deviceType;
    this.queueMaxSizes = cfg.queueMaxSizes;
    this.features = BigInt(cfg.features);
    this.#words = new Int32Array(cfg.shared, 0, SHARED_WORDS);
    this.#config = new Uint8Array(cfg.shared, CONFIG_OFFSET, CONFIG_MIRROR);
    this.#post = post;
  }
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at < CONFIG_MIRROR ? Atomics.load(this.#config, at) : 0;
    }
  }
  writeConfig(offset: number, data: Uint8Array): void {
    this.#post({ type: "config-write", offset, data: data.slice() });
  }
  activate(ctx: DeviceContext): void {
    this.#post({
      type: "activate",
      features: ctx.features.toString(),
      queues: ctx.queues.map((q) => q.save()),
    });
  }
  queueNotify(index: number): void {
    this.#post({ type: "notify", index });
  }
  reset(): void {
    // The driver may free the rings as soon as it reads Status 0 back, so the
    // host must have stopped touching them first: wait for its acknowledgement.
    const epoch = Atomics.add(this.#words, SHARED.RESET_REQ, 1) + 1;
    this.#post({ type: "reset", epoch });
    const deadline = Date.now() + RESET_WAIT_MS;
    for (;;) {
      const ack = Atomics.load(this.#words, SHARED.RESET_ACK);
      if (ack >= epoch) return;
      const left = deadline - Date.now();
      if (left <= 0) return;
      Atomics.wait(this.#words, SHARED.RESET_ACK, ack, left);
    }
  }
  save(): unknown {
    return null;
  }
  restore(_state: unknown): void {}
}

const eventfdValue = new BigUint64Array([1n]);

/**
 * Builds the transport half over `mem`; `post` carries messages to the host
 * half and `irq` pulses the interrupt line. Used by {@link create} and by tests.
 */
export function remoteTransport(
  cfg: RemoteMmioConfig,
  mem: GuestMemory,
  post: (m: RemoteMessage) => void,
  pulse: () => void,
): VirtioMmioTransport {
  const t = new VirtioMmioTransport(new ProxyDevice(cfg, post), mem, (asserted) => {
    if (asserted) pulse();
  }, {
    shared: new Int32Array(cfg.shared, 0, SHARED_WORDS),
    onStatusChange: (state) => post({ type: "status", state }),
  });
  if (cfg.state) t.restore(cfg.state);
  return t;
}

/** vCPU Worker factory (hv/device.ts): the transport half. */
export function create(config: unknown, ctx: WorkerContext): WorkerDevice {
  const cfg = config as RemoteMmioConfig;
  const pulse = cfg.irqfd !== undefined
    ? () => {
      libc.write(cfg.irqfd!, new Uint8Array(eventfdValue.buffer), 8n);
    }
    : () => {
      ctx.setIrqLine(cfg.gsi, 1);
      ctx.setIrqLine(cfg.gsi, 0);
    };
  const t = remoteTransport(cfg, ctx.memory, (m) => ctx.post(m), pulse);
  return {
    read: (offset, data) => t.read(offset, data),
    write: (offset, data) => t.write(offset, data),
  };
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
  /** Pulses the device's interrupt line (e.g. `() => vm.pulseIrq(gsi)` or an irqfd write). */
  irq: () => void;
  /** Guest errors that put the device into DEVICE_NEEDS_RESET (for logs). */
  onDeviceError?: (error: unknown) => void;
}

/**
 * The host half: owns the {@link VirtioDevice} and its queues on the main
 * thread. Feed it the transport's messages with {@link handle}.
 */
export class VirtioMmioHost {
  readonly device: VirtioDevice;
  /** Shared words + config mirror; goes into the Worker config. */
  readonly shared: SharedArrayBuffer;
  #words: Int32Array;
  #config: Uint8Array;
  #mem: GuestMemory;
  #irq: () => void;
  #onError: (e: unknown) => void;
  #queues: Queue[] | null = null;
  #features = 0n;
  #transport: MmioState | null = null;
  #restoreState: MmioState | undefined;
  #ioeventfds = false;

  constructor(device: VirtioDevice, mem: GuestMemory, opts: MmioHostOptions) {
    this.device = device;
    this.shared = new SharedArrayBuffer(CONFIG_OFFSET + CONFIG_MIRROR);
    this.#words = new Int32Array(this.shared, 0, SHARED_WORDS);
    this.#config = new Uint8Array(this.shared, CONFIG_OFFSET, CONFIG_MIRROR);
    this.#mem = mem;
    this.#irq = opts.irq;
    this.#onError = opts.onDeviceError ?? (() => {});
    this.#mirrorConfig();
  }

  /** Whether the driver activated the device (DRIVER_OK) and it has not been reset. */
  get active(): boolean {
    return this.#queues !== null;
  }

  /** The Worker factory config for this device's interrupt `gsi` (optionally an irqfd). */
  workerConfig(gsi: number, irqfd?: number): RemoteMmioConfig {
    return {
      shared: this.shared,
      deviceType: this.device.deviceType,
      queueMaxSizes: [...this.device.queueMaxSizes],
      features: this.device.features.toString(),
      gsi,
      irqfd,
      state: this.#restoreState,
    };
  }

  /** A `DeviceSpec` placing the transport at MMIO `base` with interrupt `gsi`. */
  spec(name: string, base: number, gsi: number, irqfd?: number): DeviceSpec {
    return {
      name,
      module: runtimeModuleUrl("devices/virtio/mmio_remote.ts"),
      config: this.workerConfig(gsi, irqfd),
      mmio: [{ base, length: MMIO_WINDOW }],
    };
  }

  #mirrorConfig(): void {
    const tmp = new Uint8Array(CONFIG_MIRROR);
    try {
      this.device.readConfig(0, tmp);
    } catch (e) {
      this.#onError(e);
    }
    for (let i = 0; i < CONFIG_MIRROR; i++) Atomics.store(this.#config, i, tmp[i]);
  }

  /** Handles one message from the transport half. Never throws. */
  handle(message: unknown): void {
    const m = message as RemoteMessage;
    try {
      switch (m?.type) {
        case "status":
          this.#transport = m.state;
          return;
        case "activate":
          this.#activate(m.features, m.queues);
          return;
        case "notify":
          if (this.#queues && this.#queues[m.index]?.ready) this.device.queueNotify(m.index);
          return;
        case "reset":
          this.#deactivate();
          Atomics.store(this.#words, SHARED.RESET_ACK, m.epoch);
          Atomics.notify(this.#words, SHARED.RESET_ACK);
          return;
        case "config-write":
          this.device.writeConfig(m.offset, m.data);
          this.#mirrorConfig();
          return;
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  /**
   * Serves the driver's QueueNotify writes through KVM ioeventfds: one per
   * queue at `base` + QueueNotify (4 bytes, datamatch = queue index), so a
   * notify no longer leaves `KVM_RUN` for the vCPU Worker and its message
   * hop; the eventfds are polled here on the FFI thread pool (as vhost-user
   * kicks are). Writes that match no queue still exit and reach the
   * transport. Call before the VM starts; dispose (await) to stop polling
   * and deassign. hv/notify_cost_bench.ts measures the gain.
   *
   * A notify can now overtake the transport's `activate` message, and a
   * snapshot can drop one still pending in an eventfd, so activation
   * processes every ready queue once (a spurious notify is harmless).
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
      for (let i = 0; i < this.device.queueMaxSizes.length; i++) {
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
    for (const [index, fd] of fds.entries()) {
      loops.push((async () => {
        while (await waitReadable(fd, stop) === "ready") {
          if (drainEventfd(fd) > 0n) this.handle({ type: "notify", index });
        }
      })());
    }
    this.#ioeventfds = true;
    let disposed = false;
    return {
      [Symbol.asyncDispose]: async () => {
        if (disposed) return;
        disposed = true;
        this.#ioeventfds = false;
        stop.fire();
        await Promise.all(loops);
        detach();
        for (const fd of fds) close(fd);
        stop[Symbol.dispose]();
      },
    };
  }

  #activate(features: string, states: QueueState[]): void {
    this.#deactivate();
    const queues = this.device.queueMaxSizes.map((n) => new Queue(n));
    states.forEach((s, i) => queues[i]?.restore(s));
    this.#features = BigInt(features);
    this.#queues = queues;
    const ctx: DeviceContext = {
      mem: this.#mem,
      queues,
      features: this.#features,
      signalUsed: (index) => {
        if (this.#queues !== queues) return;
        try {
          if (queues[index]?.needsNotification(this.#mem)) this.#raise(1);
        } catch (e) {
          this.#fail(e);
        }
      },
      signalConfig: () => this.signalConfig(),
      fail: (e) => {
        if (this.#queues === queues) this.#fail(e);
      },
    };
    this.device.activate(ctx);
    if (this.#ioeventfds) {
      queues.forEach((q, i) => {
        if (this.#queues === queues && q.ready) this.device.queueNotify(i);
      });
    }
  }

  #deactivate(): void {
    if (this.#queues === null) return;
    this.#queues = null;
    try {
      this.device.reset();
    } catch (e) {
      this.#onError(e);
    }
  }

  #fail(e: unknown): void {
    this.#onError(e);
    this.#deactivate();
    Atomics.or(this.#words, SHARED.HOST_FLAGS, HOST_FLAG_NEEDS_RESET);
    Atomics.add(this.#words, SHARED.CONFIG_GEN, 1);
    this.#raise(2);
  }

  #raise(bits: number): void {
    Atomics.or(this.#words, SHARED.INT_STATUS, bits);
    this.#irq();
  }

  /** The device config changed: refresh the mirror, bump ConfigGeneration, interrupt. */
  signalConfig(): void {
    this.#mirrorConfig();
    Atomics.add(this.#words, SHARED.CONFIG_GEN, 1);
    if (this.#queues !== null) this.#raise(2);
  }

  /**
   * The whole device state: the transport's last reported registers, the
   * host's queue positions, shared words and the device's own state. Take it
   * with the vCPUs paused.
   */
  save(): MmioState | null {
    const t = this.#transport;
    if (t === null) return null;
    return {
      ...t,
      queues: this.#queues ? this.#queues.map((q) => q.save()) : t.queues,
      interruptStatus: Atomics.load(this.#words, SHARED.INT_STATUS),
      configGeneration: Atomics.load(this.#words, SHARED.CONFIG_GEN) >>> 0,
      device: this.device.save(),
    };
  }

  /**
   * Restores a {@link save}d state before the VM starts: the device's state
   * here, the transport's through the Worker config (its activation message
   * then re-activates the device with the saved queue positions).
   */
  restore(state: MmioState): void {
    this.device.restore(state.device);
    Atomics.store(this.#words, SHARED.INT_STATUS, state.interruptStatus);
    Atomics.store(this.#words, SHARED.CONFIG_GEN, state.configGeneration | 0);
    this.#transport = state;
    this.#restoreState = state;
    this.#mirrorConfig();
  }
}
