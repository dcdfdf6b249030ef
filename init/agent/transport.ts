/**
 * What the agent client needs from a transport: connections to a guest port
 * and listeners on host ports, each connection a pair of Web streams with
 * backpressure. It maps 1:1 onto the vsock device's host side
 * (`connect(guestPort)`, `listen(hostPort, onConnection)`) and onto AF_UNIX
 * sockets for the native tests (`unix_transport.ts`).
 *
 * @module
 */

/** One stream connection. The owner calls {@link AgentConnection.close} when done with it. */
export interface AgentConnection {
  /** Bytes from the guest; ends when the guest closes or half-closes its side. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the guest; closing it is {@link AgentConnection.closeWrite}. */
  readonly writable: WritableStream<Uint8Array>;
  /** Half-close: the guest reads EOF after what was written; reading goes on. */
  closeWrite(): Promise<void>;
  /** Closes both directions now (vsock: RST). Idempotent; pending reads end. */
  close(): void;
}

/** A listener on one host port that the guest connects to. */
export interface AgentListener {
  /** The host port (vsock port on CID 2). */
  readonly port: number;
  /** The next connection; rejects with the signal's reason on abort, or when closed. */
  accept(signal?: AbortSignal): Promise<AgentConnection>;
  /** Stops listening (and releases the port). Idempotent. */
  close(): void;
}

/** Connections to the guest and host ports for it. */
export interface AgentTransport {
  /** Connects to `guestPort` on the guest. */
  connect(guestPort: number, signal?: AbortSignal): Promise<AgentConnection>;
  /** Listens on `hostPort`, or on a free port the transport picks when it is omitted. */
  listen(hostPort?: number): Promise<AgentListener>;
}
