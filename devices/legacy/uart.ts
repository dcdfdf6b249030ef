/**
 * An 8250/16550A UART, good enough for Linux's `console=ttyS0` and
 * `earlyprintk=serial`: THR/RBR, IER, IIR/FCR, LCR, MCR (with loopback), LSR,
 * MSR, scratch and the divisor latch; IRQ 4 through the in-kernel irqchip.
 * Register layout and interrupt priorities follow the National PC16550D
 * datasheet (Table II "Summary of Registers" and Table IV "Interrupt Control
 * Functions").
 *
 * Threads: the register logic runs in the vCPU Worker(s) (the factory
 * {@link create}); the host side ({@link Uart}) feeds received bytes and drains
 * transmitted ones. All state — registers and both byte rings — lives in one
 * SharedArrayBuffer guarded by a spin lock, so every vCPU Worker and the host
 * see one UART, and a snapshot can read it from the main thread.
 *
 * Transmission is instantaneous (THR is always empty, LSR.THRE|TEMT set); a
 * full transmit ring applies back-pressure by making the vCPU wait for the
 * host to drain it (up to a second, then bytes are dropped and counted).
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";
import { parseUartSnapshot } from "./uart_persist.ts";

/** COM1's port base and IRQ on a PC. */
export const COM1 = { base: 0x3f8, irq: 4 } as const;

/** Register offsets (DLAB = LCR bit 7 selects DLL/DLM at 0/1). */
export const UART_REG = {
  RBR_THR_DLL: 0,
  IER_DLM: 1,
  IIR_FCR: 2,
  LCR: 3,
  MCR: 4,
  LSR: 5,
  MSR: 6,
  SCR: 7,
} as const;

/** Bits used below (PC16550D datasheet). */
export const UART_BITS = {
  IER_RDI: 0x01,
  IER_THRI: 0x02,
  IER_RLSI: 0x04,
  IER_MSI: 0x08,
  IIR_NO_INT: 0x01,
  IIR_MSI: 0x00,
  IIR_THRI: 0x02,
  IIR_RDI: 0x04,
  IIR_RLSI: 0x06,
  IIR_FIFO_ENABLED: 0xc0,
  FCR_ENABLE: 0x01,
  FCR_CLEAR_RX: 0x02,
  LCR_DLAB: 0x80,
  MCR_DTR: 0x01,
  MCR_RTS: 0x02,
  MCR_OUT1: 0x04,
  MCR_OUT2: 0x08,
  MCR_LOOP: 0x10,
  LSR_DR: 0x01,
  LSR_OE: 0x02,
  LSR_THRE: 0x20,
  LSR_TEMT: 0x40,
  MSR_CTS: 0x10,
  MSR_DSR: 0x20,
  MSR_RI: 0x40,
  MSR_DCD: 0x80,
} as const;

// Int32 slots of the shared state.
const S = {
  LOCK: 0,
  IER: 1,
  LCR: 2,
  MCR: 3,
  LSR_ERR: 4,
  SCR: 5,
  DLL: 6,
  DLM: 7,
  THRI: 8,
  IRQ: 9,
  FCR: 10,
  RX_HEAD: 11,
  RX_TAIL: 12,
  TX_HEAD: 13,
  TX_TAIL: 14,
  TX_DROPPED: 15,
  RX_WANT: 16,
} as const;
const HEADER = 128;
/** Receive ring bytes (power of two). */
export const RX_RING = 4096;
/** Transmit ring bytes (power of two). */
export const TX_RING = 16384;

/** Bytes of the shared state buffer. */
export const UART_STATE_BYTES = HEADER + RX_RING + TX_RING;

/** A UART's registers as plain data (for snapshots). */
export interface UartSnapshot {
  ier: number;
  lcr: number;
  mcr: number;
  lsrErr: number;
  scr: number;
  dll: number;
  dlm: number;
  thri: number;
  fcr: number;
  /** Received bytes the guest has not read yet. */
  rx: number[];
}

