/**
 * UDP NAT flows: one host socket per (guest port, destination) pair, replies
 * accepted only from that destination (port-restricted cone, as slirp).
 *
 * @module
 */

import type { HostSockets, HostUdp, Scheduler } from "./host.ts";

/** One guest UDP flow carried by a host socket. */
export class UdpFlow {
  /** Table key `guestPort|remoteIp|remotePort`. */
  readonly key: string;
  /** When the flow last carried a datagram (the scheduler's clock). */
  lastUsed: number;
  #sock: HostUdp;
  #clock: Scheduler;
  #hostname: string;
  #port: number;
  #closed = false;

  /**
   * Opens the flow's host socket (throws when none can be made); `deliver`
   * receives each reply from the target (the bytes are only valid during the
   * call).
   */
  constructor(
    key: string,
    sockets: HostSockets,
    clock: Scheduler,
    hostname: string,
    port: number,
    deliver: (data: Uint8Array) => void,
  ) {
    this.key = key;
    this.#clock = clock;
    this.lastUsed = clock.now();
    this.#hostname = hostname;
    this.#port = port;
    this.#sock = sockets.openUdp((data, from, fromPort) => {
      if (this.#closed || from !== hostname || fromPort !== port) return;
      this.lastUsed = this.#clock.now();
      deliver(data);
    });
  }

  /** Sends a guest datagram to the target (`data` is only read during the call). */
  send(data: Uint8Array): void {
    this.lastUsed = this.#clock.now();
    if (!this.#closed) this.#sock.send(data, this.#hostname, this.#port);
  }

  /** Closes the host socket. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sock.close();
  }
}
