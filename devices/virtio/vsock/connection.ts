/**
 * One vsock stream connection between a host port and a guest port: its
 * state (virtio 1.2 §5.10.6.6 connect / shutdown / reset), credit-based flow
 * control in both directions (§5.10.6.3), and the host's end as a pair of Web
 * streams ({@link VsockStream}).
 *
 * Flow control, host → guest: a write is held (not copied) until the bytes
 * have been placed into guest receive buffers; only `peer_buf_alloc −
 * (tx_cnt − peer_fwd_cnt)` bytes are ever sent, so a guest that does not read
 * stops the host's writer. Guest → host: the guest may send at most
 * {@link ConnectionHost.bufferSize} bytes beyond what the host's reader has
 * taken (`buf_alloc`/`fwd_cnt` in every header); the readable is pull-based,
 * so `fwd_cnt` only moves when the host reads. A guest that sends past its
 * credit is reset. Either way memory stays bounded whatever the two ends do.
 *
 * @module
 */

import {
  HOST_CID,
  MAX_PACKET_PAYLOAD,
  OP,
  SHUTDOWN,
  SHUTDOWN_BOTH,
  VSOCK_TYPE,
  type VsockHeader,
} from "./packet.ts";

/** What went wrong with a vsock connection. */
export type VsockErrorCode =
  /** The guest answered the connection request with RST (nothing listens on the port). */
  | "refused"
  /** The guest reset an established connection. */
  | "reset"
  /** The guest broke the protocol (sent past its credit, a second REQUEST, …); skiff reset it. */
  | "protocol"
  /** The guest shut down its receive side: host writes fail (EPIPE). */
  | "epipe"
  /** The host closed or aborted the connection itself. */
  | "closed"
  /** The device was reset (guest driver reset, transport reset, restore, vhost-user stop). */
  | "device-reset"
  /** The device is not running (the guest driver has not set it up). */
  | "not-active"
  /** A limit was reached (connections, ports). */
  | "limit";

/** A vsock failure, with a machine-readable {@link VsockErrorCode}. */
export class VsockError extends Error {
  /** What went wrong. */
  readonly code: VsockErrorCode;
  constructor(code: VsockErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "VsockError";
    this.code = code;
  }
}

/** Why a connection ended (the value {@link VsockStream.closed} resolves to). */
export type VsockCloseReason =
  /** Both sides shut down cleanly (SHUTDOWN, then RST). */
  | "closed"
  /** The guest reset the connection, or broke the protocol and was reset. */
  | "reset"
  /** The host called close() or abort(). */
  | "local"
  /** The device was reset. */
  | "device-reset";

/** Flow-control counters of one connection (diagnostics and tests). */
export interface VsockStreamStats {
  /** Guest → host bytes held for the host's reader. */
  buffered: number;
  /** Host → guest bytes of the current write not yet delivered. */
  pendingWrite: number;
  /** Bytes the guest can still accept (its credit as last advertised). */
  peerCredit: number;
  /**
   * Bytes the guest may still send as it sees it (our `buf_alloc` minus what it
   * sent since our last advertised `fwd_cnt`): 0 means a slow host reader has
   * stopped the guest's writer.
   */
  guestCredit: number;
  /** Total guest → host bytes received. */
  received: number;
  /** Total host → guest bytes delivered. */
  sent: number;
}

/** The host's end of a vsock stream connection. */
export interface VsockStream extends AsyncDisposable {
  /** Host port (the listener's port, or an ephemeral port for `connect`). */
  readonly localPort: number;
  /** Guest port. */
  readonly peerPort: number;
  /** Guest → host bytes; pull-based, so an idle reader stops the guest's writer. */
  readonly readable: ReadableStream<Uint8Array>;
  /**
   * Host → guest bytes. A write resolves once its bytes are in guest receive
   * buffers (as the guest's credit allows); the chunk must not be modified
   * until then. Closing it is {@link closeWrite}; aborting it resets.
   */
  readonly writable: WritableStream<Uint8Array>;
  /** Resolves when the connection has ended, with why; never rejects. */
  readonly closed: Promise<VsockCloseReason>;
  /** Flow-control counters. */
  readonly stats: VsockStreamStats;
  /**
   * Half-close: after the pending write is delivered, sends SHUTDOWN(SEND) —
   * the guest reads EOF. Resolves once the SHUTDOWN was handed to the guest.
   */
  closeWrite(): Promise<void>;
  /** Resets the connection (RST): the guest's writes then fail (EPIPE), unread data is dropped. */
  close(): void;
  /** Like {@link close}, and both streams error with `reason`. */
  abort(reason?: unknown): void;
}

