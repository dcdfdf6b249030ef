/**
 * A guest-side virtio-vsock driver over fake memory, for tests of the device
 * (what Linux's `virtio_transport.c` and `virtio_transport_common.c` do,
 * reduced to the essentials): it posts receive and event buffers, sends
 * packets on the tx queue, and runs small guest sockets with credit-based
 * flow control that check the device never sends more than their credit.
 * Not used by the VMM itself.
 *
 * @module
 */

import { RegionMemory } from "../../../hv/memory.ts";
import { type MockBuffer, MockMmioDriver, type MockQueueDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import type { VirtioVsock } from "./device.ts";
import {
  encodeHeader,
  HEADER_SIZE,
  HOST_CID,
  MAX_PACKET_PAYLOAD,
  OP,
  parseHeader,
  SHUTDOWN,
  VSOCK_TYPE,
  type VsockHeader,
} from "./packet.ts";

/** A packet the guest received. */
export interface GuestPacket {
  header: VsockHeader;
  payload: Uint8Array;
}

/** Options of {@link MockVsockGuest}. */
export interface MockVsockGuestOptions {
  /** Queue size (default 64). */
  queueSize?: number;
  /** Payload bytes per rx buffer (Linux: 4096). */
  rxBufferSize?: number;
  /** Rx buffers posted at start (default: the queue size). */
  rxBuffers?: number;
  /** Features the driver accepts (default: all offered). */
  features?: bigint;
  /**
   * Called synchronously when the device raises its interrupt, as a vCPU
   * running beside the VMM's event loop sees it: a guest that acts here
   * (polls, sends) does so inside the device's pump, before any host promise
   * callback runs (orders a test cannot reach by polling between turns).
   */
  onInterrupt?: (guest: MockVsockGuest) => void;
}

const ALL = (1n << 64n) - 1n;
const MEM_SIZE = 24 << 20;

/** The driver side of a virtio-vsock device behind the mmio transport. */
export class MockVsockGuest {
  readonly mem: RegionMemory;
  readonly transport: VirtioMmioTransport;
  readonly drv: MockMmioDriver;
  readonly device: VirtioVsock;
  /** Negotiated features. */
  readonly features: bigint;
  /** Payload bytes per posted rx buffer. */
  readonly rxBufferSize: number;
  /** Refill rx buffers as they are used (default true). */
  autoRefill = true;
  /** Event ids received on the event queue. */
  readonly events: number[] = [];
  /** Guest sockets by `${guestPort}:${hostPort}`. */
  readonly sockets = new Map<string, MockGuestSocket>();
  /** Guest ports with a listener: connections from the host are accepted there. */
  readonly listening = new Set<number>();
  /** Packets for no socket (RSTs to refused REQUESTs, …), in order. */
  readonly stray: GuestPacket[] = [];

  constructor(device: VirtioVsock, opts: MockVsockGuestOptions = {}) {
    this.device = device;
    this.mem = RegionMemory.fromBytes(MEM_SIZE);
    const onInterrupt = opts.onInterrupt;
    let ready = false; // not during the driver's own setup below
    this.transport = new VirtioMmioTransport(device, this.mem, (asserted) => {
      if (asserted && ready) onInterrupt?.(this);
    });
    this.drv = new MockMmioDriver(this.transport, this.mem, 0x10000, MEM_SIZE - 0x10000);
    const size = opts.queueSize ?? 64;
    this.rxBufferSize = opts.rxBufferSize ?? 4096;
    this.features = this.drv.init(opts.features ?? ALL, 3, size, 6 << 20);
    this.postRx(opts.rxBuffers ?? size);
    this.postEvents(8);
    ready = true;
  }

  /** The device's CID, read from config space. */
  get cid(): number {
    return Number(new DataView(this.drv.config(0, 8).buffer).getBigUint64(0, true));
  }

  get rx(): MockQueueDriver {
    return this.drv.queues[0];
  }
  get tx(): MockQueueDriver {
    return this.drv.queues[1];
  }
  get eventq(): MockQueueDriver {
    return this.drv.queues[2];
  }

  /** Posts `n` receive buffers laid out as Linux 6.1 does (header, then payload) and kicks. */
  postRx(n: number): void {
    for (let i = 0; i < n && this.rx.freeDescriptors >= 2; i++) {
      this.rx.add([{ writable: HEADER_SIZE }, { writable: this.rxBufferSize }]);
    }
    this.drv.kick(0);
  }

  /** Posts `n` event buffers and kicks. */
  postEvents(n: number): void {
    for (let i = 0; i < n && this.eventq.freeDescriptors > 0; i++) {
      this.eventq.add([{ writable: 4 }]);
    }
    this.drv.kick(2);
  }

  /** A header from the guest with defaults (its CID → host, STREAM). */
  header(h: Partial<VsockHeader>): VsockHeader {
    return {
      srcCid: this.device.guestCid,
      dstCid: HOST_CID,
      srcPort: 0,
      dstPort: 0,
      len: 0,
      type: VSOCK_TYPE.STREAM,
      op: OP.RW,
      flags: 0,
      bufAlloc: 0,
      fwdCnt: 0,
      ...h,
    };
  }

  /** Sends a packet (header + payload in separate buffers, as Linux does) and kicks. */
  send(h: Partial<VsockHeader>, payload?: Uint8Array): void {
    const hdr = this.header({ len: payload?.length ?? 0, ...h });
    const bufs: MockBuffer[] = [{ data: encodeHeader(hdr) }];
    if (payload && payload.length > 0) bufs.push({ data: payload });
    this.sendRaw(bufs);
  }

  /** Puts raw buffers on the tx queue and kicks (for malformed packets). */
  sendRaw(buffers: MockBuffer[]): void {
    this.tx.takeUsed();
    this.tx.add(buffers);
    this.drv.kick(1);
    this.tx.takeUsed();
  }

  /**
   * Collects what the device put in the rx and event queues: packets go to
   * their socket (or {@link stray}); refills and re-kicks. Returns the packets.
   */
  poll(): GuestPacket[] {
    const out: GuestPacket[] = [];
    const used = this.rx.takeUsed();
    for (const u of used) {
      if (u.len < HEADER_SIZE) continue;
      const header = parseHeader(u.written.subarray(0, HEADER_SIZE));
      const payload = u.written.slice(HEADER_SIZE, HEADER_SIZE + header.len);
      if (payload.length !== header.len) {
        throw new Error(`packet len ${header.len} but ${payload.length} bytes written`);
      }
      out.push({ header, payload });
    }
    for (const e of this.eventq.takeUsed()) {
      this.events.push(new DataView(e.written.buffer).getUint32(0, true));
    }
    if (this.autoRefill && used.length > 0) this.postRx(used.length);
    for (const p of out) this.#dispatch(p);
    return out;
  }

  #dispatch(p: GuestPacket): void {
    const h = p.header;
    if (h.dstCid !== this.device.guestCid || h.srcCid !== HOST_CID) {
      throw new Error(`packet to CID ${h.dstCid} from ${h.srcCid}`);
    }
    const key = `${h.dstPort}:${h.srcPort}`;
    const s = this.sockets.get(key);
    if (s) {
      s.handle(p);
      return;
    }
    if (h.op === OP.REQUEST && this.listening.has(h.dstPort)) {
      const sock = new MockGuestSocket(this, h.dstPort, h.srcPort);
      sock.onPeerCredit(h);
      sock.state = "established";
      this.sockets.set(key, sock);
      sock.sendControl(OP.RESPONSE);
      return;
    }
    this.stray.push(p);
  }

  /** Opens a guest → host connection from `guestPort` to `hostPort` (REQUEST sent). */
  connect(guestPort: number, hostPort: number, bufAlloc = 64 * 1024): MockGuestSocket {
    const s = new MockGuestSocket(this, guestPort, hostPort, bufAlloc);
    this.sockets.set(`${guestPort}:${hostPort}`, s);
    s.sendControl(OP.REQUEST);
    return s;
  }

  /** The socket for `guestPort` ↔ `hostPort`. */
  socket(guestPort: number, hostPort: number): MockGuestSocket {
    const s = this.sockets.get(`${guestPort}:${hostPort}`);
    if (!s) throw new Error(`no guest socket ${guestPort} ↔ host ${hostPort}`);
    return s;
  }
}

