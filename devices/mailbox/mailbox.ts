/**
 * The host side of the mailbox: the device spec for the vCPU Workers, the
 * data region, and the command API the VMM uses to drive the guest init
 * ({@link Mailbox.ready}, {@link Mailbox.runPayload},
 * {@link Mailbox.runCommand}, {@link Mailbox.shutdown}). Protocol:
 * `init/MAILBOX.md`.
 *
 * Completion is level-triggered: the host re-reads the register image
 * whenever the device posts a doorbell message (or, for a register image
 * without a device — native tests — on a short poll), so a missed or
 * duplicated event cannot lose a result, and a restored snapshot's state is
 * simply read back.
 *
 * @module
 */

import type { DeviceSpec } from "../../hv/device.ts";
import { type GuestMemory, RegionMemory } from "../../hv/memory.ts";
import type { MailboxDeviceConfig } from "./device.ts";
import {
  MAILBOX_LAYOUT,
  type MailboxCommandKind,
  MailboxRegisters,
  MB_CMD,
  MB_IMAGE_SIZE,
  MB_STATE,
  MB_WINDOW_SIZE,
} from "./registers.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";

/** What {@link Mailbox.attach} needs from a VM (hv's `Vm` has it). */
export interface MailboxVm {
  addDevice(spec: DeviceSpec): void;
  addMemory(memory: RegionMemory): void;
  onDeviceMessage(name: string, listener: (message: unknown, vcpuId: number) => void): void;
}

/** Options of {@link Mailbox}. */
export interface MailboxOptions {
  /** Device name (default "mailbox"). */
  name?: string;
  /** Guest-physical base of the register page (default {@link MAILBOX_LAYOUT.REGS_BASE}). */
  regsBase?: number;
  /** Guest-physical base of the data region (default {@link MAILBOX_LAYOUT.DATA_BASE}). */
  dataBase?: number;
  /** Data region size (default 4 MiB; a multiple of 4 KiB). */
  dataSize?: number;
  /** Longest host-side block of one guest wait read, ms (default 10). */
  waitMs?: number;
  /**
   * A register image to use instead of a fresh SharedArrayBuffer — e.g. a
   * file mapped `MAP_SHARED` that a natively run init maps too. Without a
   * device to post doorbells, completion is then found by polling.
   */
  registers?: Uint8Array;
  /** Poll interval in ms when `registers` is given (default 1). */
  pollMs?: number;
}

/** Per-call options: a deadline and/or an abort signal. */
export interface MailboxCallOptions {
  /** Reject with a timeout error after this many ms. */
  timeoutMs?: number;
  /** Reject when this signal aborts. */
  signal?: AbortSignal;
}

/** The mailbox's saved state (registers and placement). */
export interface MailboxSnapshot {
  registers: Uint8Array;
  dataBase: number;
  dataSize: number;
}

interface Waiter {
  test(): boolean;
  resolve(): void;
  reject(e: unknown): void;
}

/** Host side of the mailbox device. Dispose it after the VM. */
export class Mailbox implements Disposable {
  /** Device name (routes the Workers' messages). */
  readonly name: string;
  /** Guest-physical base of the register page. */
  readonly regsBase: number;
  /** Guest-physical base of the data region. */
  readonly dataBase: number;
  /** Data region size. */
  readonly dataSize: number;
  /** The register image. */
  readonly registers: MailboxRegisters;
  readonly #waitMs: number;
  readonly #shared: SharedArrayBuffer | null;
  readonly #pollMs: number;
  #memory: GuestMemory | null = null;
  #ownedMemory: RegionMemory | null = null;
  #waiters = new Set<Waiter>();
  #poll: ReturnType<typeof setInterval> | null = null;
  #queue: Promise<unknown> = Promise.resolve();
  #failure: unknown = null;