/**
 * The register logic over the shared state. Used by the Worker device and by
 * the host; `setIrq(level)` drives the interrupt line when the level changes.
 */
export class UartRegisters {
  readonly s: Int32Array;
  readonly rx: Uint8Array;
  readonly tx: Uint8Array;
  #setIrq: (level: 0 | 1) => void;

  constructor(buffer: SharedArrayBuffer, setIrq: (level: 0 | 1) => void) {
    if (buffer.byteLength < UART_STATE_BYTES) {
      throw new RangeError(
        `UART state buffer: need ${UART_STATE_BYTES} bytes, got ${buffer.byteLength}`,
      );
    }
    this.s = new Int32Array(buffer, 0, HEADER / 4);
    this.rx = new Uint8Array(buffer, HEADER, RX_RING);
    this.tx = new Uint8Array(buffer, HEADER + RX_RING, TX_RING);
    this.#setIrq = setIrq;
  }

  /** A fresh state buffer (registers at their reset values: DLL = 12, i.e. 9600 baud). */
  static newState(): SharedArrayBuffer {
    const b = new SharedArrayBuffer(UART_STATE_BYTES);
    new Int32Array(b)[S.DLL] = 12;
    return b;
  }

  lock(): void {
    while (Atomics.compareExchange(this.s, S.LOCK, 0, 1) !== 0) {
      // critical sections are a few register operations: spin
    }
  }

  unlock(): void {
    Atomics.store(this.s, S.LOCK, 0);
  }

