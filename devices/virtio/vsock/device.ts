/**
 * virtio-vsock (virtio 1.2 §5.10), stream sockets only: the guest reaches the
 * host at CID 2 and the host reaches the guest at the CID in config space.
 * Queues (§5.10.2): 0 rx (device → driver packets), 1 tx (driver → device
 * packets), 2 event (TRANSPORT_RESET). No feature bits are offered, so
 * VIRTIO_VSOCK_F_SEQPACKET is off and only VIRTIO_VSOCK_TYPE_STREAM exists.
 *
 * The host side is Web streams: {@link VirtioVsock.connect} opens a
 * connection to a guest listener, {@link VirtioVsock.listen} accepts the
 * guest's connections to a host port; both give {@link VsockStream}s with
 * credit-based flow control both ways (see connection.ts).
 *
 * Guest packets are copied out of the tx queue once (the 44-byte header into
 * a private buffer, the payload straight into the connection's receive
 * buffer once the header has been validated) and never read again from guest
 * memory. Nothing the guest sends makes the device throw, loop or allocate
 * without bound: malformed packets are answered with RST or dropped, and
 * counted in {@link VirtioVsock.counters}; RST replies to unknown
 * connections are bounded, and when they back up (the guest posts no receive
 * buffers) the device stops reading the tx queue until they drain.
 *
 * @module
 */

import { ChainReader, ChainWriter } from "../chain.ts";
import { DEVICE_ID, type DeviceContext, type VirtioDevice } from "../device.ts";
import type { DescriptorChain } from "../queue.ts";
import {
  Connection,
  type ConnectionHost,
  connectionKey,
  type OutgoingPacket,
  VsockError,
  type VsockStream,
} from "./connection.ts";
import { DEFAULT_BACKLOG, type VsockConnectionHandler, VsockListener } from "./listener.ts";
import {
  encodeHeader,
  EVENT_SIZE,
  EVENT_TRANSPORT_RESET,
  HEADER_SIZE,
  HOST_CID,
  MAX_PACKET_PAYLOAD,
  OP,
  parseHeader,
  VSOCK_TYPE,
  type VsockHeader,
} from "./packet.ts";
import { isGuestCid, parseVsockState, VSOCK_STATE_VERSION, type VsockState } from "./persist.ts";

/** §5.10.2 queue indices. */
export const VSOCK_QUEUE = { RX: 0, TX: 1, EVENT: 2 } as const;

/** QueueNumMax offered for each queue. */
const QUEUE_SIZE = 256;
/** `buf_alloc` per connection unless configured: Linux's default socket buffer (256 KiB). */
export const DEFAULT_BUFFER_SIZE = 256 * 1024;
/** Connections at once unless configured (bounds host memory to about this × buffer size). */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** RST replies to unknown connections held for rx buffers; at this many the tx queue waits. */
const MAX_REPLIES = 256;
/** Tx packets handled per turn before yielding to the event loop. */
const TX_BUDGET = 512;
/** Host ports for host-initiated connections start here (as Firecracker's, above common service ports). */
const EPHEMERAL_FIRST = 0x40000000;
/** Largest port number (u32; VMADDR_PORT_ANY = 2^32−1 is not a port). */
const PORT_MAX = 0xfffffffe;

/** Options of {@link VirtioVsock}. */
export interface VsockOptions {
  /** The guest's CID (3 … 2^32−2). */
  guestCid: number;
  /** Bytes the host buffers per connection for its reader (`buf_alloc`); default 256 KiB. */
  bufferSize?: number;
  /**
   * Connections at once (both directions, counting ended ones still waiting
   * in a listener's backlog for accept()); default 256.
   */
  maxConnections?: number;
  /** Diagnostics (a listener callback that threw, a device failure). */
  log?: (message: string) => void;
}

/** Options of {@link VirtioVsock.connect}. */
export interface VsockConnectOptions {
  /** Gives up (and resets the half-open connection) when aborted. */
  signal?: AbortSignal;
}

/** Options of {@link VirtioVsock.listen}. */
export interface VsockListenOptions {
  /** Unaccepted connections kept (without a callback); more are refused. Default 64. */
  backlog?: number;
}