  constructor(options: MailboxOptions = {}) {
    this.name = options.name ?? "mailbox";
    this.regsBase = options.regsBase ?? MAILBOX_LAYOUT.REGS_BASE;
    this.dataBase = options.dataBase ?? MAILBOX_LAYOUT.DATA_BASE;
    this.dataSize = options.dataSize ?? MAILBOX_LAYOUT.DATA_SIZE;
    this.#waitMs = options.waitMs ?? 10;
    this.#pollMs = options.pollMs ?? 1;
    if (options.registers) {
      this.#shared = null;
      this.registers = new MailboxRegisters(options.registers);
    } else {
      this.#shared = new SharedArrayBuffer(MB_IMAGE_SIZE);
      this.registers = new MailboxRegisters(new Uint8Array(this.#shared));
    }
    this.registers.init(this.dataBase, this.dataSize);
  }

  /** The device for the vCPU Workers (MMIO: one page at {@link regsBase}). */
  get spec(): DeviceSpec {
    if (!this.#shared) throw new Error("mailbox: a file-backed register image has no device");
    const config: MailboxDeviceConfig = { registers: this.#shared, waitMs: this.#waitMs };
    return {
      name: this.name,
      module: runtimeModuleUrl("devices/mailbox/device.ts"),
      config,
      mmio: [{ base: this.regsBase, length: MB_WINDOW_SIZE }],
    };
  }

  /**
   * Adds the device to `vm` and listens for its doorbells. The data region is
   * `memory` when given (a restore: the snapshot's memory already holds it),
   * otherwise a new memfd region this mailbox owns, added to the VM as its
   * own memory slot.
   */
  attach(vm: MailboxVm, memory?: GuestMemory): void {
    if (memory) {
      this.useMemory(memory);
    } else {
      const own = RegionMemory.memfd(
        [{ guestAddr: this.dataBase, size: this.dataSize }],
        "skiff-mailbox",
      );
      this.useMemory(own);
      this.#ownedMemory = own;
      vm.addMemory(own);
    }
    vm.addDevice(this.spec);
    vm.onDeviceMessage(this.name, () => this.#check());
  }

  /** Uses `memory` (which must hold the whole data region) for payloads and records. */
  useMemory(memory: GuestMemory): void {
    if (!memory.contains(this.dataBase, this.dataSize)) {
      throw new RangeError(
        `mailbox: memory does not hold the data region 0x${this.dataBase.toString(16)}+0x${
          this.dataSize.toString(16)
        }`,
      );
    }
    this.#memory = memory;
  }

  /** Resolves once the init has rung "ready" and waits for a command (at once after a restore at that point). */
  ready(options: MailboxCallOptions = {}): Promise<void> {
    return this.#until(
      () => this.registers.state === MB_STATE.READY && !this.registers.pending,
      "ready",
      options,
    );
  }

  /**
   * Runs a payload (`compilePayload` output) in the init: copied to data
   * offset 0, then into anonymous executable memory, and called with
   * `arg` in rdi. Resolves to its return value (signed; a failed checked step
   * returns -errno).
   */
  runPayload(
    bytes: Uint8Array,
    arg: bigint = 0n,
    options: MailboxCallOptions = {},
  ): Promise<bigint> {
    return this.#run(MB_CMD.PAYLOAD, bytes, arg, options);
  }

  /**
   * Runs a command record (init/RECORD.md, encoded by the caller with
   * init/record.ts `encodeRecord`: the mailbox is a device and knows nothing
   * of the init's formats) in the init. Resolves to the command's exit status
   * (0–255, 128 + signal), or -errno when the init could not run the record.
   */
  async runCommand(record: Uint8Array, options: MailboxCallOptions = {}): Promise<number> {
    return Number(await this.#run(MB_CMD.COMMAND, record, 0n, options));
  }

  /** Tells the init to finish (in a VM it powers off). Resolves when it acknowledged. */
  async shutdown(options: MailboxCallOptions = {}): Promise<void> {
    await this.#run(MB_CMD.SHUTDOWN, new Uint8Array(0), 0n, options);
  }

  /**
   * Copies `length` bytes at `offset` of the data region (output a payload
   * left there). The data region is guest memory: the result is a private
   * copy, read once, for the caller to validate and use.
   */
  readData(offset: number, length: number): Uint8Array {
    this.#checkRange(offset, length);
    const out = new Uint8Array(length);
    this.#memory!.read(this.dataBase + offset, out);
    return out;
  }

  /** Writes bytes into the data region at `offset` (input for a payload beyond its own code). */
  writeData(offset: number, bytes: Uint8Array): void {
    this.#checkRange(offset, bytes.length);
    this.#memory!.write(this.dataBase + offset, bytes);
  }

  /** Releases a guest blocked in its wait read now (call before `vm.pause()` for a fast pause). */
  wake(): void {
    this.registers.wake();
  }

  /**
   * Rejects every pending and future call with `error` (e.g. the VM stopped).
   * What already finished in the register image still resolves first: a
   * guest that rings "done" and then powers off (SHUTDOWN) must not lose
   * the race with the host noticing the stop.
   */
  fail(error: unknown): void {
    this.#check();
    this.#failure = error;
    for (const w of [...this.#waiters]) w.reject(error);
  }

  /**
   * Fails every pending and future call once `stopped` settles — pass
   * `vm.wait()` so a guest that powers off, reboots or crashes ends the
   * host's waits at once (with the VM's error, or a message naming the stop).
   */
  failWhen(stopped: Promise<unknown>): void {
    stopped.then(
      (s) => this.fail(new Error(`mailbox: the VM stopped (${JSON.stringify(s, bigintJson)})`)),
      (e) => this.fail(e),
    );
  }

  /** The device state for a snapshot (take it at "ready", with the VM paused). */
  save(): MailboxSnapshot {
    return { registers: this.registers.save(), dataBase: this.dataBase, dataSize: this.dataSize };
  }

  /** Restores {@link save}'s state into a mailbox with the same placement (before the VM starts). */
  restore(state: unknown): void {
    const s = state as Partial<MailboxSnapshot> | null;
    if (!s || typeof s !== "object" || !(s.registers instanceof Uint8Array)) {
      throw new Error("mailbox state: missing registers");
    }
    if (s.dataBase !== this.dataBase || s.dataSize !== this.dataSize) {
      throw new Error(
        `mailbox state: data region 0x${Number(s.dataBase).toString(16)}+0x${
          Number(s.dataSize).toString(16)
        } differs from this mailbox's 0x${this.dataBase.toString(16)}+0x${
          this.dataSize.toString(16)
        }`,
      );
    }
    this.registers.restore(s.registers);
    if (this.registers.dataBase !== this.dataBase || this.registers.dataSize !== this.dataSize) {
      throw new Error("mailbox state: registers disagree with the saved placement");
    }
    this.#check();
  }

  [Symbol.dispose](): void {
    this.fail(new Error("mailbox closed"));
    this.#ownedMemory?.[Symbol.dispose]();
    this.#ownedMemory = null;
  }

  #checkRange(offset: number, length: number): void {
    if (!this.#memory) throw new Error("mailbox: no data memory (attach or useMemory first)");
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.dataSize
    ) {
      throw new RangeError(
        `mailbox: data range ${offset}+${length} outside the ${this.dataSize}-byte region`,
      );
    }
  }

  #run(
    kind: MailboxCommandKind,
    input: Uint8Array,
    arg: bigint,
    options: MailboxCallOptions,
  ): Promise<bigint> {
    const next = this.#queue.then(async () => {
      if (kind === MB_CMD.PAYLOAD && input.length === 0) throw new Error("mailbox: empty payload");
      this.#checkRange(0, input.length);
      await this.ready(options);
      this.#memory!.write(this.dataBase, input);
      const seq = this.registers.post(kind, arg, input.length);
      await this.#until(() => this.registers.doneSeq === seq, `command ${seq}`, options);
      return this.registers.result;
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  #until(test: () => boolean, what: string, options: MailboxCallOptions): Promise<void> {
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (test()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () =>
        w.reject(options.signal!.reason ?? new Error(`mailbox: ${what} aborted`));
      const done = () => {
        this.#waiters.delete(w);
        if (timer !== undefined) clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
        if (this.#waiters.size === 0 && this.#poll !== null) {
          clearInterval(this.#poll);
          this.#poll = null;
        }
      };
      const w: Waiter = {
        test,
        resolve: () => {
          done();
          resolve();
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      this.#waiters.add(w);
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(
          () =>
            w.reject(
              new Error(`mailbox: timed out after ${options.timeoutMs} ms waiting for ${what}`),
            ),
          options.timeoutMs,
        );
      }
      if (options.signal) {
        if (options.signal.aborted) return onAbort();
        options.signal.addEventListener("abort", onAbort, { once: true });
      }
      if (!this.#shared && this.#poll === null) {
        this.#poll = setInterval(() => this.#check(), this.#pollMs);
      }
    });
  }

  #check(): void {
    for (const w of [...this.#waiters]) if (w.test()) w.resolve();
  }
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}
