/**
 * The user-mode TCP/IP engine: terminates the guest's Ethernet frames (ARP,
 * IPv4 with reassembly, ICMP echo, UDP, TCP, DHCP, DNS) and carries the
 * guest's flows over host sockets (NAT). It is synchronous and callback
 * driven: the poll loop (`loop.ts`, in its Worker) feeds it frames and
 * socket readiness; unit tests drive it in-process with fake sockets. See
 * `mod.ts` for the attachment API ({@link NetStack} in `service.ts` runs
 * this engine in its loop).
 *
 * @module
 */

import {
  type NetConfig,
  type NetCounters,
  packCounters,
  resolveConfig,
  type ResolvedNetConfig,
  zeroCounters,
} from "./config.ts";
import { dhcpReply } from "./dhcp.ts";
import { DnsServer } from "./dns.ts";
import {
  eventLoopScheduler,
  type HostSockets,
  type HostTcp,
  type HostTcpListener,
  type HostUdp,
  type Scheduler,
} from "./host.ts";
import { TcpConn, type TcpEnv } from "./tcp.ts";
import { UdpFlow } from "./udp.ts";
import {
  BROADCAST_MAC,
  checksum,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  formatIpv4,
  parseTcpOptions,
  PROTO,
  pseudoSum,
  put16,
  put32,
  TCP_FLAG,
  type TcpSegment,
  u16,
  u32,
  writeEth,
  writeIpv4,
} from "./wire.ts";

/** Where the stack sends frames for the guest: one attachment (TAP, stream socket, virtio-net). */
export interface NetLink {
  /**
   * Delivers one Ethernet frame (no FCS) to the guest. The stack does not
   * touch `frame` afterwards; the link may keep it. With `partial` (only
   * when {@link partialChecksums} is set) the TCP/UDP checksum is left to the
   * link, as virtio's VIRTIO_NET_HDR_F_NEEDS_CSUM (virtio 1.2 §5.1.6.2): the
   * field at `start + offset` holds the pseudo-header sum and the ones'
   * complement sum from `start` to the end completes it.
   */
  send(frame: Uint8Array, partial?: PartialChecksum): void;
  /** The link can hand frames with partial checksums on (TAP with a vnet header). */
  readonly partialChecksums?: boolean;
  /**
   * With {@link partialChecksums}: the largest TCP payload of one frame the
   * link accepts beyond the MTU, segmenting it itself (TSO, virtio
   * VIRTIO_NET_HDR_GSO_TCPV4); frames above the MSS then carry
   * {@link PartialChecksum.tsoSize}.
   */
  readonly tsoMax?: number;
  /**
   * Bytes the link wants free before each frame the stack builds (a frame
   * is then a view at that offset into a larger buffer), so it can prepend
   * its own header without copying.
   */
  readonly headroom?: number;
  /**
   * {@link send} is done with the frame when it returns (it wrote or copied
   * it): the stack then builds frames in one reused buffer instead of a new
   * one each (a typed array allocation costs about a microsecond here).
   */
  readonly consumesFrames?: boolean;
}

/** Where a link completes a partial checksum (see {@link NetLink.send}). */
export interface PartialChecksum {
  /** Offset in the frame where summing starts (the L4 header). */
  start: number;
  /** Offset of the checksum field from `start`. */
  offset: number;
  /**
   * TCP segmentation: the MSS to cut the payload into (frames larger than
   * one segment); 0 or absent: none.
   */
  tsoSize?: number;
  /** With `tsoSize`: bytes of Ethernet, IPv4 and TCP headers before the payload. */
  headerLength?: number;
}

/** What the engine runs on besides its {@link NetConfig}. */
export interface NetEngineOptions {
  /** How host sockets are opened (`PollSockets` in the loop, fakes in tests). */
  sockets: HostSockets;
  /** Timers and end-of-batch work (default: the JavaScript event loop). */
  scheduler?: Scheduler;
}

/** One IPv4 datagram under reassembly (RFC 791 §3.2; RFC 815). */
interface Reassembly {
  parts: { off: number; data: Uint8Array }[];
  total: number;
  got: number;
  deadline: number;
}

const TICK_MS = 25;
/** Delayed-ACK time: short, since the guest is on a local link (RFC 9293 §3.8.6.3 allows ≤ 500 ms). */
const DELAYED_ACK_MS = 1;
const REASM_TIMEOUT = 30_000; // RFC 791: 15 s lower bound; Linux uses 30 s
const MAX_REASSEMBLIES = 16;
const MAX_PENDING_FRAMES = 64;
/** The reused frame buffer: headroom, Ethernet, IPv4 and the largest L4 payload (64 KiB TSO). */
const SCRATCH_BYTES = 256 + 65536 + 128;
/** Header bytes cleared in a reused frame (Ethernet, IPv4, L4 header with options). */
const HEADER_CLEAR = ETH_HLEN + 20 + 64;
const EPHEMERAL_FIRST = 49152;