/** What a {@link Connection} needs from its device. */
export interface ConnectionHost {
  /** The guest's CID. */
  readonly guestCid: number;
  /** `buf_alloc` advertised for every connection (bytes). */
  readonly bufferSize: number;
  /** The connection has packets to send: queue it for the rx queue. */
  schedule(conn: Connection): void;
  /** The connection ended: drop it from the connection table. */
  release(conn: Connection): void;
}

/** Payloads smaller than this are gathered into shared blocks (bounds per-chunk overhead). */
const SMALL_PAYLOAD = 1024;
/** Size of a block small payloads are gathered into. */
const BLOCK_SIZE = 4096;

/** A packet a connection wants to send, minus the addressing the device adds. */
export interface OutgoingPacket {
  header: VsockHeader;
  payload: Uint8Array | null;
}

type State = "connecting" | "established" | "done";

interface PendingWrite {
  bytes: Uint8Array;
  off: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * A connection's protocol state and host streams. The device owns it; the
 * host sees it as a {@link VsockStream}.
 */
export class Connection implements VsockStream {
  readonly localPort: number;
  readonly peerPort: number;
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly closed: Promise<VsockCloseReason>;
  /** In the device's rx schedule (set by the device). */
  queued = false;
  #host: ConnectionHost;
  #state: State;
  #closedResolve!: (r: VsockCloseReason) => void;
  #connect: { resolve: (s: VsockStream) => void; reject: (e: unknown) => void } | null = null;

  // Control packets waiting for an rx buffer.
  #needRequest = false;
  #needResponse = false;
  #needRst = false;
  #needCreditUpdate = false;
  #creditRequested = false;
  /** SHUTDOWN flags the host asked for and has not sent yet. */
  #wantShutdown = 0;
  /** SHUTDOWN flags already sent. */
  #sentShutdown = 0;
  /** closeWrite()/cancel callers waiting for their SHUTDOWN to be sent. */
  #shutdownWaiters: { flags: number; resolve: () => void; reject: (e: unknown) => void }[] = [];

  // Host → guest.
  #tx: PendingWrite | null = null;
  #txCnt = 0;
  #sent = 0;
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  #peerShutdown = 0;
  #writeError: unknown = null;
  #writeController: WritableStreamDefaultController | null = null;
  #closeWriteCall: Promise<void> | null = null;

  // Guest → host.
  #rx: { buf: Uint8Array; start: number; end: number; block: boolean }[] = [];
  #rxBytes = 0;
  #rxCnt = 0;
  #received = 0;
  #fwdCnt = 0;
  #lastFwdSent = 0;
  #readCancelled = false;
  #readError: unknown = null;
  #readEnded = false;
  #wake: (() => void) | null = null;

