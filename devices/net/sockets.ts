/**
 * {@link HostSockets} over libc: non-blocking IPv4 TCP and UDP sockets owned
 * by a {@link Poller}, so the stack's host flows are waited on in the same
 * epoll as the guest's frames. Host TCP sockets have Nagle off (the guest's
 * own stack already decided how to segment).
 *
 * `--publish` listeners may be bound before the loop starts (by the host
 * thread, so a taken port fails before the guest runs) and handed over as
 * {@link PreboundSockets}; {@link PollSockets.listenTcp} and
 * {@link PollSockets.openUdp} adopt them instead of binding again.
 *
 * @module
 */

import { libc, SysError } from "../../kvm_ffi/libc.ts";
import type {
  HostSockets,
  HostTcp,
  HostTcpEvents,
  HostTcpListener,
  HostUdp,
  UdpHandler,
} from "./host.ts";
import { EPOLL, type Poller, type Watch } from "./poller.ts";
import {
  AF_INET,
  bindInet,
  EAGAIN,
  EINPROGRESS,
  EINTR,
  IPPROTO_TCP,
  lastErrno,
  localAddr,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SHUT_WR,
  SO_ERROR,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  sockaddrIn,
  SOL_SOCKET,
  TCP_NODELAY,
} from "./sys.ts";
import { formatIpv4, parseIpv4 } from "./wire.ts";

/** Largest UDP datagram read (IPv4: 65 535 − 20 − 8). */
const UDP_MAX = 65507;
const UDP_MAX_N = BigInt(UDP_MAX);
/** Datagrams or connections taken per readiness event before others get a turn. */
const BATCH = 64;
/** errnos of accept(2) that mean "out of resources": retry later instead of spinning. */
const EMFILE = 24, ENFILE = 23, ENOBUFS = 105, ENOMEM = 12;
const ACCEPT_RETRY_MS = 100;

/** Sockets bound before the loop starts, by `tcp|HOST:PORT` or `udp|HOST:PORT` as requested. */
export type PreboundSockets = Map<string, number[]>;

/** The key of a prebound socket for a requested address. */
export function preboundKey(proto: "tcp" | "udp", hostname: string, port: number): string {
  return `${proto}|${hostname}:${port}`;
}

const noEvents: HostTcpEvents = { connected() {}, readable() {}, writable() {} };

function tcpNoDelay(fd: number): void {
  const one = new Uint8Array([1, 0, 0, 0]);
  libc.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4); // best effort
}

/** A non-blocking TCP socket in the loop. */
class PollTcp implements HostTcp {
  events: HostTcpEvents;
  #poller: Poller;
  #fd: number;
  #watch: Watch | null;
  #connecting: boolean;
  #reading = false;
  #wantWrite = false;
  /** The socket reported an error or hang-up while nobody listened: it is out of epoll. */
  #hung = false;
  #closed = false;

  constructor(poller: Poller, fd: number, connecting: boolean, events: HostTcpEvents) {
    this.#poller = poller;
    this.#fd = fd;
    this.#connecting = connecting;
    this.events = events;
    this.#watch = poller.watch(fd, connecting ? EPOLL.OUT : 0, (ev) => this.#on(ev));
  }

