/**
 * A minimal i8042 keyboard controller: enough for Linux's probe and, above
 * all, its reset line — command 0xFE written to port 0x64 pulses the CPU
 * reset, which skiff turns into a guest reboot that stops the VM (Linux
 * `reboot=k`; Firecracker does the same). Commands follow the IBM PC/AT
 * 8042 interface: 0x20 read / 0x60 write the controller configuration byte
 * (CTR), 0xAA self-test (→ 0x55), 0xAB keyboard interface test (→ 0x00),
 * 0xA7/0xA8 disable/enable the aux port, 0xAD/0xAE disable/enable the
 * keyboard, 0xD4 send the next data byte to the aux device, 0xFE reset.
 * Bytes written to port 0x60 outside a command go to the keyboard, which
 * answers 0xFA (ACK).
 *
 * State (CTR, output buffer, pending command) lives in a SharedArrayBuffer so
 * every vCPU Worker sees one controller and the host can snapshot it.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";
import { parseI8042Snapshot } from "./i8042_persist.ts";

/** Ports. */
export const I8042 = { DATA: 0x60, COMMAND: 0x64, IRQ_KBD: 1 } as const;

/** Status register bits. */
export const I8042_STATUS = {
  OBF: 0x01,
  IBF: 0x02,
  SYS: 0x04,
  CMD: 0x08,
  KBD_UNLOCKED: 0x10,
} as const;

/** Controller configuration byte bits. */
export const I8042_CTR = {
  KBD_INT: 0x01,
  AUX_INT: 0x02,
  SYS: 0x04,
  KBD_DISABLE: 0x10,
  AUX_DISABLE: 0x20,
  XLATE: 0x40,
} as const;

// Int32 slots.
const S = { STATUS: 0, CTR: 1, OUT: 2, OUT_FULL: 3, PENDING_CMD: 4 } as const;
const SLOTS = 8;

/** Plain-data controller state. */
export interface I8042Snapshot {
  status: number;
  ctr: number;
  out: number;
  outFull: number;
  pendingCmd: number;
}

/** Register logic over the shared state; `onReset` fires on command 0xFE. */
export class I8042Registers {
  readonly s: Int32Array;
  #onReset: () => void;
  #raiseKbd: () => void;

  constructor(buffer: SharedArrayBuffer, onReset: () => void, raiseKbd: () => void = () => {}) {
    this.s = new Int32Array(buffer, 0, SLOTS);
    this.#onReset = onReset;
    this.#raiseKbd = raiseKbd;
  }

  /** A fresh state buffer: system flag set, keyboard interrupt and translation enabled. */
  static newState(): SharedArrayBuffer {
    const b = new SharedArrayBuffer(SLOTS * 4);
    const s = new Int32Array(b);
    s[S.STATUS] = I8042_STATUS.SYS | I8042_STATUS.KBD_UNLOCKED;
    s[S.CTR] = I8042_CTR.KBD_INT | I8042_CTR.SYS | I8042_CTR.XLATE;
    return b;
  }