/** One guest socket with Linux's credit rules. */
export class MockGuestSocket {
  readonly guest: MockVsockGuest;
  readonly port: number;
  readonly hostPort: number;
  /** Our receive buffer (`buf_alloc`). */
  readonly bufAlloc: number;
  state: "connecting" | "established" | "reset" = "connecting";
  /** Received, unread bytes. */
  #unread: Uint8Array[] = [];
  unreadBytes = 0;
  /** Bytes read by the "application". */
  fwdCnt = 0;
  lastFwdSent = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  txCnt = 0;
  /** SHUTDOWN flags from the host. */
  peerShutdown = 0;
  /** Packets seen, by op name (for assertions). */
  readonly ops: number[] = [];

  constructor(guest: MockVsockGuest, port: number, hostPort: number, bufAlloc = 64 * 1024) {
    this.guest = guest;
    this.port = port;
    this.hostPort = hostPort;
    this.bufAlloc = bufAlloc;
  }

  /** Credit the host has given us. */
  get credit(): number {
    return this.peerBufAlloc - ((this.txCnt - this.peerFwdCnt) >>> 0);
  }

  onPeerCredit(h: VsockHeader): void {
    this.peerBufAlloc = h.bufAlloc;
    this.peerFwdCnt = h.fwdCnt;
  }

