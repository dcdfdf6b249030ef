/**
 * One TCP connection between the guest and a host socket, as the guest's
 * peer (RFC 9293): the state machine, MSS and window scaling (RFC 7323),
 * a sliding window with flow control in both directions, retransmission with
 * an RTT-based timeout (RFC 6298) and fast retransmit (RFC 5681 §3.2), FIN and
 * RST handling (with RFC 5961 challenge ACKs) and TIME_WAIT.
 *
 * The stack terminates the guest's TCP: bytes the guest sends are written to
 * the host socket, bytes read from the host socket are sent to the guest.
 * No congestion control: the link to the guest is a local one. The host
 * socket is non-blocking and driven by readiness callbacks from the loop:
 * reading pauses while the send buffer towards the guest is full, and the
 * receive window offered to the guest shrinks while bytes wait for the host.
 *
 * @module
 */

import type { NetCounters, ResolvedNetConfig } from "./config.ts";
import type { HostSockets, HostTcp, HostTcpEvents } from "./host.ts";
import type { PartialChecksum } from "./stack.ts";
import { PROTO, pseudoSum, put16, put32, sum16, TCP_FLAG, type TcpSegment } from "./wire.ts";
import { fold } from "./wire.ts";

/** TCP connection states (RFC 9293 §3.3.2), plus CONNECTING: SYN seen, host connect pending. */
export type TcpState =
  | "CONNECTING"
  | "SYN_SENT"
  | "SYN_RCVD"
  | "ESTABLISHED"
  | "FIN_WAIT_1"
  | "FIN_WAIT_2"
  | "CLOSE_WAIT"
  | "CLOSING"
  | "LAST_ACK"
  | "TIME_WAIT"
  | "CLOSED";

/** What a connection needs from its stack. */
export interface TcpEnv {
  readonly cfg: ResolvedNetConfig;
  readonly counters: NetCounters;
  /** A frame with Ethernet and IPv4 headers written for `l4Len` bytes from `src` to the guest; returns the L4 offset. */
  ipv4Frame(src: number, proto: number, l4Len: number): { frame: Uint8Array; off: number };
  /** Sends a finished frame to the guest (`partial`: the link completes the L4 checksum). */
  transmit(frame: Uint8Array, partial?: PartialChecksum): void;
  /** Whether the link completes L4 checksums (`NetLink.partialChecksums`). */
  partialChecksums(): boolean;
  /** Largest TCP payload per frame the link segments itself (`NetLink.tsoMax`), else 0. */
  tsoMax(): number;
  /** Adjusts the stack-wide buffered byte count. */
  buffered(delta: number): void;
  /** Bytes that may still be buffered stack-wide. */
  bufferFree(): number;
  /**
   * Asks for an ACK to be sent once the current input batch is processed,
   * or with `delayed` within about a millisecond (a reply may carry it).
   */
  requestAck(conn: TcpConn, delayed: boolean): void;
  /** A segment carried the requested ACK: the request is void. */
  ackSent(conn: TcpConn): void;
  /** Runs `fn` once the current batch of events is processed. */
  defer(fn: () => void): void;
  /** The current time in ms (the scheduler's clock). */
  now(): number;
  /** Removes the connection from the stack's table. */
  release(conn: TcpConn): void;
}

/** RFC 6298 §2: initial RTO 1 s; lower bound 200 ms (as Linux, below the RFC's 1 s for a local link). */
const RTO_INITIAL = 1000;
const RTO_MIN = 200;
const RTO_MAX = 60_000;
/** Our window-scale shift (RFC 7323 §2.3). */
const OUR_WSCALE = 7;
/**
 * Host read buffer: reads fill it front to back and the send buffer keeps
 * views of it (a typed array allocation costs ~1 µs here, a view ~50 ns);
 * a new one is made when less than {@link READ_MIN} is left.
 */
const READ_SIZE = 256 * 1024;
const READ_MIN = 16 * 1024;
/** First size of the byte queue towards the host; it doubles as needed (up to the window). */
const TO_HOST_MIN = 16 * 1024;
/** An empty queue towards the host larger than this is let go (after a bulk transfer). */
const TO_HOST_KEEP = 256 * 1024;
/** How long a host connect may take before the guest is reset. */
const CONNECT_TIMEOUT = 30_000;
/** FIN_WAIT_2 without the guest's FIN (as Linux tcp_fin_timeout). */
const FIN_WAIT_2_TIMEOUT = 60_000;
/** Out-of-order segments kept per connection. */
const MAX_OUT_OF_ORDER = 256;
/** SYN retransmissions to the guest before giving up (published connections). */
const SYN_RETRIES = 5;

/** a < b in sequence space (RFC 9293 §3.4, modulo 2^32). */
function lt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}
function le(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}
function add(a: number, n: number): number {
  return (a + n) >>> 0;
}
function diff(a: number, b: number): number {
  return (a - b) | 0;
}

