/**
 * virtio-console with multiport (virtio 1.2 §5.3): port 0 is the guest's
 * console (hvc0); named ports (`/dev/vport0pN`, `/sys/class/virtio-ports/*\/name`)
 * carry the workload's standard streams.
 *
 * Queues (§5.3.2): 0/1 receive/transmit of port 0, 2/3 control
 * receive/transmit, then 2 per further port: 4+2(n-1) receive, 5+2(n-1)
 * transmit of port n.
 *
 * @module
 */

import { parseConsoleState } from "./persist.ts";
import { ChainReader, ChainWriter } from "../chain.ts";
import { bit, DEVICE_ID, type DeviceContext, type VirtioDevice } from "../device.ts";
import type { Queue } from "../queue.ts";

/** §5.3.3 feature bits. */
export const CONSOLE_F = { SIZE: 0, MULTIPORT: 1, EMERG_WRITE: 2 } as const;

/** §5.3.6.2 control events. */
export const CONSOLE_EVENT = {
  DEVICE_READY: 0,
  DEVICE_ADD: 1,
  DEVICE_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  RESIZE: 5,
  PORT_OPEN: 6,
  PORT_NAME: 7,
} as const;

/** Default port names shared with the guest init (see init/). */
export const PORT_NAMES = {
  stdin: "skiff.stdin",
  stdout: "skiff.stdout",
  stderr: "skiff.stderr",
  status: "skiff.status",
} as const;

/** Queue size offered for every console queue. */
const QUEUE_SIZE = 256;
/** Bytes per control message (`le32 id; le16 event; le16 value`). */
const CONTROL_SIZE = 8;
/** Host bytes buffered per port while the guest has posted no receive buffers. */
const MAX_PENDING = 16 << 20;

/** A terminal size. */
export interface ConsoleSize {
  columns: number;
  rows: number;
}

/** One console port as the host sees it. */
export class ConsolePort {
  /** Port number (0 = console). */
  readonly id: number;
  /** Name announced to the guest (PORT_NAME), or null for the console port. */
  readonly name: string | null;
  /** Guest → host bytes. */
  onData: (bytes: Uint8Array) => void = () => {};
  /** The guest opened (true) or closed (false) its end (PORT_OPEN from the guest). */
  onGuestOpen: (open: boolean) => void = () => {};
  #console: VirtioConsole;
  /** Host → guest bytes not yet placed in guest buffers. */
  pending: Uint8Array[] = [];
  pendingBytes = 0;
  /** Guest announced PORT_READY. */
  ready = false;
  /** Guest has the port open. */
  guestOpen = false;
  /** Host side connected (sent as PORT_OPEN to the guest). */
  hostOpen = true;
  /** Host closed after the pending bytes: send PORT_OPEN 0 once they are delivered. */
  closing = false;

  constructor(console: VirtioConsole, id: number, name: string | null) {
    this.#console = console;
    this.id = id;
    this.name = name;
  }

  /** Queues `bytes` for the guest (delivered as receive buffers become available). */
  send(bytes: Uint8Array): void {
    if (bytes.length === 0 || this.closing || !this.hostOpen) return;
    if (this.pendingBytes + bytes.length > MAX_PENDING) {
      throw new RangeError(`console port ${this.id}: more than ${MAX_PENDING} bytes pending`);
    }
    this.pending.push(bytes.slice());
    this.pendingBytes += bytes.length;
    this.#console.flushPort(this);
  }

  /** Host end closes: after pending bytes are delivered, guest readers see EOF. */
  close(): void {
    if (this.closing || !this.hostOpen) return;
    this.closing = true;
    this.#console.flushPort(this);
  }
}

/** Options of {@link VirtioConsole}. */
export interface ConsoleOptions {
  /** Names of ports 1..n (port 0 is always the console). */
  portNames?: string[];
  /** Initial console size (VIRTIO_CONSOLE_F_SIZE / RESIZE). */
  size?: ConsoleSize;
}

/** Serialisable console state. */
export interface ConsoleState {
  ready: boolean;
  control: number[][];
  ports: {
    ready: boolean;
    guestOpen: boolean;
    hostOpen: boolean;
    closing: boolean;
    pending: number[];
  }[];
  size: ConsoleSize;
}

/** The multiport virtio-console device. */
export class VirtioConsole implements VirtioDevice {
  readonly deviceType = DEVICE_ID.CONSOLE;
  readonly queueMaxSizes: readonly number[];
  readonly features = bit(CONSOLE_F.SIZE) | bit(CONSOLE_F.MULTIPORT);
  /** Ports, index = port id. */
  readonly ports: ConsolePort[];
  #ctx: DeviceContext | null = null;
  #deviceReady = false;
  /** Control messages waiting for a buffer on the control receive queue. */
  #control: Uint8Array[] = [];
  #size: ConsoleSize;