  #rxLen(): number {
    return (this.s[S.RX_HEAD] - this.s[S.RX_TAIL]) | 0;
  }

  /** Bytes waiting in the transmit ring. */
  txLen(): number {
    return (this.s[S.TX_HEAD] - this.s[S.TX_TAIL]) | 0;
  }

  #pushRx(byte: number): boolean {
    if (this.#rxLen() >= RX_RING) {
      this.s[S.LSR_ERR] |= UART_BITS.LSR_OE;
      return false;
    }
    const h = this.s[S.RX_HEAD];
    this.rx[h & (RX_RING - 1)] = byte;
    this.s[S.RX_HEAD] = (h + 1) | 0;
    return true;
  }

  #updateIrq(): void {
    const s = this.s;
    const ier = s[S.IER];
    const pending = ((ier & UART_BITS.IER_RLSI) && s[S.LSR_ERR]) ||
      ((ier & UART_BITS.IER_RDI) && this.#rxLen() > 0) ||
      ((ier & UART_BITS.IER_THRI) && s[S.THRI]);
    const level = pending ? 1 : 0;
    if (level !== s[S.IRQ]) {
      s[S.IRQ] = level;
      this.#setIrq(level);
    }
  }

  /**
   * A guest register read. Returns the byte; `rxDrained` tells the caller the
   * host asked to hear when the receive ring emptied.
   */
  read(offset: number): { value: number; rxDrained: boolean } {
    const s = this.s;
    const dlab = s[S.LCR] & UART_BITS.LCR_DLAB;
    let value = 0;
    let rxDrained = false;
    switch (offset) {
      case UART_REG.RBR_THR_DLL:
        if (dlab) value = s[S.DLL];
        else if (this.#rxLen() > 0) {
          const t = s[S.RX_TAIL];
          value = this.rx[t & (RX_RING - 1)];
          s[S.RX_TAIL] = (t + 1) | 0;
          if (this.#rxLen() === 0 && s[S.RX_WANT]) {
            s[S.RX_WANT] = 0;
            rxDrained = true;
          }
        }
        break;
      case UART_REG.IER_DLM:
        value = dlab ? s[S.DLM] : s[S.IER];
        break;
      case UART_REG.IIR_FCR: {
        const ier = s[S.IER];
        if ((ier & UART_BITS.IER_RLSI) && s[S.LSR_ERR]) value = UART_BITS.IIR_RLSI;
        else if ((ier & UART_BITS.IER_RDI) && this.#rxLen() > 0) value = UART_BITS.IIR_RDI;
        else if ((ier & UART_BITS.IER_THRI) && s[S.THRI]) {
          value = UART_BITS.IIR_THRI;
          s[S.THRI] = 0; // reading IIR with THRE as the source clears it (datasheet Table IV)
        } else value = UART_BITS.IIR_NO_INT;
        if (s[S.FCR] & UART_BITS.FCR_ENABLE) value |= UART_BITS.IIR_FIFO_ENABLED;
        break;
      }
      case UART_REG.LCR:
        value = s[S.LCR];
        break;
      case UART_REG.MCR:
        value = s[S.MCR];
        break;
      case UART_REG.LSR:
        value = UART_BITS.LSR_THRE | UART_BITS.LSR_TEMT | s[S.LSR_ERR] |
          (this.#rxLen() > 0 ? UART_BITS.LSR_DR : 0);
        s[S.LSR_ERR] = 0; // error bits clear on read
        break;
      case UART_REG.MSR: {
        const mcr = s[S.MCR];
        if (mcr & UART_BITS.MCR_LOOP) {
          // Loopback wires DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
          value = ((mcr & UART_BITS.MCR_DTR) ? UART_BITS.MSR_DSR : 0) |
            ((mcr & UART_BITS.MCR_RTS) ? UART_BITS.MSR_CTS : 0) |
            ((mcr & UART_BITS.MCR_OUT1) ? UART_BITS.MSR_RI : 0) |
            ((mcr & UART_BITS.MCR_OUT2) ? UART_BITS.MSR_DCD : 0);
        } else {
          value = UART_BITS.MSR_DCD | UART_BITS.MSR_DSR | UART_BITS.MSR_CTS; // a terminal is attached
        }
        break;
      }
      case UART_REG.SCR:
        value = s[S.SCR];
        break;
    }
    this.#updateIrq();
    return { value, rxDrained };
  }

  /**
   * A guest register write. Returns `"tx-started"` when a byte went into an
   * empty transmit ring (the host should drain it), `"tx-full"` when the ring
   * had no room (the caller may wait for the host and retry), else null.
   */
  write(offset: number, value: number): "tx-started" | "tx-full" | null {
    const s = this.s;
    const dlab = s[S.LCR] & UART_BITS.LCR_DLAB;
    let result: "tx-started" | "tx-full" | null = null;
    value &= 0xff;
    switch (offset) {
      case UART_REG.RBR_THR_DLL:
        if (dlab) s[S.DLL] = value;
        else if (s[S.MCR] & UART_BITS.MCR_LOOP) {
          this.#pushRx(value);
          s[S.THRI] = 1;
        } else {
          const len = this.txLen();
          if (len >= TX_RING) {
            result = "tx-full";
          } else {
            const h = s[S.TX_HEAD];
            this.tx[h & (TX_RING - 1)] = value;
            s[S.TX_HEAD] = (h + 1) | 0;
            s[S.THRI] = 1; // transmitted at once: THR empty again
            if (len === 0) result = "tx-started";
          }
        }
        break;
      case UART_REG.IER_DLM:
        if (dlab) s[S.DLM] = value;
        else {
          const was = s[S.IER];
          s[S.IER] = value & 0x0f;
          // Enabling THRI while THR is empty raises it at once (Linux relies on this).
          if (!(was & UART_BITS.IER_THRI) && (value & UART_BITS.IER_THRI)) s[S.THRI] = 1;
        }
        break;
      case UART_REG.IIR_FCR:
        s[S.FCR] = value & UART_BITS.FCR_ENABLE;
        if (value & UART_BITS.FCR_CLEAR_RX) s[S.RX_TAIL] = s[S.RX_HEAD];
        break;
      case UART_REG.LCR:
        s[S.LCR] = value;
        break;
      case UART_REG.MCR:
        s[S.MCR] = value & 0x1f;
        break;
      case UART_REG.LSR:
      case UART_REG.MSR:
        break; // read-only
      case UART_REG.SCR:
        s[S.SCR] = value;
        break;
    }
    this.#updateIrq();
    return result;
  }

  /** Host: queues received bytes; returns how many fitted (the rest must be offered again). */
  receive(bytes: Uint8Array): number {
    let n = 0;
    while (n < bytes.length && this.#rxLen() < RX_RING) this.#pushRx(bytes[n++]);
    if (n < bytes.length) this.s[S.RX_WANT] = 1;
    this.#updateIrq();
    return n;
  }

  /** Host: takes everything in the transmit ring. */
  drainTx(): Uint8Array {
    const len = this.txLen();
    const out = new Uint8Array(len);
    const t = this.s[S.TX_TAIL];
    for (let i = 0; i < len; i++) out[i] = this.tx[(t + i) & (TX_RING - 1)];
    this.s[S.TX_TAIL] = (t + len) | 0;
    Atomics.notify(this.s, S.TX_TAIL);
    return out;
  }

  /** Counts a dropped byte (transmit ring stayed full). */
  dropTx(): void {
    this.s[S.TX_DROPPED]++;
  }

  /** Bytes dropped because the host did not drain the transmit ring. */
  get txDropped(): number {
    return this.s[S.TX_DROPPED];
  }

  /** Current value of the transmit tail (to wait on). */
  txTail(): number {
    return Atomics.load(this.s, S.TX_TAIL);
  }

  /** Index of the transmit tail in the Int32 state (for Atomics.wait). */
  static readonly TX_TAIL_SLOT = S.TX_TAIL;

  /** Registers and pending input as plain data. */
  save(): UartSnapshot {
    const s = this.s;
    const rx: number[] = [];
    for (let t = s[S.RX_TAIL]; t !== s[S.RX_HEAD]; t = (t + 1) | 0) {
      rx.push(this.rx[t & (RX_RING - 1)]);
    }
    return {
      ier: s[S.IER],
      lcr: s[S.LCR],
      mcr: s[S.MCR],
      lsrErr: s[S.LSR_ERR],
      scr: s[S.SCR],
      dll: s[S.DLL],
      dlm: s[S.DLM],
      thri: s[S.THRI],
      fcr: s[S.FCR],
      rx,
    };
  }

  /** Loads what {@link save} returned and drives the interrupt line to match. */
  restore(snap: UartSnapshot): void {
    const s = this.s;
    s[S.IER] = snap.ier & 0x0f;
    s[S.LCR] = snap.lcr & 0xff;
    s[S.MCR] = snap.mcr & 0x1f;
    s[S.LSR_ERR] = snap.lsrErr & 0x1e;
    s[S.SCR] = snap.scr & 0xff;
    s[S.DLL] = snap.dll & 0xff;
    s[S.DLM] = snap.dlm & 0xff;
    s[S.THRI] = snap.thri ? 1 : 0;
    s[S.FCR] = snap.fcr & UART_BITS.FCR_ENABLE;
    s[S.RX_HEAD] = s[S.RX_TAIL] = 0;
    for (const b of snap.rx.slice(0, RX_RING)) this.#pushRx(b & 0xff);
    s[S.IRQ] = 0;
    this.#updateIrq();
  }
}

/** Worker-side configuration (see {@link Uart.spec}). */
export interface UartConfig {
  state: SharedArrayBuffer;
  irq: number;
}

/** Worker factory. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const { state, irq } = config as UartConfig;
  const regs = new UartRegisters(state, (level) => ctx.setIrqLine(irq, level));
  return {
    read(offset: number, data: Uint8Array) {
      regs.lock();
      let r;
      try {
        r = regs.read(offset);
      } finally {
        regs.unlock();
      }
      data.fill(0);
      data[0] = r.value;
      if (r.rxDrained) ctx.post("rx");
    },
    write(offset: number, data: Uint8Array) {
      for (let tries = 0;; tries++) {
        regs.lock();
        let r;
        const tail = regs.txTail();
        try {
          r = regs.write(offset, data[0]);
          if (r === "tx-full" && tries > 0) regs.dropTx();
        } finally {
          regs.unlock();
        }
        if (r === "tx-started") ctx.post("tx");
        if (r !== "tx-full" || tries > 0) return;
        ctx.post("tx");
        // Back-pressure: wait (bounded) for the host to drain, then retry once.
        Atomics.wait(regs.s, UartRegisters.TX_TAIL_SLOT, tail, 1000);
      }
    },
  };
}

/** Options of {@link Uart}. */
export interface UartOptions {
  /** Device name (default `uart0`). */
  name?: string;
  /** Port base (default 0x3f8). */
  base?: number;
  /** GSI (default 4). */
  irq?: number;
  /** Receives transmitted bytes, in order. */
  output?: (bytes: Uint8Array) => void;
}

/** Something that can drive an interrupt line and host device messages (a `Vm`). */
export interface UartVm {
  addDevice(spec: DeviceSpec): void;
  onDeviceMessage(name: string, fn: (message: unknown) => void): void;
  setIrqLine(gsi: number, level: 0 | 1): void;
}

/** The host side of a UART: spec for the Workers, input, output, snapshots. */
export class Uart {
  readonly name: string;
  readonly base: number;
  readonly irq: number;
  readonly state: SharedArrayBuffer;
  #regs: UartRegisters;
  #output: (bytes: Uint8Array) => void;
  #pending: Uint8Array[] = [];
  #vm: UartVm | null = null;

  constructor(opts: UartOptions = {}) {
    this.name = opts.name ?? "uart0";
    this.base = opts.base ?? COM1.base;
    this.irq = opts.irq ?? COM1.irq;
    this.state = UartRegisters.newState();
    this.#output = opts.output ?? (() => {});
    this.#regs = new UartRegisters(this.state, (level) => this.#vm?.setIrqLine(this.irq, level));
  }

  /** The device spec (ports `base..base+7`). */
  spec(): DeviceSpec {
    return {
      name: this.name,
      module: runtimeModuleUrl("devices/legacy/uart.ts"),
      config: { state: this.state, irq: this.irq } satisfies UartConfig,
      ports: [{ base: this.base, length: 8 }],
    };
  }

  /** Adds the device to `vm` and listens for its transmit/receive notifications. */
  attach(vm: UartVm): void {
    vm.addDevice(this.spec());
    this.#vm = vm;
    vm.onDeviceMessage(this.name, (m) => {
      if (m === "tx") this.flush();
      else if (m === "rx") this.#feed();
    });
  }

  /** Delivers whatever the guest transmitted so far to `output`. */
  flush(): void {
    this.#regs.lock();
    let bytes;
    try {
      bytes = this.#regs.drainTx();
    } finally {
      this.#regs.unlock();
    }
    if (bytes.length > 0) this.#output(bytes);
  }

  /** Sends `bytes` to the guest (queued while the receive ring is full). */
  receive(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#pending.push(bytes.slice());
    this.#feed();
  }

  #feed(): void {
    while (this.#pending.length > 0) {
      const head = this.#pending[0];
      this.#regs.lock();
      let n;
      try {
        n = this.#regs.receive(head);
      } finally {
        this.#regs.unlock();
      }
      if (n === head.length) this.#pending.shift();
      else {
        this.#pending[0] = head.subarray(n);
        return;
      }
    }
  }

  /** Bytes dropped because output was not drained for a second. */
  get txDropped(): number {
    return this.#regs.txDropped;
  }

  /** Register state for a snapshot (flushes output first). */
  save(): UartSnapshot {
    this.flush();
    this.#regs.lock();
    try {
      return this.#regs.save();
    } finally {
      this.#regs.unlock();
    }
  }

  /** Restores a {@link save}d state (before the VM runs); a bad one throws `StateError`. */
  restore(state: unknown): void {
    const snap = parseUartSnapshot(state);
    this.#regs.lock();
    try {
      this.#regs.restore(snap);
    } finally {
      this.#regs.unlock();
    }
  }
}