/** One TCP connection; created by the stack on a guest SYN or a published accept. */
export class TcpConn {
  /** The table key (`guestPort|remoteIp|remotePort`). */
  readonly key: string;
  /** The guest's port. */
  readonly guestPort: number;
  /** The address the guest talks to. */
  readonly remoteIp: number;
  /** The port the guest talks to. */
  readonly remotePort: number;
  /** Current state. */
  state: TcpState;

  #env: TcpEnv;
  #host: HostTcp | null = null;
  #created: number;

  // Send side (towards the guest).
  #iss = (Math.random() * 0x100000000) >>> 0;
  #sndUna = this.#iss;
  #sndNxt = this.#iss;
  #sndMax = this.#iss;
  #sndWnd = 0;
  #sndWl1 = 0;
  #sndWl2 = 0;
  #sndShift = 0;
  #sndMss = 536;
  #sndChunks: Uint8Array[] = [];
  #sndBufLen = 0;
  #hostEof = false;
  #finSent = false;
  #finAcked = false;
  #dupAcks = 0;
  /** Reading from the host is paused: the send buffer (or the stack's budget) is full. */
  #readPaused = false;
  #readBuf: Uint8Array | null = null;
  #readOff = 0;

  // Receive side (from the guest).
  #irs = 0;
  #rcvNxt = 0;
  #rcvShift = 0;
  #rcvEdge = 0;
  #lastAdvWnd = 0;
  /** Bytes from the guest waiting for the host: `#toHostBuf[#toHostStart, #toHostStart + #toHostBytes)`. */
  #toHostBuf: Uint8Array | null = null;
  #toHostStart = 0;
  /** Out-of-order guest segments waiting for the gap before them. */
  #ooo: { seq: number; data: Uint8Array; fin: boolean }[] = [];
  #oooBytes = 0;
  #toHostBytes = 0;
  /** A flush to the host is scheduled for the end of the batch. */
  #flushQueued = false;
  /** A short write to the host waits for the socket to drain. */
  #waitingWritable = false;
  #guestFin = false;
  #hostWriteClosed = false;