  #update(): void {
    if (this.#closed) return;
    if (this.#hung) {
      // epoll reports ERR/HUP whatever was asked for; a hung socket is out
      // of epoll, so the next read or write sees the condition directly.
      if (this.#reading || this.#wantWrite) {
        this.#poller.defer(() => this.#on(EPOLL.IN | EPOLL.OUT | EPOLL.HUP));
      }
      return;
    }
    const ev = (this.#connecting || this.#wantWrite ? EPOLL.OUT : 0) |
      (this.#reading ? EPOLL.IN : 0);
    this.#watch?.set(ev);
  }

  #on(ev: number): void {
    if (this.#closed) return;
    if (this.#connecting) {
      const err = new Uint8Array(4);
      const len = new Uint8Array(new Uint32Array([4]).buffer);
      libc.getsockopt(this.#fd, SOL_SOCKET, SO_ERROR, err, len);
      this.#connecting = false;
      const ok = err[0] === 0 && err[1] === 0 && (ev & (EPOLL.ERR | EPOLL.HUP)) === 0;
      this.#update();
      this.events.connected(ok);
      return;
    }
    const fault = (ev & (EPOLL.ERR | EPOLL.HUP)) !== 0;
    if (this.#reading && (ev & EPOLL.IN || fault)) this.events.readable();
    if (this.#closed) return;
    if (this.#wantWrite && (ev & EPOLL.OUT || fault)) {
      this.#wantWrite = false;
      this.#update();
      this.events.writable();
    }
    if (this.#closed) return;
    if (fault && !this.#hung && !this.#reading && !this.#wantWrite) {
      this.#hung = true;
      this.#watch?.close();
      this.#watch = null;
    }
  }

  read(p: Uint8Array): number | null {
    const n = libc.read_n(this.#fd, p as Uint8Array<ArrayBuffer>, BigInt(p.length));
    if (n > 0) return n;
    if (n === 0) return null;
    const e = lastErrno();
    if (e === EAGAIN || e === EINTR) return 0;
    throw new SysError("read(host tcp)", e);
  }

  write(p: Uint8Array): number {
    const n = libc.send_n(
      this.#fd,
      p as Uint8Array<ArrayBuffer>,
      BigInt(p.length),
      MSG_NOSIGNAL | MSG_DONTWAIT,
    );
    if (n >= 0) {
      if (n < p.length) this.#armWrite();
      return n;
    }
    const e = lastErrno();
    if (e === EAGAIN || e === EINTR) {
      this.#armWrite();
      return 0;
    }
    throw new SysError("send(host tcp)", e);
  }

  #armWrite(): void {
    if (this.#wantWrite) return;
    this.#wantWrite = true;
    this.#update();
  }

  setReading(on: boolean): void {
    if (this.#reading === on) return;
    this.#reading = on;
    this.#update();
  }

  shutdownWrite(): void {
    if (!this.#closed) libc.shutdown(this.#fd, SHUT_WR);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.events = noEvents;
    this.#watch?.close();
    this.#watch = null;
    libc.close(this.#fd);
  }
}

/** A UDP socket in the loop. */
class PollUdp implements HostUdp {
  #fd: number;
  #watch: Watch;
  #onMessage: UdpHandler;
  #closed = false;
  #buf: Uint8Array<ArrayBuffer>;
  #from = new Uint8Array(16);
  #fromLen = new Uint32Array(1);
  #fromLenBytes = new Uint8Array(this.#fromLen.buffer);
  /** The last destination's sockaddr (a flow sends to one place). */
  #to: { hostname: string; port: number; sa: Uint8Array<ArrayBuffer> } | null = null;

  constructor(poller: Poller, fd: number, onMessage: UdpHandler, buf: Uint8Array<ArrayBuffer>) {
    this.#fd = fd;
    this.#onMessage = onMessage;
    this.#buf = buf;
    this.#watch = poller.watch(fd, EPOLL.IN, () => this.#readable());
  }

  #readable(): void {
    for (let i = 0; i < BATCH && !this.#closed; i++) {
      this.#fromLen[0] = 16;
      const n = libc.recvfrom_n(this.#fd, this.#buf, UDP_MAX_N, 0, this.#from, this.#fromLenBytes);
      if (n < 0) return; // EAGAIN, or an ICMP error queued for this socket: nothing to deliver
      const f = this.#from;
      const ip = ((f[4] << 24) | (f[5] << 16) | (f[6] << 8) | f[7]) >>> 0;
      this.#onMessage(this.#buf.subarray(0, n), formatIpv4(ip), (f[2] << 8) | f[3]);
    }
  }

  send(p: Uint8Array, hostname: string, port: number): void {
    if (this.#closed) return;
    let to = this.#to;
    if (!to || to.hostname !== hostname || to.port !== port) {
      let ip: number;
      try {
        ip = parseIpv4(hostname);
      } catch {
        return;
      }
      to = this.#to = { hostname, port, sa: sockaddrIn(ip, port) };
    }
    // UDP: a failed send (EAGAIN, unreachable) is a lost datagram.
    libc.sendto(
      this.#fd,
      p as Uint8Array<ArrayBuffer>,
      BigInt(p.length),
      MSG_NOSIGNAL | MSG_DONTWAIT,
      to.sa,
      16,
    );
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    libc.close(this.#fd);
  }
}

/** A listening TCP socket in the loop. */
class PollListener implements HostTcpListener {
  readonly addr: Deno.NetAddr;
  #poller: Poller;
  #fd: number;
  #watch: Watch;
  #onAccept: (conn: HostTcp) => void;
  #closed = false;

  constructor(poller: Poller, fd: number, onAccept: (conn: HostTcp) => void) {
    this.#poller = poller;
    this.#fd = fd;
    this.#onAccept = onAccept;
    const a = localAddr(fd);
    this.addr = { transport: "tcp", hostname: formatIpv4(a.ip), port: a.port };
    this.#watch = poller.watch(fd, EPOLL.IN, () => this.#accept());
  }

  #accept(): void {
    for (let i = 0; i < BATCH && !this.#closed; i++) {
      const c = libc.accept4(this.#fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        const e = lastErrno();
        if (e === EMFILE || e === ENFILE || e === ENOBUFS || e === ENOMEM) {
          // Out of fds or memory: the connection stays queued; look again
          // later instead of spinning on a listener that stays readable.
          this.#watch.set(0);
          this.#poller.after(ACCEPT_RETRY_MS, () => {
            if (!this.#closed) this.#watch.set(EPOLL.IN);
          });
        }
        return;
      }
      tcpNoDelay(c);
      this.#onAccept(new PollTcp(this.#poller, c, false, noEvents));
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    libc.close(this.#fd);
  }
}

/** {@link HostSockets} over libc sockets waited on by `poller`. */
export class PollSockets implements HostSockets {
  #poller: Poller;
  #prebound: PreboundSockets;
  /** One receive buffer for every UDP socket (a datagram is only valid during its callback). */
  #udpBuf = new Uint8Array(UDP_MAX);

  /** `prebound` sockets are adopted (and owned) by the listeners asked for at their address. */
  constructor(poller: Poller, prebound: PreboundSockets = new Map()) {
    this.#poller = poller;
    this.#prebound = prebound;
  }

  #adopt(key: string): number | undefined {
    const fds = this.#prebound.get(key);
    const fd = fds?.shift();
    if (fds && fds.length === 0) this.#prebound.delete(key);
    return fd;
  }

  connectTcp(hostname: string, port: number, events: HostTcpEvents): HostTcp {
    const sa = sockaddrIn(parseIpv4(hostname), port);
    const fd = libc.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SysError(`socket(tcp) for ${hostname}:${port}`, lastErrno());
    tcpNoDelay(fd);
    const r = libc.connect(fd, sa, sa.length);
    const err = r < 0 ? lastErrno() : 0;
    if (r < 0 && err !== EINPROGRESS && err !== EINTR) {
      // Refused at once (no route, …): report it like any failed connect, later.
      const sock = new PollTcp(this.#poller, fd, false, events);
      this.#poller.defer(() => sock.events.connected(false));
      return sock;
    }
    // In progress (or, on loopback, already done): EPOLLOUT reports the outcome.
    return new PollTcp(this.#poller, fd, true, events);
  }

  openUdp(onMessage: UdpHandler, bind?: { hostname: string; port: number }): HostUdp {
    let fd: number | undefined;
    if (bind) {
      fd = this.#adopt(preboundKey("udp", bind.hostname, bind.port)) ??
        bindInet(SOCK_DGRAM, bind.hostname, bind.port).fd;
    } else {
      fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new SysError("socket(udp)", lastErrno());
    }
    return new PollUdp(this.#poller, fd, onMessage, this.#udpBuf);
  }

  listenTcp(
    hostname: string,
    port: number,
    onAccept: (conn: HostTcp) => void,
  ): HostTcpListener {
    const fd = this.#adopt(preboundKey("tcp", hostname, port)) ??
      bindInet(SOCK_STREAM, hostname, port).fd;
    return new PollListener(this.#poller, fd, onAccept);
  }

  /** Closes prebound sockets nobody adopted. */
  close(): void {
    for (const fds of this.#prebound.values()) for (const fd of fds) libc.close(fd);
    this.#prebound.clear();
  }
}
