/**
 * virtio-net (virtio 1.2 §5.1): one receive and one transmit queue, MAC, MTU
 * and link status in config space, mergeable receive buffers, and checksum
 * offload both ways. Frames are plain Ethernet frames on the host side; the
 * user-mode network stack (devices/net) attaches through {@link NetLink}.
 *
 * Checksums: with VIRTIO_NET_F_CSUM the guest may hand over frames whose
 * TCP/UDP checksum is only partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`); the device
 * completes it before the stack sees the frame, so the stack always gets valid
 * frames (and the guest skips a pass over every byte it sends). With
 * VIRTIO_NET_F_GUEST_CSUM frames to the guest are marked
 * `VIRTIO_NET_HDR_F_DATA_VALID`, so the guest skips verifying checksums the
 * stack already computed. GSO/TSO is not offered.
 *
 * @module
 */

import { type NetState, parseNetState } from "./persist.ts";
import { ChainReader, ChainWriter } from "../chain.ts";
import { bit, DEVICE_ID, type DeviceContext, type VirtioDevice } from "../device.ts";
import type { Queue } from "../queue.ts";

/** §5.1.3 feature bits. */
export const NET_F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  MRG_RXBUF: 15,
  STATUS: 16,
} as const;

/** §5.1.6 `virtio_net_hdr.flags`. */
export const NET_HDR_F = { NEEDS_CSUM: 1, DATA_VALID: 2 } as const;
/** §5.1.6: the header with VERSION_1 (num_buffers always present). */
export const NET_HDR_LEN = 12;
/** §5.1.4 status bit. */
export const NET_S_LINK_UP = 1;

const QUEUE_SIZE = 256;
/** Frames held for the guest while it has no receive buffers; more are dropped (and counted). */
const MAX_PENDING_FRAMES = 1024;
/**
 * Longest transmit chain taken: the header and the largest Ethernet frame
 * (64 KiB MTU, 14-byte header, 4-byte VLAN tag). GSO is not offered, so
 * anything longer is no frame; it is dropped without being copied, so a
 * guest cannot make the VMM allocate whatever its chain claims.
 */
const MAX_TX_CHAIN = NET_HDR_LEN + 65535 + 18;

/** The network stack's side of the attachment. */
export interface NetLink {
  /** A frame the guest sent (Ethernet, checksums complete). */
  fromGuest(frame: Uint8Array): void;
}

/** Options of {@link VirtioNet}. */
export interface VirtioNetOptions {
  /** Guest MAC address (6 bytes). */
  mac: Uint8Array;
  /** MTU announced with VIRTIO_NET_F_MTU (68..65535; default 1500). */
  mtu?: number;
  /** Where guest frames go. */
  link?: NetLink;
}

/** Counters for diagnostics. */
export interface NetDeviceCounters {
  txFrames: number;
  rxFrames: number;
  rxDropped: number;
  txDropped: number;
}

/** The virtio-net device. */
export class VirtioNet implements VirtioDevice {
  readonly deviceType = DEVICE_ID.NET;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(NET_F.CSUM) | bit(NET_F.GUEST_CSUM) | bit(NET_F.MTU) | bit(NET_F.MAC) |
    bit(NET_F.MRG_RXBUF) | bit(NET_F.STATUS);
  readonly mac: Uint8Array;
  readonly mtu: number;
  link: NetLink;
  readonly counters: NetDeviceCounters = { txFrames: 0, rxFrames: 0, rxDropped: 0, txDropped: 0 };
  #ctx: DeviceContext | null = null;
  #pending: Uint8Array[] = [];
  #linkUp = true;