/** The engine. Create one per VM, attach a link, feed it the guest's frames with {@link input}. */
export class NetEngine implements AsyncDisposable {
  /** The configuration with defaults applied. */
  readonly config: ResolvedNetConfig;
  #counters: NetCounters = zeroCounters();
  #sockets: HostSockets;
  #scheduler: Scheduler;
  #link: NetLink | null = null;
  #guestMac: Uint8Array | null = null;
  #pending: { f: Uint8Array; partial?: PartialChecksum }[] = [];
  #scratch = new Uint8Array(SCRATCH_BYTES);
  /** Whether the frame being processed had its L4 checksum checked by a trusted link. */
  #trusted = false;
  #lastArp = 0;
  #ipId = 1;
  #tcp = new Map<string, TcpConn>();
  #udp = new Map<string, UdpFlow>();
  #frags = new Map<string, Reassembly>();
  #buffered = 0;
  #acks = new Set<TcpConn>();
  #ackScheduled = false;
  /** The connection the last guest segment belonged to (released ones are cleared). */
  #lastConn: TcpConn | null = null;
  /** Connections owing a delayed ACK, with the time it is due. */
  #delayedAcks = new Map<TcpConn, number>();
  #cancelDelayed: (() => void) | null = null;
  #onDelayedTimer = () => this.#flushDelayedAcks();
  #cancelTick: () => void;
  #closed = false;
  #dns: DnsServer;
  #tcpListeners: HostTcpListener[] = [];
  #udpListeners: HostUdp[] = [];
  /** Published UDP: gateway port → (listener, client address). */
  #udpPublished = new Map<
    number,
    { sock: HostUdp; hostname: string; port: number; lastUsed: number }
  >();
  /** Published UDP: `rule|client address|client port` → gateway port. */
  #udpClients = new Map<string, number>();
  #nextEphemeral = EPHEMERAL_FIRST;
  #env: TcpEnv;