/** What the device did with guest packets (all counts since construction). */
export interface VsockCounters {
  /** Packets read from the tx queue. */
  txPackets: number;
  /** Packets written into the rx queue. */
  rxPackets: number;
  /** Tx chains shorter than a header: dropped. */
  droppedShort: number;
  /** Packets whose source is not the guest's CID or whose destination is not the host: dropped. */
  droppedCid: number;
  /** Rx buffers too small for a header and a payload byte: returned empty. */
  droppedRxBuffers: number;
  /** RST replies dropped because too many were queued (cannot happen while tx waits). */
  droppedReplies: number;
  /** Packets of a type other than STREAM: answered with RST. */
  badType: number;
  /** RW packets whose `len` exceeds 64 KiB or the bytes present: answered with RST. */
  badLength: number;
  /** Unknown ops: answered with RST. */
  unknownOp: number;
  /** Ops that do not fit the connection's state (a second REQUEST, early data, …): RST. */
  protocolErrors: number;
  /** RW packets past the credit the host advertised: connection reset. */
  creditViolations: number;
  /** Guest REQUESTs refused (no listener, backlog full, too many connections). */
  refused: number;
  /** RSTs received from the guest. */
  rstReceived: number;
  /** TRANSPORT_RESET events delivered. */
  transportResets: number;
}

function zeroCounters(): VsockCounters {
  return {
    txPackets: 0,
    rxPackets: 0,
    droppedShort: 0,
    droppedCid: 0,
    droppedRxBuffers: 0,
    droppedReplies: 0,
    badType: 0,
    badLength: 0,
    unknownOp: 0,
    protocolErrors: 0,
    creditViolations: 0,
    refused: 0,
    rstReceived: 0,
    transportResets: 0,
  };
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 0 || port > PORT_MAX) {
    throw new RangeError(`vsock ${what} ${port} is not an integer in 0..${PORT_MAX}`);
  }
}

/** The virtio-vsock device. */
export class VirtioVsock implements VirtioDevice {
  readonly deviceType = DEVICE_ID.VSOCK;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  /** No feature bits: stream sockets only (§5.10.3). */
  readonly features = 0n;
  /** The guest's CID. */
  readonly guestCid: number;
  /** `buf_alloc` of every connection. */
  readonly bufferSize: number;
  /** Connections at once. */
  readonly maxConnections: number;
  /** What the device did with guest packets. */
  readonly counters: VsockCounters = zeroCounters();
  #ctx: DeviceContext | null = null;
  #onActive: (() => void)[] = [];
  #conns = new Map<string, Connection>();
  /**
   * Connections that ended while waiting in a listener's backlog: out of the
   * table (the guest may reuse the ports) but kept for accept() with their
   * unread bytes, so they still count against maxConnections (host memory).
   */
  #unaccepted = new Set<Connection>();
  #listeners = new Map<number, VsockListener>();
  /** Connections with packets for the guest, served round-robin. */
  #schedule: Connection[] = [];
  /** RST replies to packets of unknown connections. */
  #replies: VsockHeader[] = [];
  #eventPending = false;
  #txThrottled = false;
  #nextPort = EPHEMERAL_FIRST;
  #pumping = false;
  #again = false;
  #deferred: ReturnType<typeof setTimeout> | null = null;
  #log: (m: string) => void;
  #host: ConnectionHost;