  constructor(opts: ConsoleOptions = {}) {
    const names = opts.portNames ?? [];
    if (new Set(names).size !== names.length) {
      throw new RangeError(`duplicate console port names: ${names.join(", ")}`);
    }
    this.ports = [
      new ConsolePort(this, 0, null),
      ...names.map((n, i) => new ConsolePort(this, i + 1, n)),
    ];
    this.queueMaxSizes = Array.from({ length: 2 * (this.ports.length + 1) }, () => QUEUE_SIZE);
    this.#size = opts.size ?? { columns: 80, rows: 24 };
  }

  /** The console port (hvc0). */
  get console(): ConsolePort {
    return this.ports[0];
  }

  /** The port called `name`; throws when there is none. */
  port(name: string): ConsolePort {
    const p = this.ports.find((p) => p.name === name);
    if (!p) throw new RangeError(`no console port named ${JSON.stringify(name)}`);
    return p;
  }

  /** Current console size. */
  get size(): ConsoleSize {
    return { ...this.#size };
  }

  /** Sets the console size and tells the guest (RESIZE on port 0; config space for F_SIZE). */
  resize(size: ConsoleSize): void {
    const c = Math.max(0, Math.min(0xffff, size.columns | 0));
    const r = Math.max(0, Math.min(0xffff, size.rows | 0));
    if (c === this.#size.columns && r === this.#size.rows) return;
    this.#size = { columns: c, rows: r };
    if (this.ports[0].ready) this.#sendResize();
    this.#ctx?.signalConfig();
  }

  #sendResize(): void {
    // §5.3.6.2 documents `struct virtio_console_resize { le16 cols; le16 rows; }`,
    // but Linux (drivers/char/virtio_console.c, up to at least 6.1) reads
    // rows first; follow the real guest.
    const extra = new Uint8Array(4);
    const v = new DataView(extra.buffer);
    v.setUint16(0, this.#size.rows, true);
    v.setUint16(2, this.#size.columns, true);
    this.#queueControl(0, CONSOLE_EVENT.RESIZE, 0, extra);
  }

  // Queue indices (§5.3.2).
  #rxQueue(port: number): number {
    return port === 0 ? 0 : 2 + 2 * port;
  }
  #txQueue(port: number): number {
    return port === 0 ? 1 : 3 + 2 * port;
  }

  readConfig(offset: number, data: Uint8Array): void {
    // §5.3.4: le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr.
    const cfg = new Uint8Array(12);
    const v = new DataView(cfg.buffer);
    v.setUint16(0, this.#size.columns, true);
    v.setUint16(2, this.#size.rows, true);
    v.setUint32(4, this.ports.length, true);
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  writeConfig(_offset: number, _data: Uint8Array): void {
    // emerg_wr is only meaningful with VIRTIO_CONSOLE_F_EMERG_WRITE, not offered.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    if ((ctx.features & bit(CONSOLE_F.MULTIPORT)) === 0n) {
      // §5.3.6.1: without MULTIPORT there is only port 0, usable at once (no control queues).
      this.ports[0].ready = true;
      this.ports[0].guestOpen = true;
    }
    // After a restore, flush whatever was queued before the snapshot.
    this.#flushControl();
    for (const p of this.ports) this.flushPort(p);
  }

  reset(): void {
    this.#ctx = null;
    this.#deviceReady = false;
    this.#control = [];
    for (const p of this.ports) {
      p.ready = false;
      if (p.guestOpen) {
        p.guestOpen = false;
        p.onGuestOpen(false);
      }
    }
  }

  queueNotify(index: number): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    if (index === 2) {
      this.#flushControl();
    } else if (index === 3) {
      this.#serveControlTx(ctx);
    } else {
      const port = index < 2 ? 0 : (index - 2) >> 1;
      const p = this.ports[port];
      if (!p) return;
      if (index === this.#rxQueue(port)) this.flushPort(p);
      else this.#serveTx(ctx, p, ctx.queues[index]);
    }
  }

  /** Guest → host data on a port's transmit queue. */
  #serveTx(ctx: DeviceContext, port: ConsolePort, q: Queue): void {
    let any = false;
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      const bytes = new ChainReader(ctx.mem, c).readAll();
      q.addUsed(ctx.mem, c.head, 0);
      any = true;
      if (bytes.length > 0) port.onData(bytes);
    }
    if (any) ctx.signalUsed(this.#txQueue(port.id));
  }

  /** Host → guest: moves a port's pending bytes into posted receive buffers. */
  flushPort(port: ConsolePort): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    // Bytes for a port the guest has not set up would sit in buffers nobody reads.
    if (port.pending.length > 0 && port.ready) {
      const qi = this.#rxQueue(port.id);
      const q = ctx.queues[qi];
      if (!q?.ready) return;
      let any = false;
      try {
        while (port.pending.length > 0) {
          const c = q.pop(ctx.mem);
          if (!c) break;
          const w = new ChainWriter(ctx.mem, c);
          while (port.pending.length > 0 && w.remaining > 0) {
            const head = port.pending[0];
            const n = w.writeSome(head);
            port.pendingBytes -= n;
            if (n === head.length) port.pending.shift();
            else port.pending[0] = head.subarray(n);
          }
          q.addUsed(ctx.mem, c.head, w.written);
          any = true;
        }
      } catch (e) {
        ctx.fail(e);
        return;
      }
      if (any) ctx.signalUsed(qi);
    }
    if (port.closing && port.pending.length === 0 && port.ready) {
      port.closing = false;
      port.hostOpen = false;
      this.#queueControl(port.id, CONSOLE_EVENT.PORT_OPEN, 0);
    }
  }

  /** Guest → device control messages (§5.3.6.2). */
  #serveControlTx(ctx: DeviceContext): void {
    const q = ctx.queues[3];
    let any = false;
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      const msg = new ChainReader(ctx.mem, c).readExact(Math.min(CONTROL_SIZE, c.readableLength));
      q.addUsed(ctx.mem, c.head, 0);
      any = true;
      if (msg.length === CONTROL_SIZE) this.#handleControl(msg);
    }
    if (any) ctx.signalUsed(3);
  }

  #handleControl(msg: Uint8Array): void {
    const v = new DataView(msg.buffer, msg.byteOffset, CONTROL_SIZE);
    const id = v.getUint32(0, true);
    const event = v.getUint16(4, true);
    const value = v.getUint16(6, true);
    if (event === CONSOLE_EVENT.DEVICE_READY) {
      if (value !== 1 || this.#deviceReady) return;
      this.#deviceReady = true;
      for (const p of this.ports) this.#queueControl(p.id, CONSOLE_EVENT.DEVICE_ADD, 1);
      return;
    }
    const port = this.ports[id];
    if (!port) return; // unknown port id from the guest: ignored, as QEMU does
    switch (event) {
      case CONSOLE_EVENT.PORT_READY:
        if (value !== 1 || port.ready) return;
        port.ready = true;
        if (port.id === 0) {
          this.#queueControl(0, CONSOLE_EVENT.CONSOLE_PORT, 1);
          this.#sendResize();
        } else if (port.name !== null) {
          this.#queueControl(
            port.id,
            CONSOLE_EVENT.PORT_NAME,
            1,
            new TextEncoder().encode(port.name),
          );
        }
        if (port.hostOpen) this.#queueControl(port.id, CONSOLE_EVENT.PORT_OPEN, 1);
        this.flushPort(port);
        return;
      case CONSOLE_EVENT.PORT_OPEN: {
        const open = value === 1;
        if (open === port.guestOpen) return;
        port.guestOpen = open;
        port.onGuestOpen(open);
        return;
      }
    }
  }

  #queueControl(id: number, event: number, value: number, extra?: Uint8Array): void {
    const msg = new Uint8Array(CONTROL_SIZE + (extra?.length ?? 0));
    const v = new DataView(msg.buffer);
    v.setUint32(0, id, true);
    v.setUint16(4, event, true);
    v.setUint16(6, value, true);
    if (extra) msg.set(extra, CONTROL_SIZE);
    this.#control.push(msg);
    this.#flushControl();
  }

  #flushControl(): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    const q = ctx.queues[2];
    if (!q?.ready) return;
    let any = false;
    try {
      while (this.#control.length > 0) {
        const c = q.pop(ctx.mem);
        if (!c) break;
        const msg = this.#control[0];
        const w = new ChainWriter(ctx.mem, c);
        // A control buffer too small for the message gets what fits; Linux
        // posts 4 KiB buffers, so this only truncates long port names.
        w.writeSome(msg);
        q.addUsed(ctx.mem, c.head, w.written);
        this.#control.shift();
        any = true;
      }
    } catch (e) {
      ctx.fail(e);
      return;
    }
    if (any) ctx.signalUsed(2);
  }

  save(): ConsoleState {
    const flat = (chunks: Uint8Array[]) => chunks.flatMap((c) => [...c]);
    return {
      ready: this.#deviceReady,
      control: this.#control.map((m) => [...m]),
      ports: this.ports.map((p) => ({
        ready: p.ready,
        guestOpen: p.guestOpen,
        hostOpen: p.hostOpen,
        closing: p.closing,
        pending: flat(p.pending),
      })),
      size: { ...this.#size },
    };
  }

  restore(state: unknown): void {
    const s = parseConsoleState(state, this.ports.length);
    this.#deviceReady = !!s.ready;
    this.#control = s.control.map((m) => Uint8Array.from(m));
    s.ports.forEach((ps, i) => {
      const p = this.ports[i];
      p.ready = ps.ready;
      p.guestOpen = ps.guestOpen;
      p.hostOpen = ps.hostOpen;
      p.closing = ps.closing;
      p.pending = ps.pending.length ? [Uint8Array.from(ps.pending)] : [];
      p.pendingBytes = ps.pending.length;
    });
    this.#size = { ...s.size };
  }
}