  #output(byte: number): void {
    this.s[S.OUT] = byte & 0xff;
    this.s[S.OUT_FULL] = 1;
    if (this.s[S.CTR] & I8042_CTR.KBD_INT) this.#raiseKbd();
  }

  /** A guest read of `port`. */
  read(port: number): number {
    const s = this.s;
    if (port === I8042.COMMAND) {
      return (s[S.STATUS] & ~I8042_STATUS.OBF) | (s[S.OUT_FULL] ? I8042_STATUS.OBF : 0);
    }
    if (port === I8042.DATA) {
      s[S.OUT_FULL] = 0;
      return s[S.OUT];
    }
    return 0xff;
  }

  /** A guest write of `value` to `port`. */
  write(port: number, value: number): void {
    const s = this.s;
    value &= 0xff;
    if (port === I8042.COMMAND) {
      s[S.STATUS] |= I8042_STATUS.CMD;
      s[S.PENDING_CMD] = 0;
      switch (value) {
        case 0x20:
          this.#output(s[S.CTR]);
          break;
        case 0x60:
        case 0xd4:
          s[S.PENDING_CMD] = value;
          break;
        case 0xa7:
          s[S.CTR] |= I8042_CTR.AUX_DISABLE;
          break;
        case 0xa8:
          s[S.CTR] &= ~I8042_CTR.AUX_DISABLE;
          break;
        case 0xaa:
          this.#output(0x55);
          break;
        case 0xab:
          this.#output(0x00);
          break;
        case 0xad:
          s[S.CTR] |= I8042_CTR.KBD_DISABLE;
          break;
        case 0xae:
          s[S.CTR] &= ~I8042_CTR.KBD_DISABLE;
          break;
        case 0xfe:
          this.#onReset();
          break;
        default:
          break; // other commands are accepted and ignored
      }
      return;
    }
    if (port === I8042.DATA) {
      s[S.STATUS] &= ~I8042_STATUS.CMD;
      const cmd = s[S.PENDING_CMD];
      s[S.PENDING_CMD] = 0;
      if (cmd === 0x60) {
        s[S.CTR] = value;
        s[S.STATUS] = (s[S.STATUS] & ~I8042_STATUS.SYS) | (value & I8042_CTR.SYS);
      } else if (cmd === 0xd4) {
        // No aux device: the byte goes nowhere (Linux then sees a timeout and gives up on aux).
      } else {
        this.#output(0xfa); // keyboard ACK
      }
    }
  }

  save(): I8042Snapshot {
    const s = this.s;
    return {
      status: s[S.STATUS],
      ctr: s[S.CTR],
      out: s[S.OUT],
      outFull: s[S.OUT_FULL],
      pendingCmd: s[S.PENDING_CMD],
    };
  }

  restore(snap: I8042Snapshot): void {
    const s = this.s;
    s[S.STATUS] = snap.status & 0xff;
    s[S.CTR] = snap.ctr & 0xff;
    s[S.OUT] = snap.out & 0xff;
    s[S.OUT_FULL] = snap.outFull ? 1 : 0;
    s[S.PENDING_CMD] = snap.pendingCmd & 0xff;
  }
}

/** Worker factory: ranges are the single ports 0x60 and 0x64. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const { state } = config as { state: SharedArrayBuffer };
  const regs = new I8042Registers(
    state,
    () => ctx.requestStop({ kind: "reset", source: `${ctx.name} (reset command 0xfe)` }),
    () => {
      ctx.setIrqLine(I8042.IRQ_KBD, 1);
      ctx.setIrqLine(I8042.IRQ_KBD, 0);
    },
  );
  return {
    read(_offset: number, data: Uint8Array, base: number) {
      data.fill(0);
      data[0] = regs.read(base);
    },
    write(_offset: number, data: Uint8Array, base: number) {
      regs.write(base, data[0]);
    },
  };
}

/** The host side: the shared state and the spec. */
export class I8042Device {
  readonly name: string;
  readonly state = I8042Registers.newState();
  #regs = new I8042Registers(this.state, () => {});
  constructor(name = "i8042") {
    this.name = name;
  }
  /** Spec for `Vm.addDevice` (ports 0x60 and 0x64). */
  spec(): DeviceSpec {
    return {
      name: this.name,
      module: runtimeModuleUrl("devices/legacy/i8042.ts"),
      config: { state: this.state },
      ports: [{ base: I8042.DATA, length: 1 }, { base: I8042.COMMAND, length: 1 }],
    };
  }
  /** The controller's state for a snapshot. */
  save(): I8042Snapshot {
    return this.#regs.save();
  }
  /** Restores a {@link save}d state (before the VM runs); a bad one throws `StateError`. */
  restore(state: unknown): void {
    this.#regs.restore(parseI8042Snapshot(state));
  }
}