  constructor(opts: VirtioNetOptions) {
    if (opts.mac.length !== 6) throw new RangeError(`MAC must be 6 bytes, got ${opts.mac.length}`);
    const mtu = opts.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new RangeError(`MTU ${mtu} is not in 68..65535`);
    }
    this.mac = opts.mac.slice();
    this.mtu = mtu;
    this.link = opts.link ?? { fromGuest: () => {} };
  }

  readConfig(offset: number, data: Uint8Array): void {
    // §5.1.4: u8 mac[6]; le16 status; le16 max_virtqueue_pairs; le16 mtu.
    const cfg = new Uint8Array(12);
    cfg.set(this.mac);
    const v = new DataView(cfg.buffer);
    v.setUint16(6, this.#linkUp ? NET_S_LINK_UP : 0, true);
    v.setUint16(8, 1, true);
    v.setUint16(10, this.mtu, true);
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  writeConfig(): void {
    // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR/legacy; not offered.
  }

  /** Sets the link state (config change notification, §5.1.4). */
  setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.#ctx?.signalConfig();
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#flush();
  }

  reset(): void {
    this.#ctx = null;
  }

  queueNotify(index: number): void {
    if (index === 0) this.#flush();
    else if (index === 1) this.#transmit();
  }

  /** Queues a frame for the guest; returns false when it was dropped (no room). */
  toGuest(frame: Uint8Array): boolean {
    if (this.#pending.length >= MAX_PENDING_FRAMES) {
      this.counters.rxDropped++;
      return false;
    }
    this.#pending.push(frame);
    this.#flush();
    return true;
  }

  /**
   * Guest → host: copy the chain once (the guest may rewrite its buffers at
   * any time), then strip the header, complete partial checksums and hand
   * the frame to the link — all on the copy.
   */
  #transmit(): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    const q = ctx.queues[1];
    let any = false;
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      if (c.readableLength > MAX_TX_CHAIN) {
        q.addUsed(ctx.mem, c.head, 0);
        any = true;
        this.counters.txDropped++;
        continue;
      }
      const bytes = new ChainReader(ctx.mem, c).readAll();
      q.addUsed(ctx.mem, c.head, 0);
      any = true;
      if (bytes.length < NET_HDR_LEN + 14) {
        this.counters.txDropped++;
        continue;
      }
      const hv = new DataView(bytes.buffer, 0, NET_HDR_LEN);
      const frame = bytes.subarray(NET_HDR_LEN);
      if (hv.getUint8(0) & NET_HDR_F.NEEDS_CSUM) {
        if (!completeChecksum(frame, hv.getUint16(6, true), hv.getUint16(8, true))) {
          this.counters.txDropped++;
          continue;
        }
      }
      this.counters.txFrames++;
      this.link.fromGuest(frame);
    }
    if (any) ctx.signalUsed(1);
  }

  /** Host → guest: pending frames into receive buffers (merging buffers when negotiated). */
  #flush(): void {
    const ctx = this.#ctx;
    if (!ctx || this.#pending.length === 0) return;
    const q = ctx.queues[0];
    if (!q.ready) return;
    const mrg = (ctx.features & bit(NET_F.MRG_RXBUF)) !== 0n;
    const valid = (ctx.features & bit(NET_F.GUEST_CSUM)) !== 0n;
    const hdr = new Uint8Array(NET_HDR_LEN);
    let any = false;
    try {
      for (let round = 0;; round++) {
        const delivered = this.counters.rxFrames + this.counters.rxDropped;
        this.#fill(ctx, q, mrg, valid, hdr);
        const progress = this.counters.rxFrames + this.counters.rxDropped !== delivered;
        any ||= progress;
        // Out of receive buffers with frames left: ask the driver to notify when it
        // posts more (§2.7.10: with EVENT_IDX, move avail_event to the next buffer;
        // otherwise it stays where the last kick left it, and a driver refilling the
        // ring past it never kicks). Buffers posted meanwhile are taken at once.
        if (this.#pending.length === 0 || !progress && round > 0) break;
        if (!q.setNotification(ctx.mem, true)) break;
      }
    } catch (e) {
      ctx.fail(e);
      return;
    }
    if (any) ctx.signalUsed(0);
  }

  /** Moves pending frames into the receive buffers the driver has posted, until either runs out. */
  #fill(ctx: DeviceContext, q: Queue, mrg: boolean, valid: boolean, hdr: Uint8Array): void {
    while (this.#pending.length > 0) {
      const frame = this.#pending[0];
      const first = q.pop(ctx.mem);
      if (!first) return;
      const total = NET_HDR_LEN + frame.length;
      if (!mrg && first.writableLength < total) {
        // Without mergeable buffers a frame must fit one chain (§5.1.6.3.1); drop it.
        q.addUsed(ctx.mem, first.head, 0);
        this.#pending.shift();
        this.counters.rxDropped++;
        continue;
      }
      // Gather enough chains for the frame before writing, so a frame is never half-delivered.
      const chains = [first];
      let room = first.writableLength;
      while (mrg && room < total) {
        const next = q.pop(ctx.mem);
        if (!next) break;
        chains.push(next);
        room += next.writableLength;
      }
      if (room < total) {
        for (let i = 0; i < chains.length; i++) q.undoPop();
        return; // wait for more buffers
      }
      hdr.fill(0);
      hdr[0] = valid ? NET_HDR_F.DATA_VALID : 0;
      new DataView(hdr.buffer).setUint16(10, chains.length, true); // num_buffers
      let off = 0;
      for (const c of chains) {
        const w = new ChainWriter(ctx.mem, c);
        if (off === 0) w.writeSome(hdr);
        const n = w.writeSome(frame.subarray(off));
        off += n;
        q.addUsed(ctx.mem, c.head, w.written);
      }
      this.#pending.shift();
      this.counters.rxFrames++;
    }
  }

  save(): NetState {
    return { linkUp: this.#linkUp, pending: this.#pending.length };
  }

  restore(state: unknown): void {
    this.#linkUp = parseNetState(state).linkUp;
    // Frames in flight are not kept across a snapshot: TCP retransmits, and the
    // stack resets connections on restore anyway (issue 9).
    this.#pending = [];
  }
}

/**
 * Completes a partial checksum (§5.1.6.2): sums `frame[start..]` and stores
 * the folded complement at `start + offset` (the field already holds the
 * pseudo-header sum the guest put there). False when the fields are bogus.
 */
export function completeChecksum(frame: Uint8Array, start: number, offset: number): boolean {
  if (start >= frame.length || start + offset + 2 > frame.length) return false;
  let sum = 0;
  const end = frame.length;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (frame[i] << 8) | frame[i + 1];
  if (i < end) sum += frame[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  let csum = ~sum & 0xffff;
  // A UDP checksum of 0 means "none"; RFC 768 sends 0xffff instead (TCP never has 0 here).
  if (csum === 0) csum = 0xffff;
  frame[start + offset] = csum >> 8;
  frame[start + offset + 1] = csum & 0xff;
  return true;
}