  constructor(opts: VsockOptions) {
    if (!isGuestCid(opts.guestCid)) {
      throw new RangeError(`vsock guest CID ${opts.guestCid} is not in 3..${PORT_MAX}`);
    }
    const size = opts.bufferSize ?? DEFAULT_BUFFER_SIZE;
    if (!Number.isInteger(size) || size < 4096 || size > 64 << 20) {
      throw new RangeError(`vsock buffer size ${size} is not in 4 KiB..64 MiB`);
    }
    const max = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (!Number.isInteger(max) || max < 1 || max > 65536) {
      throw new RangeError(`vsock connection limit ${max} is not in 1..65536`);
    }
    this.guestCid = opts.guestCid;
    this.bufferSize = size;
    this.maxConnections = max;
    this.#log = opts.log ?? (() => {});
    this.#host = {
      guestCid: this.guestCid,
      bufferSize: this.bufferSize,
      schedule: (c) => this.#scheduleConn(c),
      release: (c) => this.#release(c),
    };
  }

  /** Whether the driver has set the device up (connections are possible). */
  get active(): boolean {
    return this.#ctx !== null;
  }

  /**
   * Resolves once the driver has set the device up (at once when it has):
   * the moment a host can connect to the guest. Callers race it with their
   * own deadline and abort signal.
   */
  whenActive(): Promise<void> {
    if (this.#ctx) return Promise.resolve();
    return new Promise((resolve) => this.#onActive.push(resolve));
  }

  /** Open connections (including half-open ones). */
  get connectionCount(): number {
    return this.#conns.size;
  }

  // ---- host API ----------------------------------------------------------

  /**
   * Connects to `guestPort` in the guest. Resolves once the guest accepted
   * (RESPONSE); rejects with {@link VsockError} `refused` when it answers RST
   * (nothing listens there), `not-active` when the driver is not running,
   * `device-reset` when the device resets meanwhile, or the signal's reason.
   */
  connect(guestPort: number, opts: VsockConnectOptions = {}): Promise<VsockStream> {
    try {
      checkPort(guestPort, "guest port");
      if (!this.#ctx) {
        throw new VsockError(
          "not-active",
          `vsock connect to guest port ${guestPort}: the guest driver has not started the device`,
        );
      }
      if (this.#conns.size + this.#unaccepted.size >= this.maxConnections) {
        throw new VsockError(
          "limit",
          `vsock connect to guest port ${guestPort}: ${this.maxConnections} connections are open`,
        );
      }
      opts.signal?.throwIfAborted();
    } catch (e) {
      return Promise.reject(e);
    }
    const conn = new Connection(this.#host, this.#ephemeralPort(guestPort), guestPort, "host");
    const connected = conn.whenConnected();
    this.#conns.set(conn.key, conn);
    const signal = opts.signal;
    if (signal) {
      const onAbort = () => conn.abort(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      conn.closed.then(() => signal.removeEventListener("abort", onAbort));
      connected.then(() => signal.removeEventListener("abort", onAbort), () => {});
    }
    this.#scheduleConn(conn);
    return connected;
  }

  /**
   * Accepts guest connections to `hostPort`: each goes to `onConnection`, or
   * (without it) waits in a backlog for `accept()` / `for await`. Listeners
   * survive device resets and are not part of the saved state (re-register
   * them after a restore). Throws RangeError when the port is taken.
   */
  listen(
    hostPort: number,
    onConnection?: VsockConnectionHandler,
    opts: VsockListenOptions = {},
  ): VsockListener {
    checkPort(hostPort, "host port");
    if (this.#listeners.has(hostPort)) {
      throw new RangeError(`vsock host port ${hostPort} already has a listener`);
    }
    const backlog = opts.backlog ?? DEFAULT_BACKLOG;
    if (!Number.isInteger(backlog) || backlog < 1 || backlog > 4096) {
      throw new RangeError(`vsock backlog ${backlog} is not in 1..4096`);
    }
    const l = new VsockListener(hostPort, onConnection ?? null, backlog, (gone) => {
      if (this.#listeners.get(gone.port) === gone) this.#listeners.delete(gone.port);
    }, (taken) => this.#unaccepted.delete(taken));
    this.#listeners.set(hostPort, l);
    return l;
  }

  /**
   * Drops every connection and tells the guest so with
   * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.4): the guest resets its
   * connected sockets and keeps its listeners. Used after a restore.
   */
  transportReset(): void {
    this.#dropConnections();
    this.#eventPending = true;
    this.#pump();
  }

  // ---- VirtioDevice --------------------------------------------------------

  readConfig(offset: number, data: Uint8Array): void {
    // §5.10.4: le64 guest_cid (upper 32 bits reserved and zero).
    const cfg = new Uint8Array(8);
    new DataView(cfg.buffer).setBigUint64(0, BigInt(this.guestCid), true);
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  writeConfig(): void {
    // §5.10.4: the config space is read-only for the driver.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#pump();
    for (const resolve of this.#onActive.splice(0)) resolve();
  }

  reset(): void {
    this.#ctx = null;
    if (this.#deferred !== null) clearTimeout(this.#deferred);
    this.#deferred = null;
    this.#dropConnections();
    this.#eventPending = false;
  }

  queueNotify(_index: number): void {
    // Every queue's work depends on the others' (tx replies need rx buffers,
    // throttled tx resumes when rx drains), so any notification runs it all.
    this.#pump();
  }

  save(): VsockState {
    return { version: VSOCK_STATE_VERSION, guestCid: this.guestCid };
  }

  /**
   * Restores {@link save}'s state: connections are not carried over, so the
   * guest gets TRANSPORT_RESET as soon as the device is active again.
   */
  restore(state: unknown): void {
    const s = parseVsockState(state);
    if (s.guestCid !== this.guestCid) {
      throw new RangeError(
        `vsock state is for guest CID ${s.guestCid}, device has ${this.guestCid}`,
      );
    }
    this.transportReset();
  }

  // ---- the queues ----------------------------------------------------------

  #pump(): void {
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = true;
    try {
      do {
        this.#again = false;
        const ctx = this.#ctx;
        if (!ctx) break;
        try {
          if (!this.#txThrottled) this.#serveTx(ctx);
          this.#flushRx(ctx);
          this.#flushEvents(ctx);
        } catch (e) {
          // A broken ring (VirtqueueError) or unmapped memory: the transport
          // sets DEVICE_NEEDS_RESET, which resets this device.
          this.#log(`vsock: ${(e as Error).message}`);
          ctx.fail(e);
          break;
        }
        if (this.#txThrottled && this.#replies.length < MAX_REPLIES / 2) {
          this.#txThrottled = false;
          this.#again = true;
        }
      } while (this.#again);
    } finally {
      this.#pumping = false;
    }
  }

  /** Guest → host packets. */
  #serveTx(ctx: DeviceContext): void {
    const q = ctx.queues[VSOCK_QUEUE.TX];
    if (!q?.ready) return;
    let any = false;
    for (let n = 0;; n++) {
      if (this.#replies.length >= MAX_REPLIES) {
        this.#txThrottled = true;
        break;
      }
      if (n >= TX_BUDGET) {
        this.#deferred ??= setTimeout(() => {
          this.#deferred = null;
          this.#pump();
        }, 0);
        break;
      }
      const chain = q.pop(ctx.mem);
      if (!chain) {
        // Re-arm notifications (EVENT_IDX: avail_event), then look once more.
        if (q.setNotification(ctx.mem, true)) continue;
        break;
      }
      this.#handlePacket(ctx, chain);
      q.addUsed(ctx.mem, chain.head, 0);
      any = true;
    }
    if (any) ctx.signalUsed(VSOCK_QUEUE.TX);
  }

  #handlePacket(ctx: DeviceContext, chain: DescriptorChain): void {
    this.counters.txPackets++;
    const r = new ChainReader(ctx.mem, chain);
    if (r.remaining < HEADER_SIZE) {
      this.counters.droppedShort++;
      return;
    }
    // The header is parsed from this private copy only.
    const h = parseHeader(r.readExact(HEADER_SIZE));
    if (h.srcCid !== this.guestCid || h.dstCid !== HOST_CID) {
      this.counters.droppedCid++;
      return;
    }
    const conn = this.#conns.get(connectionKey(h.dstPort, h.srcPort));
    if (h.type !== VSOCK_TYPE.STREAM) {
      this.counters.badType++;
      this.#protocolError(h, conn, `packet type ${h.type} is not STREAM`);
      return;
    }
    if (h.op === OP.RW && (h.len > MAX_PACKET_PAYLOAD || h.len > r.remaining)) {
      this.counters.badLength++;
      this.#protocolError(
        h,
        conn,
        `RW length ${h.len} exceeds ${Math.min(MAX_PACKET_PAYLOAD, r.remaining)} bytes`,
      );
      return;
    }
    if (!conn) {
      if (h.op === OP.REQUEST) this.#accept(h);
      else if (h.op === OP.RST) this.counters.rstReceived++;
      else this.#replyRst(h);
      return;
    }
    this.#onPacket(conn, h, r);
  }

  #onPacket(conn: Connection, h: VsockHeader, r: ChainReader): void {
    if (h.op !== OP.RST) conn.onPeerCredit(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case OP.REQUEST:
        this.counters.protocolErrors++;
        conn.protocolReset("a second REQUEST for an open connection");
        return;
      case OP.RESPONSE:
        if (!conn.onResponse()) {
          this.counters.protocolErrors++;
          conn.protocolReset("RESPONSE on an established connection");
        }
        return;
      case OP.RST:
        this.counters.rstReceived++;
        conn.onPeerReset();
        return;
      case OP.SHUTDOWN:
        if (conn.connecting) {
          this.counters.protocolErrors++;
          conn.protocolReset("SHUTDOWN before RESPONSE");
          return;
        }
        conn.onPeerShutdown(h.flags);
        return;
      case OP.RW: {
        if (conn.connecting) {
          this.counters.protocolErrors++;
          conn.protocolReset("data before RESPONSE");
          return;
        }
        if (h.len === 0) return;
        if (!conn.canAccept(h.len)) {
          // §5.10.6.3: "VIRTIO_VSOCK_OP_RW data packets MUST only be transmitted
          // when the peer has sufficient free buffer space for the payload".
          this.counters.creditViolations++;
          conn.protocolReset(`the guest sent ${h.len} bytes past the credit it was given`);
          return;
        }
        const dest = conn.receiveInto(h.len);
        if (dest) r.readInto(dest);
        return;
      }
      case OP.CREDIT_UPDATE:
        return; // the credit fields were taken above
      case OP.CREDIT_REQUEST:
        conn.onCreditRequest();
        return;
      default:
        this.counters.unknownOp++;
        conn.protocolReset(`unknown op ${h.op}`);
    }
  }

  /** A guest REQUEST for a host port: a new connection if someone listens. */
  #accept(h: VsockHeader): void {
    const l = this.#listeners.get(h.dstPort);
    if (!l || this.#conns.size + this.#unaccepted.size >= this.maxConnections) {
      this.counters.refused++;
      this.#replyRst(h);
      return;
    }
    const conn = new Connection(this.#host, h.dstPort, h.srcPort, "guest", {
      bufAlloc: h.bufAlloc,
      fwdCnt: h.fwdCnt,
    });
    this.#conns.set(conn.key, conn);
    let taken = false;
    try {
      taken = l.offer(conn);
    } catch (e) {
      this.#log(`vsock listener on host port ${h.dstPort} threw: ${(e as Error).message}`);
      conn.close();
      return;
    }
    if (!taken) {
      this.#conns.delete(conn.key);
      this.counters.refused++;
      this.#replyRst(h);
      return;
    }
    this.#scheduleConn(conn); // RESPONSE
  }

  #protocolError(h: VsockHeader, conn: Connection | undefined, why: string): void {
    if (conn) conn.protocolReset(why);
    else this.#replyRst(h);
  }

  /** RST to the sender of `h` (never in answer to an RST). */
  #replyRst(h: VsockHeader): void {
    if (h.op === OP.RST) return;
    if (this.#replies.length >= MAX_REPLIES + TX_BUDGET) {
      this.counters.droppedReplies++;
      return;
    }
    this.#replies.push({
      srcCid: HOST_CID,
      dstCid: this.guestCid,
      srcPort: h.dstPort,
      dstPort: h.srcPort,
      len: 0,
      type: h.type,
      op: OP.RST,
      flags: 0,
      bufAlloc: 0,
      fwdCnt: 0,
    });
  }

  /** Host → guest packets into the guest's receive buffers. */
  #flushRx(ctx: DeviceContext): void {
    const q = ctx.queues[VSOCK_QUEUE.RX];
    if (!q?.ready) return;
    let any = false;
    while (this.#replies.length > 0 || this.#schedule.length > 0) {
      const chain = q.pop(ctx.mem);
      if (!chain) {
        // Out of buffers with packets waiting: ask for a kick when more arrive.
        if (q.setNotification(ctx.mem, true)) continue;
        break;
      }
      if (chain.writableLength <= HEADER_SIZE) {
        // Linux posts 4 KiB buffers; one without room for a payload byte is useless.
        this.counters.droppedRxBuffers++;
        q.addUsed(ctx.mem, chain.head, 0);
        any = true;
        continue;
      }
      const pkt = this.#nextPacket(chain.writableLength - HEADER_SIZE);
      if (!pkt) {
        q.undoPop();
        break;
      }
      const w = new ChainWriter(ctx.mem, chain);
      w.write(encodeHeader(pkt.header));
      if (pkt.payload) w.write(pkt.payload);
      q.addUsed(ctx.mem, chain.head, w.written);
      this.counters.rxPackets++;
      any = true;
    }
    if (any) ctx.signalUsed(VSOCK_QUEUE.RX);
  }

  /** The next packet for the guest: RST replies first, then connections round-robin. */
  #nextPacket(room: number): OutgoingPacket | null {
    const reply = this.#replies.shift();
    if (reply) return { header: reply, payload: null };
    // Each connection is looked at most once per call (a bound even if its
    // hasWork and nextPacket ever disagreed).
    for (let n = this.#schedule.length; n > 0; n--) {
      const conn = this.#schedule.shift()!;
      conn.queued = false;
      const p = conn.hasWork ? conn.nextPacket(room) : null;
      if (conn.hasWork && !conn.queued) {
        conn.queued = true;
        this.#schedule.push(conn);
      }
      if (p) return p;
    }
    return null;
  }

  #flushEvents(ctx: DeviceContext): void {
    if (!this.#eventPending) return;
    const q = ctx.queues[VSOCK_QUEUE.EVENT];
    // Under vhost-user QEMU keeps the event queue (and sends the reset itself after a migration).
    if (!q?.ready) return;
    let any = false;
    for (;;) {
      const chain = q.pop(ctx.mem);
      if (!chain) {
        if (q.setNotification(ctx.mem, true)) continue;
        break;
      }
      const w = new ChainWriter(ctx.mem, chain);
      any = true;
      if (w.remaining < EVENT_SIZE) {
        q.addUsed(ctx.mem, chain.head, 0);
        continue;
      }
      const ev = new Uint8Array(EVENT_SIZE);
      new DataView(ev.buffer).setUint32(0, EVENT_TRANSPORT_RESET, true);
      w.write(ev);
      q.addUsed(ctx.mem, chain.head, w.written);
      this.#eventPending = false;
      this.counters.transportResets++;
      break;
    }
    if (any) ctx.signalUsed(VSOCK_QUEUE.EVENT);
  }

  // ---- connection table ------------------------------------------------------

  #scheduleConn(conn: Connection): void {
    if (!conn.queued) {
      conn.queued = true;
      this.#schedule.push(conn);
    }
    this.#pump();
  }

  #release(conn: Connection): void {
    if (this.#conns.get(conn.key) === conn) this.#conns.delete(conn.key);
    // Not forgotten by its listener: the host's accept() may not have run yet
    // and must still get it (see listener.ts).
    if (this.#listeners.get(conn.localPort)?.holds(conn)) this.#unaccepted.add(conn);
  }

  #dropConnections(): void {
    const all = [...this.#conns.values()];
    this.#conns.clear();
    this.#schedule = [];
    this.#replies = [];
    this.#txThrottled = false;
    for (const c of all) {
      c.queued = false;
      c.deviceReset();
    }
    // A reset may queue nothing: the guest forgets its side too.
    this.#schedule = [];
  }

  #ephemeralPort(guestPort: number): number {
    for (;;) {
      const p = this.#nextPort;
      this.#nextPort = p >= PORT_MAX ? EPHEMERAL_FIRST : p + 1;
      // At most maxConnections ports are taken, so this ends quickly.
      if (!this.#listeners.has(p) && !this.#conns.has(connectionKey(p, guestPort))) return p;
    }
  }
}
