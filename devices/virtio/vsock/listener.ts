/**
 * A host port accepting guest-initiated vsock connections: either handed to a
 * callback as they arrive, or queued (a bounded backlog) for
 * {@link VsockListener.accept} and `for await`.
 *
 * A queued connection stays queued whatever the guest does with it meanwhile:
 * one the guest has already closed or reset is still returned by `accept()`
 * (its bytes, then EOF or the reset), as accept(2) returns a connection its
 * peer has closed. The device answers a guest's REQUEST for the listener at
 * once, so a guest running beside the event loop can connect, send and close
 * before the host's `accept()` runs; the agent's stdio ports are such a case
 * (the host waits for exactly one connection per port), and forgetting the
 * ended connection there left that `accept()` waiting forever.
 *
 * @module
 */

import type { Connection, VsockStream } from "./connection.ts";

/** Called with each accepted connection. */
export type VsockConnectionHandler = (stream: VsockStream) => void;

/** Unaccepted connections a listener keeps by default; more are refused with RST. */
export const DEFAULT_BACKLOG = 64;

/** A listening host port. */
export class VsockListener implements AsyncIterable<VsockStream>, Disposable {
  /** The host port. */
  readonly port: number;
  #handler: VsockConnectionHandler | null;
  #backlog: number;
  #queue: Connection[] = [];
  #waiters: ((s: VsockStream | null) => void)[] = [];
  #closed = false;
  #onClose: (l: VsockListener) => void;
  #onTaken: (c: Connection) => void;

  /**
   * Made by `VirtioVsock.listen`; `onTaken` hears of each queued connection
   * that leaves the backlog (accepted, or reset by {@link close}).
   */
  constructor(
    port: number,
    handler: VsockConnectionHandler | null,
    backlog: number,
    onClose: (l: VsockListener) => void,
    onTaken: (c: Connection) => void = () => {},
  ) {
    this.port = port;
    this.#handler = handler;
    this.#backlog = backlog;
    this.#onClose = onClose;
    this.#onTaken = onTaken;
  }

  /** True once {@link close}d. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Offers a new connection: handed to the callback or a waiting `accept`, or
   * queued. False when the backlog is full (the device then refuses it).
   */
  offer(conn: Connection): boolean {
    if (this.#closed) return false;
    if (this.#handler) {
      this.#handler(conn);
      return true;
    }
    const w = this.#waiters.shift();
    if (w) {
      w(conn);
      return true;
    }
    if (this.#queue.length >= this.#backlog) return false;
    this.#queue.push(conn);
    return true;
  }

  /** Whether `conn` waits in the backlog (offered, not accepted yet). */
  holds(conn: Connection): boolean {
    return this.#queue.includes(conn);
  }

  /**
   * The next guest connection, or null once the listener is closed. It may
   * have ended already (the guest sent and closed before this was called).
   */
  accept(): Promise<VsockStream | null> {
    const c = this.#queue.shift();
    if (c) {
      this.#onTaken(c);
      return Promise.resolve(c);
    }
    if (this.#closed) return Promise.resolve(null);
    return new Promise((r) => this.#waiters.push(r));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<VsockStream> {
    for (;;) {
      const s = await this.accept();
      if (!s) return;
      yield s;
    }
  }

  /** Stops listening: queued connections are reset, waiting `accept`s get null. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#queue.splice(0)) {
      this.#onTaken(c);
      c.close();
    }
    for (const w of this.#waiters.splice(0)) w(null);
    this.#onClose(this);
  }

  /** {@link close} for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