  // Timers (the scheduler's ms; 0 = off).
  #rto = RTO_INITIAL;
  #srtt = 0;
  #rttvar = 0;
  #rttSeq = -1;
  #rttTime = 0;
  #rtoDeadline = 0;
  #retries = 0;
  #deadline = 0;
  #done = false;
  #aborted = false;
  #ackPending = false;
  #ackDelayed = false;
  /** The last acknowledgment number sent. */
  #ackSent = 0;
  /** Largest segment seen from the guest (for the every-second-segment ACK rule). */
  #rcvMss = 536;
  /** What the host socket reports. */
  #events: HostTcpEvents = {
    connected: (ok) => ok ? this.#hostConnected() : this.hostFailed(),
    readable: () => this.#onReadable(),
    writable: () => {
      this.#waitingWritable = false;
      this.#flushToHost();
    },
  };

  constructor(
    env: TcpEnv,
    guestPort: number,
    remoteIp: number,
    remotePort: number,
    state: TcpState,
  ) {
    this.#env = env;
    this.guestPort = guestPort;
    this.remoteIp = remoteIp;
    this.remotePort = remotePort;
    this.key = `${guestPort}|${remoteIp}|${remotePort}`;
    this.state = state;
    this.#created = env.now();
  }

  /** Whether the connection counts as half-open (handshake not complete). */
  get halfOpen(): boolean {
    return this.state === "CONNECTING" || this.state === "SYN_RCVD" || this.state === "SYN_SENT";
  }

  /** Bytes this connection holds in its buffers. */
  get bufferedBytes(): number {
    return this.#sndBufLen + this.#toHostBytes + this.#oooBytes;
  }

  /** Guest-initiated: records the guest's SYN before the host connect starts. */
  acceptSyn(seg: TcpSegment): void {
    this.#irs = seg.seq;
    this.#rcvNxt = add(seg.seq, 1);
    this.#rcvEdge = this.#rcvNxt;
    this.#negotiate(seg);
  }

  /**
   * Guest-initiated, after {@link acceptSyn}: connects to `hostname:port`;
   * the SYN is answered once the host accepts, reset if it refuses.
   */
  connect(sockets: HostSockets, hostname: string, port: number): void {
    try {
      this.#host = sockets.connectTcp(hostname, port, this.#events);
    } catch {
      this.hostFailed();
    }
  }

  #hostConnected(): void {
    if (this.#done) return;
    this.state = "SYN_RCVD";
    this.#sendSyn(true);
  }

  /** Guest-initiated: the host refused, failed or timed out; reset the guest. */
  hostFailed(): void {
    if (this.#done) return;
    this.#env.counters.tcpRefused++;
    this.#sendRst(0, this.#rcvNxt, true);
    this.#release();
  }

  /** Host-initiated (published port): takes the accepted `host` and sends the SYN to the guest. */
  openActive(host: HostTcp): void {
    this.#host = host;
    host.events = this.#events;
    this.state = "SYN_SENT";
    this.#sendSyn(false);
  }

  #negotiate(seg: TcpSegment): void {
    this.#sndMss = Math.max(64, Math.min(seg.mss || 536, this.#env.cfg.mtu - 40));
    if (seg.wscale >= 0) {
      this.#sndShift = seg.wscale;
      this.#rcvShift = OUR_WSCALE;
    }
    this.#sndWnd = seg.wnd; // RFC 7323 §2.2: the window of a SYN is never scaled
  }

  // ---- guest → stack ----

  /** Processes one segment from the guest (RFC 9293 §3.10.7). */
  input(seg: TcpSegment): void {
    if (this.#done) return;
    const f = seg.flags;
    if (this.state === "CONNECTING") {
      if (f & TCP_FLAG.RST) this.#abort(false);
      return; // retransmitted SYNs wait for the host connect
    }
    if (this.state === "SYN_SENT") return this.#inputSynSent(seg);

    // Acceptability (§3.10.7.4).
    const len = seg.payload.length + (f & TCP_FLAG.FIN ? 1 : 0);
    const wnd = Math.max(diff(this.#rcvEdge, this.#rcvNxt), this.#rcvWindow(), 1);
    const rel = diff(seg.seq, this.#rcvNxt);
    if (f & TCP_FLAG.RST) {
      if (rel === 0) this.#abort(false);
      else if (rel > 0 && rel < wnd) this.#sendAck(); // RFC 5961 §3.2 challenge ACK
      return;
    }
    if (f & TCP_FLAG.SYN) {
      if (this.state === "SYN_RCVD" && seg.seq === this.#irs) this.#sendSyn(true);
      else this.#sendAck(); // RFC 5961 §4 challenge ACK
      return;
    }
    if ((len > 0 && rel + len <= 0) || (len === 0 && rel < 0) || rel >= wnd) {
      // An old duplicate, a window probe or a segment beyond the window
      // (§3.10.7.4 first step): acknowledge what we have.
      this.#sendAck();
      return;
    }
    if (!(f & TCP_FLAG.ACK)) return;

    if (this.state === "SYN_RCVD") {
      if (seg.ack !== add(this.#iss, 1)) {
        this.#sendRst(seg.ack, 0, false);
        return;
      }
      this.state = "ESTABLISHED";
      this.#sndUna = seg.ack;
      this.#sndWnd = seg.wnd << this.#sndShift;
      this.#sndWl1 = seg.seq;
      this.#sndWl2 = seg.ack;
      this.#rtoDeadline = 0;
      this.#env.counters.tcpOpened++;
      this.#startReading();
    }
    if (this.state === "TIME_WAIT") {
      if (f & TCP_FLAG.FIN) {
        this.#sendAck();
        this.#deadline = this.#env.now() + this.#env.cfg.timeWaitMs;
      }
      return;
    }
    this.#processAck(seg);
    if (this.#done) return;

    // Data (§3.10.7.4 seventh step).
    const fin = (f & TCP_FLAG.FIN) !== 0;
    if (rel > 0) {
      // Out of order: keep it until the gap is filled and send a duplicate
      // ACK at once so the guest's fast retransmit fills the gap (RFC 5681 §4.2).
      if (seg.payload.length > 0 || fin) {
        this.#queueOutOfOrder(seg.seq, seg.payload, fin, wnd);
        this.#sendAck();
      }
      this.#trySend();
      return;
    }
    // A segment with PSH ends what the guest's application wrote (RFC 9293
    // §3.9.1): hand it to the host now rather than at the end of the batch,
    // which only gathers the segments of a bulk transfer.
    const push = (f & TCP_FLAG.PSH) !== 0 && this.#ooo.length === 0;
    this.#deliver(rel < 0 ? seg.payload.subarray(-rel) : seg.payload, fin, push);
    while (this.#ooo.length > 0 && !this.#done) {
      const i = this.#ooo.findIndex((o) => diff(o.seq, this.#rcvNxt) <= 0);
      if (i < 0) break;
      const [o] = this.#ooo.splice(i, 1);
      this.#oooBytes -= o.data.length;
      this.#env.buffered(-o.data.length);
      const skip = diff(this.#rcvNxt, o.seq);
      if (skip <= o.data.length) this.#deliver(o.data.subarray(skip), o.fin);
    }
    this.#trySend();
  }

  /** Whether data from the guest is still accepted (it has not sent its FIN). */
  #receiving(): boolean {
    const st = this.state;
    return st === "ESTABLISHED" || st === "FIN_WAIT_1" || st === "FIN_WAIT_2";
  }

  /** Appends in-order guest data (and its FIN) for the host. */
  #deliver(payload: Uint8Array, fin: boolean, push = false): void {
    if (payload.length > 0) {
      if (this.#receiving()) {
        const room = Math.max(diff(this.#rcvEdge, this.#rcvNxt), this.#rcvWindow());
        if (payload.length > room) {
          payload = payload.subarray(0, Math.max(0, room));
          fin = false;
        }
        if (payload.length > 0) {
          this.#queueToHost(payload);
          this.#rcvNxt = add(this.#rcvNxt, payload.length);
          if (push && !this.#flushQueued) this.#flushToHost();
          else this.#kickWriter();
        }
        const mss = Math.min(payload.length, this.#env.cfg.mtu - 40);
        if (mss > this.#rcvMss) this.#rcvMss = mss;
        this.#wantAck(true);
      } else {
        fin = false;
      }
    }
    if (fin && !this.#guestFin) {
      this.#guestFin = true;
      this.#rcvNxt = add(this.#rcvNxt, 1);
      switch (this.state) {
        case "ESTABLISHED":
          this.state = "CLOSE_WAIT";
          break;
        case "FIN_WAIT_1":
          if (this.#finAcked) this.#enterTimeWait();
          else this.state = "CLOSING";
          break;
        case "FIN_WAIT_2":
          this.#enterTimeWait();
          break;
      }
      this.#kickWriter();
      this.#wantAck();
    }
  }

  /**
   * Keeps an out-of-order segment (a copy) for {@link input} to deliver once
   * the gap before it is filled; bounded by the window, a segment count and
   * the stack-wide byte budget. Duplicates are ignored.
   */
  #queueOutOfOrder(seq: number, payload: Uint8Array, fin: boolean, wnd: number): void {
    if (!this.#receiving() || this.#ooo.length >= MAX_OUT_OF_ORDER) return;
    const rel = diff(seq, this.#rcvNxt);
    let data = payload;
    if (rel + data.length > wnd) {
      data = data.subarray(0, Math.max(0, wnd - rel));
      fin = false;
    }
    if (data.length === 0 && !fin) return;
    if (this.#ooo.some((o) => o.seq === seq && o.data.length >= data.length)) return;
    if (this.#oooBytes + data.length > this.#env.cfg.tcpBufferBytes) return;
    if (data.length > this.#env.bufferFree()) return;
    this.#ooo.push({ seq, data: data.slice(), fin });
    this.#oooBytes += data.length;
    this.#env.buffered(data.length);
  }

  #inputSynSent(seg: TcpSegment): void {
    const f = seg.flags;
    const ackOk = (f & TCP_FLAG.ACK) !== 0 && seg.ack === add(this.#iss, 1);
    if (f & TCP_FLAG.RST) {
      if (ackOk) this.#abort(false);
      return;
    }
    if (!(f & TCP_FLAG.SYN) || !ackOk) {
      if (f & TCP_FLAG.ACK && !ackOk) this.#sendRst(seg.ack, 0, false);
      return;
    }
    this.#irs = seg.seq;
    this.#rcvNxt = add(seg.seq, 1);
    this.#rcvEdge = this.#rcvNxt;
    this.#negotiate(seg);
    if (seg.wscale < 0) {
      this.#sndShift = 0;
      this.#rcvShift = 0;
    }
    this.#sndUna = seg.ack;
    this.#sndWl1 = seg.seq;
    this.#sndWl2 = seg.ack;
    this.#rtoDeadline = 0;
    this.state = "ESTABLISHED";
    this.#env.counters.tcpOpened++;
    this.#sendAck();
    this.#startReading();
  }

  #processAck(seg: TcpSegment): void {
    const ack = seg.ack;
    if (lt(this.#sndMax, ack)) {
      this.#sendAck(); // acknowledges something never sent
      return;
    }
    const wnd = seg.wnd << this.#sndShift;
    if (lt(this.#sndUna, ack)) {
      if (lt(this.#sndNxt, ack)) this.#sndNxt = ack; // late ACK after a go-back
      let acked = diff(ack, this.#sndUna);
      if (this.#finSent && !this.#finAcked && ack === add(this.#sndUna, this.#sndBufLen + 1)) {
        this.#finAcked = true;
        acked--;
      }
      this.#dropSent(acked);
      this.#sndUna = ack;
      this.#dupAcks = 0;
      this.#retries = 0;
      if (this.#rttSeq >= 0 && le(this.#rttSeq, ack)) {
        this.#sampleRtt(this.#env.now() - this.#rttTime);
        this.#rttSeq = -1;
      }
      this.#rto = this.#srtt ? this.#computeRto() : this.#rto;
      this.#rtoDeadline = this.#sndNxt !== this.#sndUna ? this.#env.now() + this.#rto : 0;
      if (this.#finAcked) {
        if (this.state === "FIN_WAIT_1") this.state = "FIN_WAIT_2";
        else if (this.state === "CLOSING") this.#enterTimeWait();
        else if (this.state === "LAST_ACK") {
          this.state = "CLOSED";
          this.#finish();
          return;
        }
      }
    } else if (
      ack === this.#sndUna && seg.payload.length === 0 && !(seg.flags & TCP_FLAG.FIN) &&
      wnd === this.#sndWnd && this.#sndNxt !== this.#sndUna
    ) {
      // RFC 5681 §3.2: the third duplicate ACK triggers fast retransmit.
      if (++this.#dupAcks === 3) {
        this.#env.counters.tcpRetransmits++;
        this.#rttSeq = -1;
        this.#sendData(this.#sndUna, Math.min(this.#sndMss, this.#sndBufLen));
      }
    }
    if (lt(this.#sndWl1, seg.seq) || (this.#sndWl1 === seg.seq && le(this.#sndWl2, ack))) {
      this.#sndWnd = wnd;
      this.#sndWl1 = seg.seq;
      this.#sndWl2 = ack;
    }
  }

  /** RFC 6298 §2.2–2.3. */
  #sampleRtt(r: number): void {
    if (this.#srtt === 0) {
      this.#srtt = Math.max(r, 0.01);
      this.#rttvar = r / 2;
    } else {
      this.#rttvar = 0.75 * this.#rttvar + 0.25 * Math.abs(this.#srtt - r);
      this.#srtt = 0.875 * this.#srtt + 0.125 * r;
    }
  }

  #computeRto(): number {
    return Math.min(RTO_MAX, Math.max(RTO_MIN, this.#srtt + Math.max(1, 4 * this.#rttvar)));
  }

  #dropSent(n: number): void {
    n = Math.min(n, this.#sndBufLen);
    this.#sndBufLen -= n;
    this.#env.buffered(-n);
    while (n > 0) {
      const c = this.#sndChunks[0];
      if (c.length <= n) {
        n -= c.length;
        this.#sndChunks.shift();
      } else {
        this.#sndChunks[0] = c.subarray(n);
        n = 0;
      }
    }
    this.#maybeResumeReading();
  }

  // ---- host → guest ----

  #startReading(): void {
    this.#host?.setReading(true);
  }

  /** Whether the send buffer and the stack's budget have room for another read. */
  #roomToRead(): boolean {
    return this.#sndBufLen < this.#env.cfg.tcpBufferBytes && this.#env.bufferFree() > 0;
  }

  #maybeResumeReading(): void {
    if (!this.#readPaused || this.#done || !this.#roomToRead()) return;
    this.#readPaused = false;
    this.#host?.setReading(true);
  }

  /** The host socket is readable: reads while there is room, then sends what the window allows. */
  #onReadable(): void {
    const host = this.#host;
    if (this.#done || !host || this.#hostEof) return;
    const max = this.#env.cfg.tcpBufferBytes;
    for (;;) {
      if (!this.#roomToRead()) {
        // Flow control: the host's bytes wait in its socket (its window
        // closes) until the guest acknowledges what we hold.
        this.#readPaused = true;
        host.setReading(false);
        break;
      }
      const want = Math.min(READ_SIZE, max - this.#sndBufLen + 1024);
      let rb = this.#readBuf;
      if (!rb || rb.length - this.#readOff < Math.min(want, READ_MIN)) {
        rb = this.#readBuf = new Uint8Array(READ_SIZE);
        this.#readOff = 0;
      }
      const size = Math.min(want, rb.length - this.#readOff);
      const buf = rb.subarray(this.#readOff, this.#readOff + size);
      let n: number | null;
      try {
        n = host.read(buf);
      } catch {
        this.#abort(true);
        return;
      }
      if (n === 0) break;
      if (n === null) {
        this.#hostEof = true;
        host.setReading(false);
        break;
      }
      this.#sndChunks.push(buf.subarray(0, n));
      this.#readOff += n;
      this.#sndBufLen += n;
      this.#env.buffered(n);
      if (n < size) break; // drained for now; the loop reports more
    }
    this.#trySend();
  }

  /** Sends what the guest's window allows, then the FIN once the host is done. */
  #trySend(): void {
    if (this.#done || this.#host === null) return;
    const s = this.state;
    if (s === "CONNECTING" || s === "SYN_SENT" || s === "SYN_RCVD") return;
    for (;;) {
      const inFlight = diff(this.#sndNxt, this.#sndUna);
      const unsent = this.#sndBufLen - inFlight;
      if (unsent > 0) {
        const room = this.#sndWnd - inFlight;
        if (room <= 0) {
          if (inFlight === 0 && this.#rtoDeadline === 0) {
            this.#rtoDeadline = this.#env.now() + this.#rto; // persist timer
          }
          return;
        }
        // With segmentation offload one frame carries up to 64 KiB; the link
        // cuts it into MSS-sized segments (or the guest's stack takes it whole).
        const seg = this.#env.partialChecksums()
          ? Math.max(this.#env.tsoMax(), this.#sndMss)
          : this.#sndMss;
        const n = Math.min(unsent, seg, room);
        this.#sendData(this.#sndNxt, n);
        if (this.#rttSeq < 0) {
          this.#rttSeq = add(this.#sndNxt, n);
          this.#rttTime = this.#env.now();
        }
        this.#sndNxt = add(this.#sndNxt, n);
        if (lt(this.#sndMax, this.#sndNxt)) this.#sndMax = this.#sndNxt;
        if (this.#rtoDeadline === 0) this.#rtoDeadline = this.#env.now() + this.#rto;
      } else if (unsent === 0 && this.#hostEof && !this.#finSent) {
        this.#finSent = true;
        this.#sendSegment(this.#sndNxt, TCP_FLAG.FIN | TCP_FLAG.ACK, null, 0);
        this.#sndNxt = add(this.#sndNxt, 1);
        if (lt(this.#sndMax, this.#sndNxt)) this.#sndMax = this.#sndNxt;
        if (this.state === "ESTABLISHED") this.state = "FIN_WAIT_1";
        else if (this.state === "CLOSE_WAIT") this.state = "LAST_ACK";
        if (this.#rtoDeadline === 0) this.#rtoDeadline = this.#env.now() + this.#rto;
        return;
      } else {
        return;
      }
    }
  }

  /** Sends `n` bytes of the send buffer starting at sequence `seq`. */
  #sendData(seq: number, n: number): void {
    const start = diff(seq, this.#sndUna);
    n = Math.max(0, Math.min(n, this.#sndBufLen - start));
    const flags = TCP_FLAG.ACK | (start + n === this.#sndBufLen ? TCP_FLAG.PSH : 0);
    this.#sendSegment(seq, flags, null, n, start);
  }

  /** Copies `n` bytes of the send buffer, from `start` bytes past SND.UNA, to `frame[off…]`. */
  #fillData(frame: Uint8Array, off: number, start: number, n: number): void {
    const chunks = this.#sndChunks;
    let skip = start;
    let need = n;
    for (let i = 0; i < chunks.length && need > 0; i++) {
      const c = chunks[i];
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      const take = Math.min(c.length - skip, need);
      frame.set(skip === 0 && take === c.length ? c : c.subarray(skip, skip + take), off);
      off += take;
      need -= take;
      skip = 0;
    }
  }

  // ---- stack → host ----

  /** Schedules a flush of the guest's bytes to the host at the end of the batch (one write for many segments). */
  #kickWriter(): void {
    if (this.#flushQueued || this.#waitingWritable || !this.#host) return;
    this.#flushQueued = true;
    this.#env.defer(() => {
      this.#flushQueued = false;
      this.#flushToHost();
    });
  }

  /** Appends in-order guest bytes to the queue towards the host (one copy, no allocation once grown). */
  #queueToHost(p: Uint8Array): void {
    const n = p.length;
    let buf = this.#toHostBuf;
    const live = this.#toHostBytes;
    if (!buf || this.#toHostStart + live + n > buf.length) {
      if (buf && live + n <= buf.length) {
        buf.copyWithin(0, this.#toHostStart, this.#toHostStart + live);
      } else {
        let cap = buf ? buf.length * 2 : TO_HOST_MIN;
        while (cap < live + n) cap *= 2;
        const nb = new Uint8Array(cap);
        if (buf) nb.set(buf.subarray(this.#toHostStart, this.#toHostStart + live));
        buf = this.#toHostBuf = nb;
      }
      this.#toHostStart = 0;
    }
    buf.set(p, this.#toHostStart + live);
    this.#toHostBytes += n;
    this.#env.buffered(n);
  }

  /** Writes what the guest sent until the host socket is full; then FIN and close when due. */
  #flushToHost(): void {
    const host = this.#host;
    if (!host || this.#aborted || this.#waitingWritable) return;
    if (this.#toHostBytes > 0) {
      const start = this.#toHostStart;
      const chunk = this.#toHostBuf!.subarray(start, start + this.#toHostBytes);
      let n: number;
      try {
        n = host.write(chunk);
      } catch {
        if (!this.#done) return this.#abort(true);
        // Released already (the guest is gone): drop what the host refused.
        this.#consumeToHost(this.#toHostBytes);
        this.#closeHost();
        return;
      }
      this.#consumeToHost(n);
      // A short write armed a writable event: the rest goes then.
      if (n < chunk.length) this.#waitingWritable = true;
    }
    this.#maybeWindowUpdate();
    if (this.#toHostBytes > 0) return;
    if (this.#guestFin && !this.#hostWriteClosed) {
      this.#hostWriteClosed = true;
      try {
        host.shutdownWrite();
      } catch {
        // the host is gone; its reset shows on the next read
      }
    }
    if (this.#done || this.state === "TIME_WAIT") this.#closeHost();
  }

  /** Drops `n` written bytes from the front of the queue to the host. */
  #consumeToHost(n: number): void {
    this.#toHostBytes -= n;
    this.#env.buffered(-n);
    this.#toHostStart += n;
    if (this.#toHostBytes === 0) {
      this.#toHostStart = 0;
      if (this.#toHostBuf && this.#toHostBuf.length > TO_HOST_KEEP) this.#toHostBuf = null;
    }
  }

  /** The receive window we can offer the guest now. */
  #rcvWindow(): number {
    const own = this.#env.cfg.tcpBufferBytes - this.#toHostBytes;
    return Math.max(0, Math.min(own, this.#env.bufferFree()));
  }

  /**
   * Sends a window update once the window we could advertise grew by two
   * segments or a quarter of the buffer. What a segment can advertise is
   * capped by the window field (65535 << our scale): without window scaling
   * a 64 KiB window is all the guest ever sees, and comparing the raw
   * buffer space instead sent a needless pure ACK after every write to the
   * host (two frames per request/response where one carries the ACK).
   */
  #maybeWindowUpdate(): void {
    const scale = 1 << this.#rcvShift;
    const w = this.#windowField(scale) * scale;
    if (
      w - this.#lastAdvWnd >=
        Math.max(2 * (this.#env.cfg.mtu - 40), this.#env.cfg.tcpBufferBytes / 4)
    ) {
      this.#sendAck();
    }
  }

  /** The window field a segment carries at `scale`: our receive window, capped by 16 bits. */
  #windowField(scale: number): number {
    return Math.min(0xffff, Math.floor(this.#rcvWindow() / scale));
  }

  // ---- segments out ----

  #sendAck(): void {
    this.#sendSegment(this.#sndNxt, TCP_FLAG.ACK, null, 0);
  }

  /**
   * Schedules an ACK. For data, as a delayed ACK (RFC 9293 §3.8.6.3): at
   * once for every second full-sized segment, else after about a millisecond
   * unless data to the guest carries it first — which saves a frame per
   * request/response exchange.
   */
  #wantAck(data = false): void {
    const delayed = data && diff(this.#rcvNxt, this.#ackSent) < 2 * this.#rcvMss;
    if (this.#ackPending && (delayed || !this.#ackDelayed)) return;
    this.#ackPending = true;
    this.#ackDelayed = delayed;
    this.#env.requestAck(this, delayed);
  }

  /** Sends the ACK requested during an input batch, unless a segment already carried it. */
  flushAck(): void {
    if (!this.#ackPending) return;
    this.#ackPending = false;
    if (!this.#done && this.state !== "CONNECTING" && this.state !== "SYN_SENT") this.#sendAck();
  }

  #sendSyn(withAck: boolean): void {
    const opts = new Uint8Array(8);
    opts[0] = 2; // MSS (RFC 9293 §3.2)
    opts[1] = 4;
    put16(opts, 2, this.#env.cfg.mtu - 40);
    opts[4] = 1; // NOP
    opts[5] = 3; // window scale (RFC 7323 §2.2)
    opts[6] = 3;
    opts[7] = OUR_WSCALE;
    const wantScale = !withAck || this.#rcvShift > 0;
    this.#sndNxt = add(this.#iss, 1);
    this.#sndMax = this.#sndNxt;
    this.#sendSegment(
      this.#iss,
      TCP_FLAG.SYN | (withAck ? TCP_FLAG.ACK : 0),
      wantScale ? opts : opts.subarray(0, 4),
      0,
    );
    if (this.#rtoDeadline === 0) this.#rtoDeadline = this.#env.now() + this.#rto;
  }

  #sendRst(seq: number, ack: number, withAck: boolean): void {
    this.#env.counters.tcpResetsSent++;
    this.#emit(seq, ack, TCP_FLAG.RST | (withAck ? TCP_FLAG.ACK : 0), 0, null, 0);
  }

  /** Sends a segment with our window; `n` bytes of the send buffer from `dataStart` past SND.UNA. */
  #sendSegment(
    seq: number,
    flags: number,
    opts: Uint8Array | null,
    n: number,
    dataStart = 0,
  ): void {
    // A SYN's window is never scaled (RFC 7323 §2.2).
    const scale = flags & TCP_FLAG.SYN ? 1 : 1 << this.#rcvShift;
    const field = this.#windowField(scale);
    const advertised = field * scale;
    this.#lastAdvWnd = advertised;
    const edge = add(this.#rcvNxt, advertised);
    if (lt(this.#rcvEdge, edge)) this.#rcvEdge = edge;
    this.#emit(seq, this.#rcvNxt, flags, field, opts, n, dataStart);
  }

  #emit(
    seq: number,
    ack: number,
    flags: number,
    wndField: number,
    opts: Uint8Array | null,
    n: number,
    dataStart = 0,
  ): void {
    const optLen = opts ? opts.length : 0;
    const hlen = 20 + optLen;
    const { frame, off } = this.#env.ipv4Frame(this.remoteIp, PROTO.TCP, hlen + n);
    put16(frame, off, this.remotePort);
    put16(frame, off + 2, this.guestPort);
    put32(frame, off + 4, seq);
    put32(frame, off + 8, ack);
    frame[off + 12] = (hlen / 4) << 4;
    frame[off + 13] = flags;
    put16(frame, off + 14, wndField);
    put16(frame, off + 16, 0);
    put16(frame, off + 18, 0);
    if (opts) frame.set(opts, off + 20);
    if (n > 0) this.#fillData(frame, off + hlen, dataStart, n);
    if (flags & TCP_FLAG.ACK) {
      if (this.#ackPending) this.#env.ackSent(this);
      this.#ackPending = false;
      this.#ackSent = ack;
    }
    const ps = pseudoSum(this.remoteIp, this.#env.cfg.guestIp, PROTO.TCP, hlen + n);
    if (n > 0 && this.#env.partialChecksums()) {
      // The link completes it (virtio NEEDS_CSUM): only the pseudo-header sum goes in.
      put16(frame, off + 16, fold(ps));
      // One object of one shape per segment (tsoSize 0: no segmentation).
      const tso = n > this.#sndMss;
      this.#env.transmit(frame, {
        start: off,
        offset: 16,
        tsoSize: tso ? this.#sndMss : 0,
        headerLength: tso ? off + hlen : 0,
      });
      return;
    }
    put16(frame, off + 16, ~fold(sum16(frame, off, hlen + n) + ps) & 0xffff);
    this.#env.transmit(frame);
  }

  // ---- timers and teardown ----

  /** Runs timers; called by the stack every few tens of ms. */
  tick(now: number): void {
    if (this.#done) return;
    // The stack-wide budget may have been freed by other connections.
    this.#maybeResumeReading();
    if (this.state === "CONNECTING") {
      if (now - this.#created > CONNECT_TIMEOUT) this.hostFailed();
      return;
    }
    if (this.state === "TIME_WAIT" || this.state === "FIN_WAIT_2") {
      if (this.#deadline === 0 && this.state === "FIN_WAIT_2") {
        this.#deadline = now + FIN_WAIT_2_TIMEOUT;
      }
      if (this.#deadline && now >= this.#deadline) this.#release();
      return;
    }
    if (this.#rtoDeadline === 0 || now < this.#rtoDeadline) return;
    // RFC 6298 §5.4–5.6: retransmit, back off, restart the timer.
    this.#rto = Math.min(RTO_MAX, this.#rto * 2);
    this.#rtoDeadline = now + this.#rto;
    this.#rttSeq = -1;
    if (this.state === "SYN_SENT" || this.state === "SYN_RCVD") {
      if (++this.#retries > SYN_RETRIES) return this.#abort(true);
      this.#env.counters.tcpRetransmits++;
      this.#sendSyn(this.state === "SYN_RCVD");
      return;
    }
    if (++this.#retries > 15) return this.#abort(true);
    const inFlight = diff(this.#sndNxt, this.#sndUna);
    if (inFlight === 0 && this.#sndBufLen > 0 && this.#sndWnd === 0) {
      // Zero-window probe (RFC 9293 §3.8.6.1): one byte beyond the window.
      this.#sendData(this.#sndUna, 1);
      this.#sndNxt = add(this.#sndUna, 1);
      if (lt(this.#sndMax, this.#sndNxt)) this.#sndMax = this.#sndNxt;
      return;
    }
    if (inFlight === 0) {
      this.#rtoDeadline = 0;
      return;
    }
    this.#env.counters.tcpRetransmits++;
    // Go back to the first unacknowledged byte; a lost FIN is sent again too.
    this.#sndNxt = this.#sndUna;
    if (this.#finSent && !this.#finAcked) this.#finSent = false;
    const sw = this.#sndWnd;
    if (this.#sndWnd === 0) this.#sndWnd = 1;
    this.#trySend();
    this.#sndWnd = sw;
  }

  #enterTimeWait(): void {
    this.state = "TIME_WAIT";
    this.#rtoDeadline = 0;
    this.#deadline = this.#env.now() + this.#env.cfg.timeWaitMs;
    if (this.#toHostBytes === 0) this.#closeHost();
  }

  /** Resets the guest side and closes the host side (snapshot restore, stack close, errors). */
  reset(): void {
    if (this.#done) return;
    this.#abort(true);
  }

  #abort(sendRst: boolean): void {
    if (sendRst && this.state !== "CONNECTING" && this.state !== "TIME_WAIT") {
      this.#sendRst(this.#sndNxt, this.#rcvNxt, true);
    }
    this.state = "CLOSED";
    this.#aborted = true;
    this.#release();
  }

  #finish(): void {
    this.#release();
  }

  #release(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.state !== "CLOSED") this.state = "CLOSED";
    this.#env.buffered(-this.#sndBufLen - this.#oooBytes);
    this.#sndBufLen = 0;
    this.#sndChunks = [];
    this.#oooBytes = 0;
    this.#ooo = [];
    // Bytes the guest sent before its FIN still go to the host; the flush
    // closes the socket once they are written.
    if (this.#aborted || this.#toHostBytes === 0) {
      this.#consumeToHost(this.#toHostBytes);
      this.#toHostBuf = null;
      this.#closeHost();
    }
    this.#env.release(this);
  }

  #closeHost(): void {
    const h = this.#host;
    if (!h) return;
    this.#host = null;
    try {
      h.close();
    } catch {
      // already closed
    }
  }
}
