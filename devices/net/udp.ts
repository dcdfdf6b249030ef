/**
 * UDP NAT flows: one host socket per (guest port, destination) pair, replies
 * accepted only from that destination (port-restricted cone, as slirp).
 *
 * @module
 */

import type { HostSockets, HostUdp } from "./host.ts";

/** One guest UDP flow carried by a host socket. */
export class UdpFlow {
  /** Table key `guestPort|remoteIp|remotePort`. */
  readonly key: string;
  /** When the flow last carried a datagram (performance.now()). */
  lastUsed: number = performance.now();
  #sock: HostUdp | null = null;
  #queue: Uint8Array[] = [];
  #hostname: string;
  #port: number;
  #closed = false;

  /**
   * Starts the flow; `deliver` receives each reply from the target (the bytes
   * are only valid during the call); `onError` runs once if the socket cannot
   * be opened.
   */
  constructor(
    key: string,
    sockets: HostSockets,
    hostname: string,
    port: number,
    deliver: (data: Uint8Array) => void,
    onError: () => void,
  ) {
    this.key = key;
    this.#hostname = hostname;
    this.#port = port;
    sockets.openUdp((data, from, fromPort) => {
      if (this.#closed || from !== hostname || fromPort !== port) return;
      this.lastUsed = performance.now();
      deliver(data);
    }).then((s) => {
      if (this.#closed) return s.close();
      this.#sock = s;
      for (const d of this.#queue) s.send(d, hostname, port);
      this.#queue = [];
    }, () => {
      if (!this.#closed) onError();
    });
  }

  /** Sends a guest datagram to the target (the flow keeps `data`). */
  send(data: Uint8Array): void {
    this.lastUsed = performance.now();
    if (this.#sock) this.#sock.send(data, this.#hostname, this.#port);
    else if (this.#queue.length < 64) this.#queue.push(data);
  }

  /** Closes the host socket. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#sock?.close();
  }
}
