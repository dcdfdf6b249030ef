/**
 * The mailbox register page: offsets, constants and {@link MailboxRegisters},
 * the register semantics over one shared byte image. The protocol is
 * described in `init/MAILBOX.md`.
 *
 * The whole device state is the register image (a SharedArrayBuffer for the
 * hv device, or a file mapping `MAP_SHARED` for native tests): the host, every
 * vCPU Worker and a snapshot all see the same bytes. Fields the host writes
 * (the command) and fields the guest writes (state, result, done sequence)
 * never overlap, so no lock is needed: each side publishes with an atomic
 * store of a sequence number after its plain writes.
 *
 * @module
 */

import { LAYOUT } from "../../hv/boot/layout.ts";

/** Register offsets in the page (all little-endian). */
export const MB_REG = {
  /** u32 R: {@link MAILBOX_MAGIC}. */
  MAGIC: 0x00,
  /** u32 R: {@link MAILBOX_VERSION}. */
  VERSION: 0x04,
  /** u64 R: where the data region starts (guest-physical; the offset to map in /dev/mem). */
  DATA_BASE: 0x08,
  /** u64 R: data region size in bytes. */
  DATA_SIZE: 0x10,
  /** u32 RW (guest): the init's state; writing {@link MB_STATE.READY} rings "ready". */
  STATE: 0x18,
  /** u32 R: bumped by the host for every wake-up (used by the device's blocking wait). */
  WAKE: 0x1c,
  /**
   * u32 R: sequence number of the host's latest command. A 4-byte read here
   * (the wait) blocks host-side while it equals DONE_SEQ, up to the device's
   * wait time, then returns the current value.
   */
  CMD_SEQ: 0x20,
  /** u32 R: the command's kind ({@link MB_CMD}). */
  CMD_KIND: 0x24,
  /** u64 R: the command's argument (a payload's first argument). */
  CMD_ARG: 0x28,
  /** u64 R: bytes of input at the start of the data region (payload or record). */
  CMD_LEN: 0x30,
  /** u64 RW (guest): the result of the last command; written before DONE_SEQ. */
  RESULT: 0x38,
  /** u32 RW (guest): sequence number of the last finished command; writing it rings "done". */
  DONE_SEQ: 0x40,
  /** u32 R: number of guest writes the device ignored (read-only register, bad width). */
  BAD_WRITES: 0x44,
} as const;

/** Size of the register image (the MMIO window is a page; the rest reads as zero). */
export const MB_IMAGE_SIZE = 0x48;
/** Size of the MMIO window (one page, so the init can map it alone). */
export const MB_WINDOW_SIZE = 0x1000;

/** "SKMB" read as a little-endian u32. */
export const MAILBOX_MAGIC = 0x424d4b53;
/** Protocol version. */
export const MAILBOX_VERSION = 1;

/** Values of {@link MB_REG.STATE}. */
export const MB_STATE = {
  /** Not yet set up (reset value). */
  BOOTING: 0,
  /** Set up and waiting for commands: the snapshot point. */
  READY: 1,
} as const;

/** Command kinds ({@link MB_REG.CMD_KIND}). */
export const MB_CMD = {
  /** Run the position-independent payload at data offset 0 (`compilePayload`); RESULT = its return value. */
  PAYLOAD: 1,
  /** Run the command record at data offset 0 (init/record.ts); RESULT = exit status or -errno. */
  COMMAND: 2,
  /** Finish: RESULT = 0, DONE, then the init powers off (native: exits). */
  SHUTDOWN: 3,
} as const;

/** A command kind. */
export type MailboxCommandKind = (typeof MB_CMD)[keyof typeof MB_CMD];

/** Guest-physical placement used by skiff's VMs (outside e820, below 4 GiB: DESIGN.md). */
export const MAILBOX_LAYOUT = {
  /** The register page (MMIO: no memory slot, every access exits). */
  REGS_BASE: LAYOUT.SKIFF_REGION_START,
  /** The data region (its own KVM memory slot), 2 MiB-aligned after the registers. */
  DATA_BASE: LAYOUT.SKIFF_REGION_START + 0x20_0000,
  /** Default data region size. */
  DATA_SIZE: 4 << 20,
  /** Largest data region that still fits the out-of-e820 area. */
  DATA_MAX: LAYOUT.SKIFF_REGION_MAX - 0x20_0000,
} as const;