  handle(p: GuestPacket): void {
    const h = p.header;
    this.ops.push(h.op);
    if (h.op !== OP.RST) this.onPeerCredit(h);
    switch (h.op) {
      case OP.RESPONSE:
        this.state = "established";
        return;
      case OP.RST:
        this.state = "reset";
        return;
      case OP.SHUTDOWN:
        this.peerShutdown |= h.flags;
        return;
      case OP.RW:
        if (this.peerShutdown & SHUTDOWN.SEND) throw new Error("data after SHUTDOWN(SEND)");
        if (this.unreadBytes + h.len > this.bufAlloc) {
          throw new Error(
            `device sent ${h.len} bytes with ${this.unreadBytes} of ${this.bufAlloc} buffered: past our credit`,
          );
        }
        this.#unread.push(p.payload);
        this.unreadBytes += h.len;
        return;
      case OP.CREDIT_REQUEST:
        this.sendControl(OP.CREDIT_UPDATE);
        return;
    }
  }

  /** Sends a control packet carrying our credit. */
  sendControl(op: number, flags = 0): void {
    this.guest.send({
      srcPort: this.port,
      dstPort: this.hostPort,
      op,
      flags,
      bufAlloc: this.bufAlloc,
      fwdCnt: this.fwdCnt,
    });
    this.lastFwdSent = this.fwdCnt;
  }

  /**
   * Sends as much of `data` as our credit allows, in packets of at most
   * `maxPacket` bytes (sizes from `size`); returns the bytes sent.
   */
  write(data: Uint8Array, size: () => number = () => MAX_PACKET_PAYLOAD): number {
    let off = 0;
    while (off < data.length && this.credit > 0 && this.guest.tx.freeDescriptors >= 2) {
      const n = Math.max(1, Math.min(size(), data.length - off, this.credit, MAX_PACKET_PAYLOAD));
      this.guest.send({
        srcPort: this.port,
        dstPort: this.hostPort,
        op: OP.RW,
        bufAlloc: this.bufAlloc,
        fwdCnt: this.fwdCnt,
      }, data.subarray(off, off + n));
      this.lastFwdSent = this.fwdCnt;
      this.txCnt = (this.txCnt + n) >>> 0;
      off += n;
    }
    return off;
  }

  /**
   * The application reads up to `max` bytes; like Linux, a CREDIT_UPDATE
   * goes out when the host's view of our free space runs below 64 KiB.
   */
  read(max = Infinity): Uint8Array {
    const parts: Uint8Array[] = [];
    let n = 0;
    while (this.#unread.length > 0 && n < max) {
      const head = this.#unread[0];
      const take = Math.min(head.length, max - n);
      parts.push(head.subarray(0, take));
      if (take === head.length) this.#unread.shift();
      else this.#unread[0] = head.subarray(take);
      n += take;
    }
    this.unreadBytes -= n;
    this.fwdCnt = (this.fwdCnt + n) >>> 0;
    if (n > 0 && this.bufAlloc - ((this.fwdCnt - this.lastFwdSent) >>> 0) < MAX_PACKET_PAYLOAD) {
      this.sendControl(OP.CREDIT_UPDATE);
    }
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}