  constructor(
    host: ConnectionHost,
    localPort: number,
    peerPort: number,
    initiator: "host" | "guest",
    peer?: { bufAlloc: number; fwdCnt: number },
  ) {
    this.#host = host;
    this.localPort = localPort;
    this.peerPort = peerPort;
    this.closed = new Promise((r) => this.#closedResolve = r);
    if (initiator === "host") {
      this.#state = "connecting";
      this.#needRequest = true;
    } else {
      this.#state = "established";
      this.#needResponse = true;
      if (peer) this.onPeerCredit(peer.bufAlloc, peer.fwdCnt);
    }
    this.readable = new ReadableStream<Uint8Array>({
      pull: (c) => this.#pull(c),
      cancel: () => this.#cancelRead(),
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>({
      start: (c) => {
        this.#writeController = c;
      },
      write: (chunk) => this.#write(chunk),
      close: () => this.#closeWrite(),
      abort: (reason) => this.abort(reason),
    });
  }

  /** `${localPort}:${peerPort}`: the device's table key. */
  get key(): string {
    return connectionKey(this.localPort, this.peerPort);
  }

  /** True once the connection has ended (nothing more is sent or received). */
  get done(): boolean {
    return this.#state === "done";
  }

  /** True while waiting for the guest's RESPONSE to a host REQUEST. */
  get connecting(): boolean {
    return this.#state === "connecting";
  }

  get stats(): VsockStreamStats {
    return {
      buffered: this.#rxBytes,
      pendingWrite: this.#tx ? this.#tx.bytes.length - this.#tx.off : 0,
      peerCredit: this.#peerCredit(),
      guestCredit: this.#host.bufferSize - ((this.#rxCnt - this.#lastFwdSent) >>> 0),
      received: this.#received,
      sent: this.#sent,
    };
  }

  /** Host-initiated: resolves when the guest answers RESPONSE, rejects on RST. */
  whenConnected(): Promise<VsockStream> {
    return new Promise((resolve, reject) => {
      this.#connect = { resolve, reject };
    });
  }

  // ---- host API ------------------------------------------------------------

  closeWrite(): Promise<void> {
    // Once: later calls share the first one's outcome.
    this.#closeWriteCall ??= this.writable.locked ? this.#closeWrite() : this.writable.close();
    return this.#closeWriteCall;
  }

  close(): void {
    this.#reset("local", new VsockError("closed", this.#what("closed by the host")), false);
  }

  abort(reason?: unknown): void {
    this.#reset("local", reason ?? new VsockError("closed", this.#what("aborted")), true);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closed;
  }

  // ---- events from the device ---------------------------------------------

  /** Credit information from any packet of this connection. */
  onPeerCredit(bufAlloc: number, fwdCnt: number): void {
    const before = this.#peerCredit();
    this.#peerBufAlloc = bufAlloc >>> 0;
    this.#peerFwdCnt = fwdCnt >>> 0;
    if (this.#peerCredit() > before) this.#creditRequested = false;
    if (this.#tx && this.#peerCredit() > 0) this.#host.schedule(this);
  }

  /** RESPONSE to our REQUEST. Returns false when it was unexpected (a protocol error). */
  onResponse(): boolean {
    if (this.#state !== "connecting") return false;
    this.#state = "established";
    const c = this.#connect;
    this.#connect = null;
    c?.resolve(this);
    this.#host.schedule(this);
    return true;
  }

  /**
   * How many payload bytes of an RW packet would be accepted: false when the
   * guest has no credit for `len` bytes (then it must be reset).
   */
  canAccept(len: number): boolean {
    return this.#readCancelled || this.#rxBytes + len <= this.#host.bufferSize;
  }

  /**
   * Where an RW payload of `len` bytes goes: the device copies the guest's
   * bytes straight into the returned view (one copy). Null when the host no
   * longer reads (the bytes are dropped but counted as forwarded).
   */
  receiveInto(len: number): Uint8Array | null {
    this.#rxCnt = (this.#rxCnt + len) >>> 0;
    this.#received += len;
    if (this.#readCancelled || this.#readEnded) {
      this.#fwdCnt = (this.#fwdCnt + len) >>> 0;
      return null;
    }
    let view: Uint8Array;
    const last = this.#rx[this.#rx.length - 1];
    if (len < SMALL_PAYLOAD && last?.block && last.buf.length - last.end >= len) {
      view = last.buf.subarray(last.end, last.end + len);
      last.end += len;
    } else if (len < SMALL_PAYLOAD) {
      const buf = new Uint8Array(BLOCK_SIZE);
      this.#rx.push({ buf, start: 0, end: len, block: true });
      view = buf.subarray(0, len);
    } else {
      const buf = new Uint8Array(len);
      this.#rx.push({ buf, start: 0, end: len, block: false });
      view = buf;
    }
    this.#rxBytes += len;
    this.#wakeReader();
    return view;
  }

  /** SHUTDOWN from the guest with these flags (cumulative). */
  onPeerShutdown(flags: number): void {
    const added = flags & SHUTDOWN_BOTH & ~this.#peerShutdown;
    this.#peerShutdown |= flags & SHUTDOWN_BOTH;
    if (added & SHUTDOWN.SEND) {
      this.#readEnded = true;
      this.#wakeReader();
    }
    if (added & SHUTDOWN.RCV) {
      this.#failWrites(
        new VsockError("epipe", this.#what("the guest shut down its receive side")),
      );
    }
    this.#maybeFinish();
  }

  /** CREDIT_REQUEST from the guest: answer with our credit. */
  onCreditRequest(): void {
    this.#needCreditUpdate = true;
    this.#host.schedule(this);
  }

  /** RST from the guest. */
  onPeerReset(): void {
    if (this.#state === "connecting") {
      this.#end(
        "reset",
        new VsockError(
          "refused",
          `vsock connect to guest port ${this.peerPort}: refused by the guest (RST; nothing listens there)`,
        ),
      );
      return;
    }
    const clean = (this.#peerShutdown & SHUTDOWN.SEND) !== 0;
    this.#end(
      clean ? "closed" : "reset",
      new VsockError("reset", this.#what("reset by the guest")),
      clean,
    );
  }

  /** The guest broke the protocol: reset (RST) with this error. */
  protocolReset(why: string): void {
    this.#reset("reset", new VsockError("protocol", this.#what(why)), true);
  }

  /** The device went away (reset, transport reset): end without sending anything. */
  deviceReset(): void {
    this.#end("device-reset", new VsockError("device-reset", this.#what("the device was reset")));
  }

  // ---- packets to the guest -----------------------------------------------

  /** Whether {@link nextPacket} would produce something now (mirrors its choices). */
  get hasWork(): boolean {
    if (this.#needRst) return true;
    if (this.#state === "done") return false;
    if (this.#needRequest || this.#needResponse) return true;
    if (this.#state !== "established") return false;
    return (this.#tx !== null && (this.#peerCredit() > 0 || !this.#creditRequested)) ||
      this.#shutdownFlags() !== 0 || this.#needCreditUpdate;
  }

  /**
   * The next packet for the guest with at most `room` payload bytes, or null.
   * Commits it: the caller must hand it to the guest.
   */
  nextPacket(room: number): OutgoingPacket | null {
    if (this.#needRst) {
      this.#needRst = false;
      const p = this.#packet(OP.RST, 0);
      this.#host.release(this);
      return p;
    }
    if (this.#state === "done") return null;
    if (this.#needRequest) {
      this.#needRequest = false;
      return this.#packet(OP.REQUEST, 0);
    }
    if (this.#needResponse) {
      this.#needResponse = false;
      return this.#packet(OP.RESPONSE, 0);
    }
    if (this.#state !== "established") return null;
    const tx = this.#tx;
    const credit = this.#peerCredit();
    if (tx && credit > 0 && room > 0) {
      const n = Math.min(tx.bytes.length - tx.off, credit, room, MAX_PACKET_PAYLOAD);
      const payload = tx.bytes.subarray(tx.off, tx.off + n);
      tx.off += n;
      this.#txCnt = (this.#txCnt + n) >>> 0;
      this.#sent += n;
      const p = this.#packet(OP.RW, 0, payload);
      if (tx.off === tx.bytes.length) {
        this.#tx = null;
        tx.resolve();
      }
      return p;
    }
    const flags = this.#shutdownFlags();
    if (flags !== 0) {
      this.#sentShutdown |= flags;
      this.#wantShutdown &= ~flags;
      // Flags are cumulative on the wire: the receiver ORs them into its state.
      const p = this.#packet(OP.SHUTDOWN, this.#sentShutdown);
      const sent = this.#sentShutdown;
      this.#shutdownWaiters = this.#shutdownWaiters.filter((w) => {
        if ((w.flags & sent) !== w.flags) return true;
        w.resolve();
        return false;
      });
      this.#maybeFinish();
      return p;
    }
    if (this.#needCreditUpdate) return this.#packet(OP.CREDIT_UPDATE, 0);
    if (tx && credit === 0 && !this.#creditRequested) {
      // §5.10.6.3: ask once; the guest's next header (or its CREDIT_UPDATE) carries new credit.
      this.#creditRequested = true;
      return this.#packet(OP.CREDIT_REQUEST, 0);
    }
    return null;
  }

  #packet(op: number, flags: number, payload: Uint8Array | null = null): OutgoingPacket {
    // Every header carries our receive credit (§5.10.6.3), so any packet is a credit update.
    this.#lastFwdSent = this.#fwdCnt;
    this.#needCreditUpdate = false;
    return {
      header: {
        srcCid: HOST_CID,
        dstCid: this.#host.guestCid,
        srcPort: this.localPort,
        dstPort: this.peerPort,
        len: payload?.length ?? 0,
        type: VSOCK_TYPE.STREAM,
        op,
        flags,
        bufAlloc: this.#host.bufferSize,
        fwdCnt: this.#fwdCnt,
      },
      payload,
    };
  }

  #peerCredit(): number {
    const inFlight = (this.#txCnt - this.#peerFwdCnt) >>> 0;
    // A guest claiming to have forwarded more than was sent lies: no credit.
    return inFlight > this.#peerBufAlloc ? 0 : this.#peerBufAlloc - inFlight;
  }

  /** SHUTDOWN flags that can go now: RCV at once, SEND only after the pending write. */
  #shutdownFlags(): number {
    return this.#wantShutdown & (this.#tx === null ? SHUTDOWN_BOTH : SHUTDOWN.RCV);
  }

  // ---- readable side ---------------------------------------------------------

  async #pull(c: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    for (;;) {
      const chunk = this.#takeChunk();
      if (chunk) {
        this.#rxBytes -= chunk.length;
        this.#consumed(chunk.length);
        c.enqueue(chunk);
        return;
      }
      if (this.#readError !== null) {
        c.error(this.#readError);
        return;
      }
      if (this.#readEnded) {
        c.close();
        return;
      }
      await new Promise<void>((r) => this.#wake = r);
    }
  }

  /** The oldest unread bytes, or null when there are none. */
  #takeChunk(): Uint8Array | null {
    while (this.#rx.length > 0) {
      const head = this.#rx[0];
      const last = this.#rx.length === 1;
      if (head.start === head.end) {
        // The open block (last, with room) stays: later small payloads go after `end`.
        if (last && head.block && head.end < head.buf.length) return null;
        this.#rx.shift();
        continue;
      }
      const chunk = head.buf.subarray(head.start, head.end);
      head.start = head.end;
      if (!head.block || !last || head.end === head.buf.length) this.#rx.shift();
      return chunk;
    }
    return null;
  }

  #wakeReader(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** The host's reader took `n` bytes: move fwd_cnt, and tell the guest when its view runs low. */
  #consumed(n: number): void {
    this.#fwdCnt = (this.#fwdCnt + n) >>> 0;
    if (this.#state !== "established") return;
    // The guest's view of our free space: buf_alloc − (rx_cnt − fwd_cnt as last sent).
    // Like Linux (virtio_transport_stream_do_dequeue), update only when it runs
    // low, so a steady stream does not double its packet count.
    const seen = this.#host.bufferSize - ((this.#rxCnt - this.#lastFwdSent) >>> 0);
    if (seen < Math.min(MAX_PACKET_PAYLOAD, this.#host.bufferSize >> 1)) {
      this.#needCreditUpdate = true;
      this.#host.schedule(this);
    }
  }

  #cancelRead(): void {
    if (this.#readCancelled) return;
    this.#readCancelled = true;
    const dropped = this.#rxBytes;
    this.#rx = [];
    this.#rxBytes = 0;
    this.#fwdCnt = (this.#fwdCnt + dropped) >>> 0;
    if (this.#state === "done") return;
    // SHUTDOWN(RCV): the guest's further writes fail with EPIPE.
    this.#requestShutdown(SHUTDOWN.RCV).catch(() => {});
  }

  // ---- writable side ---------------------------------------------------------

  #write(chunk: Uint8Array): Promise<void> {
    if (!(chunk instanceof Uint8Array)) {
      return Promise.reject(new TypeError(`vsock write takes a Uint8Array, got ${typeof chunk}`));
    }
    if (this.#writeError !== null) return Promise.reject(this.#writeError);
    if ((this.#wantShutdown | this.#sentShutdown) & SHUTDOWN.SEND) {
      return Promise.reject(new VsockError("closed", this.#what("write after closeWrite")));
    }
    if (chunk.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#tx = { bytes: chunk, off: 0, resolve, reject };
      if (this.#state === "established") this.#host.schedule(this);
    });
  }

  #closeWrite(): Promise<void> {
    if (this.#writeError !== null) return Promise.reject(this.#writeError);
    return this.#requestShutdown(SHUTDOWN.SEND);
  }

  #requestShutdown(flag: number): Promise<void> {
    if (this.#sentShutdown & flag) return Promise.resolve();
    if (this.#state === "done") {
      return Promise.reject(new VsockError("closed", this.#what("connection has ended")));
    }
    this.#wantShutdown |= flag;
    const done = new Promise<void>((resolve, reject) => {
      this.#shutdownWaiters.push({ flags: flag, resolve, reject });
    });
    if (this.#state === "established") this.#host.schedule(this);
    return done;
  }

  #failWrites(error: unknown): void {
    if (this.#writeError !== null) return;
    this.#writeError = error;
    const tx = this.#tx;
    this.#tx = null;
    tx?.reject(error);
    for (const w of this.#shutdownWaiters.splice(0)) w.reject(error);
    try {
      this.#writeController?.error(error);
    } catch {
      // already errored or closed
    }
  }

  // ---- ending -----------------------------------------------------------------

  /** Both directions finished: end with RST (§5.10.6.6: the clean disconnect ends with an RST). */
  #maybeFinish(): void {
    if (this.#state !== "established" || this.#needRst) return;
    const hostDone = (this.#sentShutdown & SHUTDOWN.SEND) !== 0;
    const guestDone = (this.#peerShutdown & SHUTDOWN.SEND) !== 0 || this.#readCancelled;
    if (this.#peerShutdown === SHUTDOWN_BOTH || (hostDone && guestDone)) {
      this.#reset("closed", new VsockError("closed", this.#what("closed")), false, true);
    }
  }

  /** Ends the connection sending RST. */
  #reset(reason: VsockCloseReason, error: unknown, errorRead: boolean, clean = false): void {
    if (this.#state === "done") return;
    const requestPending = this.#needRequest;
    this.#end(reason, error, !errorRead || clean);
    // A REQUEST never sent needs no RST.
    if (requestPending) {
      this.#host.release(this);
      return;
    }
    this.#needRst = true;
    this.#host.schedule(this);
  }

  /**
   * Ends the connection: pending writes fail with `error`; the reader gets the
   * buffered bytes, then EOF when `readEof` (else `error`, or EOF after a
   * local close).
   */
  #end(reason: VsockCloseReason, error: unknown, readEof = false): void {
    if (this.#state === "done") return;
    const wasConnecting = this.#state === "connecting";
    this.#state = "done";
    this.#needRequest = this.#needResponse = false;
    this.#needCreditUpdate = false;
    this.#wantShutdown = 0;
    if (wasConnecting) {
      const c = this.#connect;
      this.#connect = null;
      c?.reject(error);
    }
    this.#failWrites(error);
    if (reason === "local") {
      // The host closed it: unread bytes are dropped; an errored abort reaches the reader.
      this.#rx = [];
      this.#rxBytes = 0;
      if (readEof) this.#readEnded = true;
      else this.#readError = error;
    } else if (readEof) {
      this.#readEnded = true;
    } else if (!this.#readEnded) {
      this.#readError = error;
    }
    this.#wakeReader();
    this.#host.release(this);
    this.#closedResolve(reason);
  }

  #what(event: string): string {
    return `vsock connection host port ${this.localPort} ↔ guest port ${this.peerPort}: ${event}`;
  }
}

/** Table key of the connection between `localPort` (host) and `peerPort` (guest). */
export function connectionKey(localPort: number, peerPort: number): string {
  return `${localPort}:${peerPort}`;
}