  /** Creates the engine and opens the `--publish` listeners (throws naming a taken port). */
  constructor(config: NetConfig, options: NetEngineOptions) {
    this.config = resolveConfig(config);
    this.#sockets = options.sockets;
    this.#scheduler = options.scheduler ?? eventLoopScheduler;
    this.#dns = new DnsServer(
      this.#sockets,
      this.config.hostsFile,
      this.config.resolvConf,
      this.#scheduler,
    );
    this.#env = {
      cfg: this.config,
      counters: this.#counters,
      ipv4Frame: (src, proto, l4Len) => this.#ipv4Frame(src, proto, l4Len),
      transmit: (f, partial) => this.#transmit(f, partial),
      partialChecksums: () => this.#link?.partialChecksums === true,
      tsoMax: () => this.#link?.tsoMax ?? 0,
      buffered: (d) => {
        this.#buffered += d;
      },
      bufferFree: () => this.config.maxBufferedBytes - this.#buffered,
      requestAck: (c, delayed) => this.#requestAck(c, delayed),
      ackSent: (c) => this.#ackSent(c),
      defer: (fn) => this.#scheduler.defer(fn),
      now: () => this.#scheduler.now(),
      release: (c) => {
        if (this.#lastConn === c) this.#lastConn = null;
        if (this.#tcp.get(c.key) === c) this.#tcp.delete(c.key);
        this.#acks.delete(c);
        this.#delayedAcks.delete(c);
      },
    };
    try {
      this.config.publish.forEach((rule, i) => {
        const what = `${rule.hostIp}:${rule.hostPort}/${rule.proto}`;
        try {
          if (rule.proto === "tcp") {
            this.#tcpListeners.push(
              this.#sockets.listenTcp(
                rule.hostIp,
                rule.hostPort,
                (host) => this.#accepted(host, rule.guestPort),
              ),
            );
            return;
          }
          const holder: { sock: HostUdp | null } = { sock: null };
          holder.sock = this.#sockets.openUdp(
            (data, host, port) =>
              this.#udpPublishIn(i, holder.sock, rule.guestPort, data, host, port),
            { hostname: rule.hostIp, port: rule.hostPort },
          );
          this.#udpListeners.push(holder.sock);
        } catch (e) {
          throw new Error(`net: cannot listen on --publish ${what}: ${(e as Error).message}`);
        }
      });
    } catch (e) {
      this.#closeListeners();
      throw e;
    }
    this.#cancelTick = this.#scheduler.after(TICK_MS, () => this.#tick());
  }

  /** The host addresses of the TCP `--publish` listeners, in rule order (useful with port 0). */
  get publishedAddrs(): Deno.NetAddr[] {
    return this.#tcpListeners.map((l) => l.addr as Deno.NetAddr);
  }

  /** Attaches the link frames for the guest go to (replacing any previous one). */
  attach(link: NetLink): void {
    this.#link = link;
  }

  /**
   * Detaches the link (only `link`, when given and still attached); frames
   * for the guest are dropped until the next {@link attach}.
   */
  detach(link?: NetLink): void {
    if (link === undefined || this.#link === link) this.#link = null;
  }

  /** A snapshot of the counters. */
  counters(): NetCounters {
    return {
      ...this.#counters,
      tcpActive: this.#tcp.size,
      udpActive: this.#udp.size,
      bufferedBytes: this.#buffered,
    };
  }

  /**
   * Writes the counters into `out` in `COUNTER_KEYS` order without
   * allocating (the loop publishes them to the host thread after each turn).
   */
  writeCounters(out: Float64Array): void {
    const c = this.#counters;
    c.tcpActive = this.#tcp.size;
    c.udpActive = this.#udp.size;
    c.bufferedBytes = this.#buffered;
    packCounters(c, out);
  }

  /**
   * Resets every open connection (RST to the guest, host socket closed) and
   * closes UDP flows: used after a snapshot restore, when the guest's view of
   * its connections no longer matches the host sockets.
   */
  resetConnections(): void {
    for (const c of [...this.#tcp.values()]) c.reset();
    for (const f of this.#udp.values()) f.close();
    this.#udp.clear();
    this.#frags.clear();
  }

  /** Resets all connections, closes listeners and host sockets, and stops the timers. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.resetConnections();
    this.#closed = true;
    this.#cancelTick();
    this.#cancelDelayed?.();
    this.#cancelDelayed = null;
    this.#delayedAcks.clear();
    this.#dns.close();
    this.#closeListeners();
    this.#link = null;
    return Promise.resolve();
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #closeListeners(): void {
    for (const l of this.#tcpListeners) {
      try {
        l.close();
      } catch {
        // closed
      }
    }
    for (const s of this.#udpListeners) {
      try {
        s.close();
      } catch {
        // closed
      }
    }
    this.#tcpListeners = [];
    this.#udpListeners = [];
  }

  /**
   * Processes one Ethernet frame from the guest. The frame is only read
   * during the call (the caller may reuse its buffer). Never throws: bad
   * frames are dropped and counted.
   */
  input(frame: Uint8Array, checksumsTrusted = false): void {
    if (this.#closed) return;
    const c = this.#counters;
    c.rxFrames++;
    c.rxBytes += frame.length;
    this.#trusted = checksumsTrusted;
    try {
      this.#ethernet(frame);
    } catch (e) {
      // A bug, not bad input (bad input is counted on its own path): count it
      // so tests notice, but never let a guest frame crash the VMM.
      this.internalError(e);
    }
  }

  /** Counts (and reports the first few of) exceptions caught around the engine: bugs, not bad input. */
  internalError(e: unknown): void {
    const c = this.#counters;
    c.internalErrors++;
    if (c.internalErrors <= 3) console.error("skiff net: internal error:", e);
  }

  // ---- Ethernet and ARP ----

  #ethernet(f: Uint8Array): void {
    const c = this.#counters;
    if (f.length < ETH_HLEN) return void c.dropMalformed++;
    const dstBroadcast = (f[0] & f[1] & f[2] & f[3] & f[4] & f[5]) === 255;
    const gm = this.config.gatewayMac;
    const toUs = f[0] === gm[0] && f[1] === gm[1] && f[2] === gm[2] && f[3] === gm[3] &&
      f[4] === gm[4] && f[5] === gm[5];
    const type = u16(f, 12);
    if (!toUs && !dstBroadcast) return void c.dropUnsupported++;
    if (f[6] & 1) return void c.dropMalformed++; // multicast source MAC
    if (type === ETHERTYPE_ARP) return this.#arp(f);
    if (type === ETHERTYPE_IPV4) return this.#ipv4(f);
    c.dropUnsupported++;
  }

  #arp(f: Uint8Array): void {
    const c = this.#counters;
    if (f.length < ETH_HLEN + 28) return void c.dropMalformed++;
    const o = ETH_HLEN;
    // RFC 826: Ethernet (1), IPv4, 6-byte and 4-byte addresses.
    if (u16(f, o) !== 1 || u16(f, o + 2) !== ETHERTYPE_IPV4 || f[o + 4] !== 6 || f[o + 5] !== 4) {
      return void c.dropMalformed++;
    }
    const op = u16(f, o + 6);
    const senderIp = u32(f, o + 14);
    const targetIp = u32(f, o + 24);
    if (senderIp === this.config.guestIp) this.#learn(f.subarray(o + 8, o + 14));
    if (op !== 1) return;
    if (targetIp !== this.config.gatewayIp && targetIp !== this.config.dnsIp) return;
    const r = new Uint8Array(ETH_HLEN + 28);
    writeEth(r, f.subarray(o + 8, o + 14), this.config.gatewayMac, ETHERTYPE_ARP);
    put16(r, o, 1);
    put16(r, o + 2, ETHERTYPE_IPV4);
    r[o + 4] = 6;
    r[o + 5] = 4;
    put16(r, o + 6, 2);
    r.set(this.config.gatewayMac, o + 8);
    put32(r, o + 14, targetIp);
    r.set(f.subarray(o + 8, o + 14), o + 18);
    put32(r, o + 24, senderIp);
    c.arpReplies++;
    this.#send(r);
  }

  #learn(mac: Uint8Array): void {
    if (mac[0] & 1) return;
    const g = this.#guestMac;
    if (
      g && g[0] === mac[0] && g[1] === mac[1] && g[2] === mac[2] && g[3] === mac[3] &&
      g[4] === mac[4] && g[5] === mac[5]
    ) return;
    this.#guestMac = mac.slice(0, 6);
    const pending = this.#pending;
    this.#pending = [];
    for (const p of pending) {
      p.f.set(this.#guestMac, 0);
      this.#send(p.f, p.partial);
    }
  }

  #send(f: Uint8Array, partial?: PartialChecksum): void {
    const link = this.#link;
    if (!link) return;
    this.#counters.txFrames++;
    this.#counters.txBytes += f.length;
    link.send(f, partial);
  }

  /** Sends an IPv4 frame, holding it until the guest's MAC is known (ARP request). */
  #transmit(f: Uint8Array, partial?: PartialChecksum): void {
    if (this.#guestMac) return this.#send(f, partial);
    if (this.#pending.length < MAX_PENDING_FRAMES) {
      if (f.buffer === this.#scratch.buffer) {
        // Held beyond this call: it needs its own buffer (with the same headroom).
        const room = this.#link?.headroom ?? 0;
        const own = new Uint8Array(room + f.length).subarray(room);
        own.set(f);
        f = own;
      }
      this.#pending.push({ f, partial });
    }
    const now = this.#scheduler.now();
    if (now - this.#lastArp < 500) return;
    this.#lastArp = now;
    const r = new Uint8Array(ETH_HLEN + 28);
    const o = ETH_HLEN;
    writeEth(r, BROADCAST_MAC, this.config.gatewayMac, ETHERTYPE_ARP);
    put16(r, o, 1);
    put16(r, o + 2, ETHERTYPE_IPV4);
    r[o + 4] = 6;
    r[o + 5] = 4;
    put16(r, o + 6, 1);
    r.set(this.config.gatewayMac, o + 8);
    put32(r, o + 14, this.config.gatewayIp);
    put32(r, o + 24, this.config.guestIp);
    this.#send(r);
  }

  #ipv4Frame(src: number, proto: number, l4Len: number): { frame: Uint8Array; off: number } {
    const link = this.#link;
    const room = link?.headroom ?? 0;
    const size = ETH_HLEN + 20 + l4Len;
    let frame: Uint8Array;
    if (link?.consumesFrames && room + size <= this.#scratch.length) {
      // Frames are built and sent one at a time: reuse one buffer.
      frame = this.#scratch.subarray(room, room + size);
      frame.fill(0, 0, Math.min(size, HEADER_CLEAR));
    } else {
      frame = room > 0 ? new Uint8Array(room + size).subarray(room) : new Uint8Array(size);
    }
    writeEth(frame, this.#guestMac ?? BROADCAST_MAC, this.config.gatewayMac, ETHERTYPE_IPV4);
    writeIpv4(frame, ETH_HLEN, src, this.config.guestIp, proto, 20 + l4Len, this.#ipId++);
    return { frame, off: ETH_HLEN + 20 };
  }

  // ---- IPv4 ----

  #ipv4(f: Uint8Array): void {
    const c = this.#counters;
    const o = ETH_HLEN;
    if (f.length < o + 20) return void c.dropMalformed++;
    const vihl = f[o];
    const ihl = (vihl & 15) * 4;
    if (vihl >> 4 !== 4 || ihl < 20) return void c.dropMalformed++;
    const total = u16(f, o + 2);
    if (total < ihl || o + total > f.length) return void c.dropMalformed++;
    if (checksum(f, o, ihl) !== 0) return void c.dropChecksum++;
    const proto = f[o + 9];
    const src = u32(f, o + 12);
    const dst = u32(f, o + 16);
    const frag = u16(f, o + 6);
    if (frag & 0x8000) return void c.dropMalformed++; // reserved flag (RFC 791)
    const dhcp = src === 0 && proto === PROTO.UDP;
    if (src !== this.config.guestIp && !dhcp) return void c.dropSpoofed++;
    // A guest with a static neighbour entry may never ARP: learn its MAC here too.
    if (!this.#guestMac && src === this.config.guestIp) this.#learn(f.subarray(6, 12));
    if (frag & 0x3fff) return this.#fragment(f, o, ihl, total, frag, src, dst, proto);
    this.#l4(src, dst, proto, f, o + ihl, total - ihl);
  }

  #fragment(
    f: Uint8Array,
    o: number,
    ihl: number,
    total: number,
    frag: number,
    src: number,
    dst: number,
    proto: number,
  ): void {
    const c = this.#counters;
    const off = (frag & 0x1fff) * 8;
    const more = (frag & 0x2000) !== 0;
    const len = total - ihl;
    if ((more && (len & 7) !== 0) || len === 0 || off + len > 65535 - 20) {
      return void c.dropFragment++;
    }
    const key = `${src}|${dst}|${proto}|${u16(f, o + 4)}`;
    let r = this.#frags.get(key);
    if (!r) {
      if (this.#frags.size >= MAX_REASSEMBLIES) return void c.dropFragment++;
      r = { parts: [], total: -1, got: 0, deadline: this.#scheduler.now() + REASM_TIMEOUT };
      this.#frags.set(key, r);
    }
    const end = off + len;
    const fail = () => {
      this.#frags.delete(key);
      c.dropFragment++;
    };
    if (!more) {
      if (r.total >= 0 && r.total !== end) return fail();
      r.total = end;
    }
    if (r.total >= 0 && end > r.total) return fail();
    // Overlapping fragments are an attack pattern (RFC 5722's reasoning): drop the datagram.
    for (const p of r.parts) if (off < p.off + p.data.length && p.off < end) return fail();
    r.parts.push({ off, data: f.slice(o + ihl, o + total) });
    r.got += len;
    if (r.total < 0 || r.got !== r.total) return;
    this.#frags.delete(key);
    const whole = new Uint8Array(r.total);
    for (const p of r.parts) whole.set(p.data, p.off);
    c.reassembled++;
    this.#trusted = false; // fragments carry no checksum offload
    this.#l4(src, dst, proto, whole, 0, whole.length);
  }

  #l4(src: number, dst: number, proto: number, b: Uint8Array, o: number, len: number): void {
    if (proto === PROTO.TCP) return this.#tcpIn(src, dst, b, o, len);
    if (proto === PROTO.UDP) return this.#udpIn(src, dst, b, o, len);
    if (proto === PROTO.ICMP) return this.#icmpIn(src, dst, b, o, len);
    this.#counters.dropUnsupported++;
  }

  /** Whether `ip` is one of the stack's own addresses. */
  #ours(ip: number): boolean {
    return ip === this.config.gatewayIp || ip === this.config.dnsIp;
  }

  /**
   * The host address a guest flow to `dst` goes to, or null when it is not
   * allowed: the gateway is host loopback only with `hostLoopback`; the
   * guest's own subnet, loopback, "this network", multicast and reserved
   * addresses are never reached.
   */
  target(dst: number): string | null {
    const cfg = this.config;
    if (dst === cfg.gatewayIp) return cfg.hostLoopback ? "127.0.0.1" : null;
    if (((dst ^ cfg.guestIp) & cfg.netmask) === 0) return null;
    const top = dst >>> 24;
    if (top === 0 || top === 127 || top >= 224) return null;
    return formatIpv4(dst);
  }

  // ---- ICMP ----

  #icmpIn(_src: number, dst: number, b: Uint8Array, o: number, len: number): void {
    const c = this.#counters;
    if (len < 8) return void c.dropMalformed++;
    if (checksum(b, o, len) !== 0) return void c.dropChecksum++;
    if (b[o] !== 8 || b[o + 1] !== 0 || !this.#ours(dst)) return void c.dropUnsupported++;
    const { frame, off } = this.#ipv4Frame(dst, PROTO.ICMP, len);
    frame.set(b.subarray(o, o + len), off);
    frame[off] = 0; // echo reply (RFC 792)
    put16(frame, off + 2, 0);
    put16(frame, off + 2, checksum(frame, off, len));
    c.icmpEchoReplies++;
    this.#transmit(frame);
  }

  /** ICMP destination unreachable, port unreachable (RFC 792), quoting the guest's datagram. */
  #portUnreachable(from: number, b: Uint8Array, ipStart: number, quoteEnd: number): void {
    const quote = b.subarray(ipStart, Math.min(quoteEnd, b.length));
    const { frame, off } = this.#ipv4Frame(from, PROTO.ICMP, 8 + quote.length);
    frame[off] = 3;
    frame[off + 1] = 3;
    frame.set(quote, off + 8);
    put16(frame, off + 2, checksum(frame, off, 8 + quote.length));
    this.#transmit(frame);
  }

  // ---- UDP ----

  #udpIn(src: number, dst: number, b: Uint8Array, o: number, len: number): void {
    const c = this.#counters;
    if (len < 8) return void c.dropMalformed++;
    const ulen = u16(b, o + 4);
    if (ulen < 8 || ulen > len) return void c.dropMalformed++;
    if (
      !this.#trusted && u16(b, o + 6) !== 0 &&
      checksum(b, o, ulen, pseudoSum(src, dst, PROTO.UDP, ulen)) !== 0
    ) {
      return void c.dropChecksum++;
    }
    const sport = u16(b, o);
    const dport = u16(b, o + 2);
    const payload = b.subarray(o + 8, o + ulen);
    const cfg = this.config;
    if (dport === 67 && (dst === 0xffffffff || dst === cfg.gatewayIp)) {
      const reply = dhcpReply(cfg, payload);
      if (!reply) return void c.dropUnsupported++;
      c.dhcpReplies++;
      this.#sendUdp(cfg.gatewayIp, 67, 68, reply, 0xffffffff);
      return;
    }
    if (src !== cfg.guestIp) return void c.dropSpoofed++;
    if (dst === cfg.dnsIp && dport === 53) {
      this.#dns.answer(payload, (r) => {
        if (this.#closed) return;
        c.dnsQueries++;
        this.#sendUdp(cfg.dnsIp, 53, sport, r);
      });
      return;
    }
    if (dst === cfg.gatewayIp) {
      const pub = this.#udpPublished.get(dport);
      if (pub) {
        pub.lastUsed = this.#scheduler.now();
        pub.sock.send(payload, pub.hostname, pub.port);
        return;
      }
    }
    const key = `${sport}|${dst}|${dport}`;
    let flow = this.#udp.get(key);
    if (!flow) {
      const host = this.target(dst);
      if (host === null || dport === 0) {
        c.dropUnsupported++;
        if (this.#ours(dst)) this.#portUnreachable(dst, b, o - 20, o + 8);
        return;
      }
      if (this.#tcp.size + this.#udp.size >= cfg.maxFlows) return void c.dropFlowLimit++;
      try {
        flow = new UdpFlow(
          key,
          this.#sockets,
          this.#scheduler,
          host,
          dport,
          (data) => this.#sendUdp(dst, dport, sport, data),
        );
      } catch {
        return void c.dropFlowLimit++; // no host socket to be had (EMFILE, …)
      }
      c.udpFlows++;
      this.#udp.set(key, flow);
    }
    flow.send(payload);
  }

  /** Sends a UDP datagram to the guest (dropped when it would need fragmenting). */
  #sendUdp(src: number, sport: number, dport: number, data: Uint8Array, dstIp?: number): void {
    if (data.length + 28 > this.config.mtu) return void this.#counters.dropUnsupported++;
    const { frame, off } = this.#ipv4Frame(src, PROTO.UDP, 8 + data.length);
    const dst = dstIp ?? this.config.guestIp;
    if (dstIp !== undefined) {
      writeIpv4(frame, ETH_HLEN, src, dst, PROTO.UDP, 28 + data.length, this.#ipId++);
    }
    put16(frame, off, sport);
    put16(frame, off + 2, dport);
    put16(frame, off + 4, 8 + data.length);
    put16(frame, off + 6, 0);
    frame.set(data, off + 8);
    const sum = checksum(
      frame,
      off,
      8 + data.length,
      pseudoSum(src, dst, PROTO.UDP, 8 + data.length),
    );
    put16(frame, off + 6, sum === 0 ? 0xffff : sum); // RFC 768: zero means "no checksum"
    if (dst === 0xffffffff) {
      frame.set(BROADCAST_MAC, 0);
      return this.#send(frame);
    }
    this.#transmit(frame);
  }

  #udpPublishIn(
    rule: number,
    sock: HostUdp | null,
    guestPort: number,
    data: Uint8Array,
    hostname: string,
    port: number,
  ): void {
    if (this.#closed || !sock) return;
    const ck = `${rule}|${hostname}|${port}`;
    let gw = this.#udpClients.get(ck);
    if (gw === undefined || this.#udpPublished.get(gw)?.sock !== sock) {
      try {
        gw = this.#ephemeral();
      } catch {
        return void this.#counters.dropFlowLimit++;
      }
      this.#udpClients.set(ck, gw);
      this.#udpPublished.set(gw, { sock, hostname, port, lastUsed: this.#scheduler.now() });
    }
    this.#udpPublished.get(gw)!.lastUsed = this.#scheduler.now();
    this.#sendUdp(this.config.gatewayIp, gw, guestPort, data);
  }

  #ephemeral(): number {
    for (let i = 0; i < 16384; i++) {
      const p = this.#nextEphemeral++;
      if (this.#nextEphemeral > 65535) this.#nextEphemeral = EPHEMERAL_FIRST;
      if (!this.#udpPublished.has(p) && !this.#portInUse(p)) return p;
    }
    throw new Error("net: no free gateway port for a published connection");
  }

  #portInUse(p: number): boolean {
    for (const c of this.#tcp.values()) {
      if (c.remoteIp === this.config.gatewayIp && c.remotePort === p) return true;
    }
    return false;
  }

  // ---- TCP ----

  #tcpIn(src: number, dst: number, b: Uint8Array, o: number, len: number): void {
    const c = this.#counters;
    if (len < 20) return void c.dropMalformed++;
    const doff = (b[o + 12] >> 4) * 4;
    if (doff < 20 || doff > len) return void c.dropMalformed++;
    if (!this.#trusted && checksum(b, o, len, pseudoSum(src, dst, PROTO.TCP, len)) !== 0) {
      return void c.dropChecksum++;
    }
    const seg: TcpSegment = {
      src,
      dst,
      sport: u16(b, o),
      dport: u16(b, o + 2),
      seq: u32(b, o + 4),
      ack: u32(b, o + 8),
      flags: b[o + 13] & 0x3f,
      wnd: u16(b, o + 14),
      mss: 0,
      wscale: -1,
      payload: b.subarray(o + doff, o + len),
    };
    if (!parseTcpOptions(b, o + 20, o + doff, seg)) return void c.dropMalformed++;
    const f = seg.flags;
    if (
      (f & TCP_FLAG.SYN && f & (TCP_FLAG.FIN | TCP_FLAG.RST)) || seg.sport === 0 || seg.dport === 0
    ) {
      return void c.dropMalformed++;
    }
    // The connection of the previous segment is most often this one's too:
    // matching it first spares building the table key (a string) per segment.
    const last = this.#lastConn;
    let conn = last !== null && last.guestPort === seg.sport && last.remoteIp === dst &&
        last.remotePort === seg.dport
      ? last
      : undefined;
    const key = conn ? conn.key : `${seg.sport}|${dst}|${seg.dport}`;
    conn ??= this.#tcp.get(key);
    this.#lastConn = conn ?? null;
    if (conn && conn.state === "TIME_WAIT" && f & TCP_FLAG.SYN && !(f & TCP_FLAG.ACK)) {
      conn.reset(); // RFC 9293 §3.10.7.4 allows a new SYN to reopen a TIME_WAIT pair
      conn = undefined;
    }
    if (conn) return conn.input(seg);
    if (f & TCP_FLAG.RST) return;
    if (!(f & TCP_FLAG.SYN) || f & TCP_FLAG.ACK) return this.#rstFor(seg);
    const host = this.target(dst);
    if (host === null) {
      c.tcpRefused++;
      return this.#rstFor(seg);
    }
    if (this.#tcp.size + this.#udp.size >= this.config.maxFlows) {
      c.dropFlowLimit++;
      return this.#rstFor(seg);
    }
    let half = 0;
    for (const x of this.#tcp.values()) if (x.halfOpen) half++;
    if (half >= this.config.maxHalfOpen) return void c.dropSynFlood++;
    const nc = new TcpConn(this.#env, seg.sport, dst, seg.dport, "CONNECTING");
    nc.acceptSyn(seg);
    this.#tcp.set(key, nc);
    nc.connect(this.#sockets, host, seg.dport);
  }

  /** A reset for a segment that belongs to no connection (RFC 9293 §3.10.7.1). */
  #rstFor(seg: TcpSegment): void {
    const ackFlag = (seg.flags & TCP_FLAG.ACK) !== 0;
    const seq = ackFlag ? seg.ack : 0;
    const len = seg.payload.length + (seg.flags & TCP_FLAG.SYN ? 1 : 0) +
      (seg.flags & TCP_FLAG.FIN ? 1 : 0);
    const ack = (seg.seq + len) >>> 0;
    const { frame, off } = this.#ipv4Frame(seg.dst, PROTO.TCP, 20);
    put16(frame, off, seg.dport);
    put16(frame, off + 2, seg.sport);
    put32(frame, off + 4, seq);
    put32(frame, off + 8, ackFlag ? 0 : ack);
    frame[off + 12] = 5 << 4;
    frame[off + 13] = TCP_FLAG.RST | (ackFlag ? 0 : TCP_FLAG.ACK);
    put16(
      frame,
      off + 16,
      checksum(frame, off, 20, pseudoSum(seg.dst, this.config.guestIp, PROTO.TCP, 20)),
    );
    this.#counters.tcpResetsSent++;
    this.#transmit(frame);
  }

  /** A connection accepted on a published port: a new connection towards the guest. */
  #accepted(host: HostTcp, guestPort: number): void {
    if (this.#closed) return host.close();
    this.#counters.publishAccepted++;
    if (this.#tcp.size + this.#udp.size >= this.config.maxFlows) {
      this.#counters.dropFlowLimit++;
      return host.close();
    }
    let port: number;
    try {
      port = this.#ephemeral();
    } catch {
      return host.close();
    }
    const conn = new TcpConn(this.#env, guestPort, this.config.gatewayIp, port, "SYN_SENT");
    this.#tcp.set(conn.key, conn);
    conn.openActive(host);
  }

  #requestAck(conn: TcpConn, delayed: boolean): void {
    if (delayed) {
      if (!this.#delayedAcks.has(conn)) {
        this.#delayedAcks.set(conn, this.#scheduler.now() + DELAYED_ACK_MS);
      }
      if (this.#cancelDelayed === null) {
        this.#cancelDelayed = this.#scheduler.after(DELAYED_ACK_MS, this.#onDelayedTimer);
      }
      return;
    }
    this.#delayedAcks.delete(conn);
    this.#acks.add(conn);
    if (this.#ackScheduled) return;
    this.#ackScheduled = true;
    this.#scheduler.defer(() => {
      this.#ackScheduled = false;
      const acks = [...this.#acks];
      this.#acks.clear();
      for (const a of acks) a.flushAck();
    });
  }

  /**
   * The delayed-ACK timer: sends the ACKs that are due and waits again for
   * the earliest one left. A reply that carried an ACK only removed its
   * connection from the map, without cancelling the timer, so a
   * request/response exchange allocates no timer of its own: the timer runs
   * at most once per {@link DELAYED_ACK_MS} while exchanges go on.
   */
  #flushDelayedAcks(): void {
    this.#cancelDelayed = null;
    const now = this.#scheduler.now();
    let next = Infinity;
    let due: TcpConn[] | null = null;
    for (const [conn, at] of this.#delayedAcks) {
      if (at <= now) (due ??= []).push(conn);
      else next = Math.min(next, at);
    }
    if (due) {
      for (const conn of due) this.#delayedAcks.delete(conn);
      for (const conn of due) conn.flushAck();
    }
    if (next !== Infinity && this.#cancelDelayed === null && !this.#closed) {
      this.#cancelDelayed = this.#scheduler.after(next - now, this.#onDelayedTimer);
    }
  }

  /**
   * A segment to the guest carried `conn`'s pending ACK (a reply piggybacked
   * it). The delayed-ACK timer stays armed even when nothing is left for
   * it: it then fires once for nothing, with the loop thread's timer slack
   * at the next scheduler tick (`loop.ts`), which is cheaper than
   * cancelling and re-arming it for every exchange.
   */
  #ackSent(conn: TcpConn): void {
    this.#acks.delete(conn);
    this.#delayedAcks.delete(conn);
  }

  #tick(): void {
    this.#cancelTick = this.#scheduler.after(TICK_MS, () => this.#tick());
    const now = this.#scheduler.now();
    for (const conn of [...this.#tcp.values()]) conn.tick(now);
    for (const [k, f] of this.#udp) {
      if (now - f.lastUsed > this.config.udpIdleMs) {
        f.close();
        this.#udp.delete(k);
      }
    }
    for (const [p, v] of this.#udpPublished) {
      if (now - v.lastUsed > this.config.udpIdleMs) this.#udpPublished.delete(p);
    }
    for (const [k, p] of this.#udpClients) {
      if (!this.#udpPublished.has(p)) this.#udpClients.delete(k);
    }
    for (const [k, r] of this.#frags) {
      if (now > r.deadline) {
        this.#frags.delete(k);
        this.#counters.dropFragment++;
      }
    }
  }
}