/** Whether the guest may write `length` bytes at `offset`. */
function guestWritable(offset: number, length: number): boolean {
  switch (offset) {
    case MB_REG.STATE:
    case MB_REG.DONE_SEQ:
    case MB_REG.RESULT + 4:
      return length === 4;
    case MB_REG.RESULT:
      return length === 4 || length === 8;
    default:
      return false;
  }
}

/** What a guest write changed, for the host to hear about. */
export type MailboxEvent =
  | { kind: "state"; state: number }
  | { kind: "done"; seq: number; result: bigint }
  | null;

/** The register semantics over a byte image shared by the host, the vCPUs and snapshots. */
export class MailboxRegisters {
  /** The image (exactly {@link MB_IMAGE_SIZE} bytes). */
  readonly bytes: Uint8Array;
  #u32: Int32Array;
  #view: DataView;

  /** @param bytes the image: a SharedArrayBuffer view (hv) or a shared file mapping (native tests) */
  constructor(bytes: Uint8Array) {
    if (bytes.byteLength < MB_IMAGE_SIZE) {
      throw new RangeError(
        `mailbox register image is ${bytes.byteLength} bytes (need ${MB_IMAGE_SIZE})`,
      );
    }
    if (bytes.byteOffset % 8 !== 0) {
      throw new RangeError("mailbox register image must be 8-byte aligned");
    }
    this.bytes = bytes.subarray(0, MB_IMAGE_SIZE);
    this.#u32 = new Int32Array(bytes.buffer, bytes.byteOffset, MB_IMAGE_SIZE / 4);
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, MB_IMAGE_SIZE);
  }

  /** A fresh image in a SharedArrayBuffer. */
  static shared(): MailboxRegisters {
    return new MailboxRegisters(new Uint8Array(new SharedArrayBuffer(MB_IMAGE_SIZE)));
  }

  /** Resets the image: magic, version, the data region, everything else zero. */
  init(dataBase: number, dataSize: number): void {
    if (!Number.isSafeInteger(dataBase) || dataBase < 0 || dataBase % 4096 !== 0) {
      throw new RangeError(`mailbox data base 0x${dataBase.toString(16)} is not page-aligned`);
    }
    if (!Number.isSafeInteger(dataSize) || dataSize <= 0 || dataSize % 4096 !== 0) {
      throw new RangeError(`mailbox data size ${dataSize} is not a positive multiple of 4 KiB`);
    }
    this.bytes.fill(0);
    this.#view.setBigUint64(MB_REG.DATA_BASE, BigInt(dataBase), true);
    this.#view.setBigUint64(MB_REG.DATA_SIZE, BigInt(dataSize), true);
    Atomics.store(this.#u32, MB_REG.VERSION / 4, MAILBOX_VERSION);
    Atomics.store(this.#u32, MB_REG.MAGIC / 4, MAILBOX_MAGIC | 0);
  }

  /** A u32 register (atomic load). */
  u32(offset: number): number {
    return Atomics.load(this.#u32, offset / 4) >>> 0;
  }

  /** A u64 register. */
  u64(offset: number): bigint {
    return this.#view.getBigUint64(offset, true);
  }

  /** Data region base. */
  get dataBase(): number {
    return Number(this.u64(MB_REG.DATA_BASE));
  }
  /** Data region size. */
  get dataSize(): number {
    return Number(this.u64(MB_REG.DATA_SIZE));
  }
  /** The init's state ({@link MB_STATE}). */
  get state(): number {
    return this.u32(MB_REG.STATE);
  }
  /** The host's latest command sequence number. */
  get cmdSeq(): number {
    return this.u32(MB_REG.CMD_SEQ);
  }
  /** The last finished command's sequence number. */
  get doneSeq(): number {
    return this.u32(MB_REG.DONE_SEQ);
  }
  /** The last result, as a signed 64-bit value. */
  get result(): bigint {
    return BigInt.asIntN(64, this.u64(MB_REG.RESULT));
  }
  /** True when a command is posted and not finished. */
  get pending(): boolean {
    return this.cmdSeq !== this.doneSeq;
  }

  /**
   * Host: posts a command. Plain writes first, then the sequence number with
   * an atomic store (publishes them), then a wake-up. Returns the sequence number.
   */
  post(kind: MailboxCommandKind, arg: bigint, length: number): number {
    if (this.pending) throw new Error(`mailbox: command ${this.cmdSeq} is still running`);
    const seq = (this.cmdSeq + 1) >>> 0 || 1;
    Atomics.store(this.#u32, MB_REG.CMD_KIND / 4, kind);
    this.#view.setBigUint64(MB_REG.CMD_ARG, BigInt.asUintN(64, arg), true);
    this.#view.setBigUint64(MB_REG.CMD_LEN, BigInt(length), true);
    Atomics.store(this.#u32, MB_REG.CMD_SEQ / 4, seq | 0);
    this.wake();
    return seq;
  }

  /** Host: releases a guest blocked in the wait read (it then sees no new command and waits again). */
  wake(): void {
    Atomics.add(this.#u32, MB_REG.WAKE / 4, 1);
    // notify() is a no-op (returns 0) on non-shared memory; native tests poll instead.
    Atomics.notify(this.#u32, MB_REG.WAKE / 4);
  }

  /**
   * Device: blocks up to `ms` milliseconds while no command is pending and
   * the host does not wake it. Must run on a thread that may block (a vCPU
   * Worker), never on the main thread.
   */
  waitForCommand(ms: number): void {
    if (ms <= 0 || this.pending) return;
    const epoch = Atomics.load(this.#u32, MB_REG.WAKE / 4);
    if (this.pending) return; // posted between the two loads: post() bumps WAKE after CMD_SEQ
    Atomics.wait(this.#u32, MB_REG.WAKE / 4, epoch, ms);
  }

  /** Device: a guest read of `data.length` bytes at `offset` (outside the image: zeros). */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at < MB_IMAGE_SIZE ? Atomics.load(this.#u32, at >> 2) >>> ((at & 3) * 8) & 0xff : 0;
    }
  }

  /**
   * Device: a guest write. Only STATE (4 bytes), RESULT (8, or two 4-byte
   * halves) and DONE_SEQ (4) are writable; anything else is counted in
   * BAD_WRITES and ignored. Returns what the host should hear about.
   */
  write(offset: number, data: Uint8Array): MailboxEvent {
    if (!guestWritable(offset, data.length)) {
      Atomics.add(this.#u32, MB_REG.BAD_WRITES / 4, 1);
      return null;
    }
    if (data.length === 8) {
      Atomics.store(this.#u32, offset / 4, le32(data, 0));
      Atomics.store(this.#u32, offset / 4 + 1, le32(data, 4));
      return null;
    }
    const value = le32(data, 0);
    Atomics.store(this.#u32, offset / 4, value);
    if (offset === MB_REG.STATE) return { kind: "state", state: value >>> 0 };
    if (offset === MB_REG.DONE_SEQ) return { kind: "done", seq: value >>> 0, result: this.result };
    return null;
  }

  /** The image as bytes (for snapshots). */
  save(): Uint8Array {
    return this.bytes.slice();
  }

  /** Puts back an image from {@link save}; rejects anything that is not a mailbox image. */
  restore(image: Uint8Array): void {
    if (!(image instanceof Uint8Array) || image.length !== MB_IMAGE_SIZE) {
      throw new Error(`mailbox state: expected ${MB_IMAGE_SIZE} bytes of registers`);
    }
    const magic = new DataView(image.buffer, image.byteOffset).getUint32(MB_REG.MAGIC, true);
    if (magic !== MAILBOX_MAGIC) {
      throw new Error(`mailbox state: bad magic 0x${magic.toString(16)}`);
    }
    for (let i = 0; i < MB_IMAGE_SIZE / 4; i++) Atomics.store(this.#u32, i, le32(image, i * 4));
  }
}

function le32(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24);
}
