/**
 * The host side of NAT: how the stack opens host sockets. {@link HostSockets}
 * is an interface so tests (the fuzz test) can observe every address the
 * stack tries to reach; {@link denoSockets} is the real implementation.
 *
 * UDP goes through `node:dgram`: `Deno.listenDatagram` is still an unstable
 * API in Deno 2.9 and would need `--unstable-net` everywhere skiff runs.
 *
 * @module
 */

import dgram from "node:dgram";

/** A connected host TCP stream, the subset of `Deno.TcpConn` the stack uses. */
export interface HostTcp {
  /** Reads into `p`; null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; returns how many bytes were written. */
  write(p: Uint8Array): Promise<number>;
  /** Half-closes the sending direction (FIN). */
  closeWrite(): Promise<void>;
  /** Closes the socket. */
  close(): void;
  /** Disables Nagle's algorithm. */
  setNoDelay?(noDelay?: boolean): void;
}

/** A host UDP socket. */
export interface HostUdp {
  /** Sends one datagram (errors are silent, as UDP). */
  send(p: Uint8Array, hostname: string, port: number): void;
  /** Closes the socket; no more messages are delivered. */
  close(): void;
}

/** Called with each datagram a {@link HostUdp} receives; `data` is only valid during the call. */
export type UdpHandler = (data: Uint8Array, hostname: string, port: number) => void;

/** A listening host TCP socket (for `--publish`). */
export interface HostTcpListener {
  /** Waits for the next connection. */
  accept(): Promise<HostTcp & { remoteAddr: Deno.Addr }>;
  /** Stops listening. */
  close(): void;
  /** The bound address. */
  readonly addr: Deno.Addr;
}

/** Opens host sockets on behalf of the guest. */
export interface HostSockets {
  /** Connects to `hostname:port` (an IPv4 literal). */
  connectTcp(hostname: string, port: number): Promise<HostTcp>;
  /**
   * Opens a UDP socket. With `bind` it is bound to that address first (and
   * the promise rejects when the port is taken); without, the kernel binds
   * it to an ephemeral port on first send.
   */
  openUdp(onMessage: UdpHandler, bind?: { hostname: string; port: number }): Promise<HostUdp>;
  /** Listens on `hostname:port` for `--publish`. */
  listenTcp(hostname: string, port: number): HostTcpListener;
}

/** Host sockets through Deno's networking APIs and `node:dgram`. */
export const denoSockets: HostSockets = {
  async connectTcp(hostname, port) {
    const conn = await Deno.connect({ hostname, port, transport: "tcp" });
    conn.setNoDelay(true);
    return conn;
  },
  openUdp(onMessage, bind) {
    const sock = dgram.createSocket("udp4");
    let closed = false;
    sock.on("message", (msg: Uint8Array, rinfo: { address: string; port: number }) => {
      if (!closed) onMessage(msg, rinfo.address, rinfo.port);
    });
    const udp: HostUdp = {
      send(p, hostname, port) {
        if (closed) return;
        try {
          sock.send(p, port, hostname);
        } catch {
          // UDP: a failed send is a lost datagram
        }
      },
      close() {
        if (closed) return;
        closed = true;
        try {
          sock.close();
        } catch {
          // already closed
        }
      },
    };
    if (!bind) {
      sock.on("error", () => {});
      return Promise.resolve(udp);
    }
    return new Promise((resolve, reject) => {
      sock.once("error", (e: Error) => {
        udp.close();
        reject(new Error(`net: cannot bind UDP ${bind.hostname}:${bind.port}: ${e.message}`));
      });
      sock.bind(bind.port, bind.hostname, () => {
        sock.removeAllListeners("error");
        sock.on("error", () => {});
        resolve(udp);
      });
    });
  },
  listenTcp(hostname, port) {
    return Deno.listen({ hostname, port, transport: "tcp" });
  },
};
