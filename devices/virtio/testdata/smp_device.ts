/**
 * A virtio device for the SMP L1 tests: one queue per vCPU; each chain
 * carries a u32 request in its first readable buffer and gets `request +
 * 1000` in its first writable buffer. Config space: a magic u32 and the
 * queue count. With `hold` set, completions wait for {@link flush} — a
 * back-end that answers later — and the device marks the popped chain in
 * guest memory (`heldFlag`) so the guest knows a completion is pending.
 *
 * @module
 */

import { type DeviceContext, type VirtioDevice } from "../device.ts";
import { DeviceResetError } from "../mmio_host.ts";

/** Device ID used (not a registered virtio type: no guest driver will bind it). */
export const SMP_DEVICE_ID = 42;
/** First config word. */
export const SMP_CONFIG_MAGIC = 0x31504d53; // "SMP1"
/** What a reply adds to the request. */
export const SMP_REPLY_ADD = 1000;
/** Queue size offered. */
export const SMP_QUEUE_SIZE = 8;

/** The test device. */
export class SmpTestDevice implements VirtioDevice {
  readonly deviceType = SMP_DEVICE_ID;
  readonly queueMaxSizes: readonly number[];
  readonly features = 0n;
  /** Chains answered per queue. */
  served: number[];
  /** Hold completions until {@link flush}. */
  hold = false;
  /** Where (guest-physical) to write 1 when a chain is held; 0: nowhere. */
  heldFlag = 0;
  /** Held completions that found the device reset (their access refused). */
  refused = 0;
  #ctx: DeviceContext | null = null;
  #held: (() => void)[] = [];

  constructor(queues: number) {
    this.queueMaxSizes = Array.from({ length: queues }, () => SMP_QUEUE_SIZE);
    this.served = new Array(queues).fill(0);
  }

  readConfig(offset: number, data: Uint8Array): void {
    const cfg = new Uint8Array(8);
    const v = new DataView(cfg.buffer);
    v.setUint32(0, SMP_CONFIG_MAGIC, true);
    v.setUint32(4, this.queueMaxSizes.length, true);
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
  }
  reset(): void {
    this.#ctx = null;
  }

  queueNotify(index: number): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    const q = ctx.queues[index];
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      if (c.readable.length < 1 || c.readable[0].len < 4 || c.writable[0]?.len < 4) {
        throw new Error(`queue ${index}: chain ${c.head} has no 4-byte request and reply`);
      }
      const req = c.readable[0].addr, resp = c.writable[0].addr, head = c.head;
      const complete = () => {
        const v = ctx.mem.readU32(req);
        ctx.mem.writeU32(resp, (v + SMP_REPLY_ADD) >>> 0);
        q.addUsed(ctx.mem, head, 4);
        this.served[index]++;
        ctx.signalUsed(index);
      };
      if (this.hold) {
        this.#held.push(complete);
        if (this.heldFlag) ctx.mem.writeU32(this.heldFlag, 1);
      } else complete();
    }
  }

  /** Runs the held completions; those of a reset device are refused and counted. */
  flush(): void {
    for (const complete of this.#held.splice(0)) {
      try {
        complete();
      } catch (e) {
        if (!(e instanceof DeviceResetError)) throw e;
        this.refused++;
      }
    }
  }

  save(): { served: number[] } {
    return { served: [...this.served] };
  }
  restore(state: unknown): void {
    const s = state as { served: number[] };
    if (!Array.isArray(s?.served) || s.served.length !== this.served.length) {
      throw new Error("smp test device: bad state");
    }
    this.served = [...s.served];
  }
}
