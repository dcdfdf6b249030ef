/**
 * The agent transport over AF_UNIX sockets, for the native agent (the agent
 * run as a process, `agentProgram({ native: { dir } })`): the guest's agent
 * port is `<dir>/agent.sock`, host port P is `<dir>/port-<P>.sock`.
 *
 * @module
 */

import { AGENT_PORT } from "./protocol.ts";
import type { AgentConnection, AgentListener, AgentTransport } from "./transport.ts";

/** Read size of a connection's readable stream (a BYOB reader may ask for less). */
const CHUNK = 256 << 10;

/** First port {@link UnixTransport} hands out (vsock ports below 1024 are privileged). */
const FIRST_PORT = 1025;

/** Whether `e` is what Deno raises for I/O on a resource closed meanwhile. */
function closedUnderneath(e: unknown): boolean {
  return e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted;
}

/** A Deno unix connection as an {@link AgentConnection}. */
export class UnixConnection implements AgentConnection {
  #conn: Deno.UnixConn;
  #closed = false;
  #writeClosed = false;
  /** Bytes from the peer: pulled only when the consumer reads (high-water mark 0). */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the peer: each write completes when the socket took all of it. */
  readonly writable: WritableStream<Uint8Array>;

  /** Wraps `conn`; {@link UnixConnection.close} closes it. */
  constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
    this.readable = new ReadableStream({
      type: "bytes",
      autoAllocateChunkSize: CHUNK,
      pull: async (c) => {
        const req = c.byobRequest!;
        const view = req.view!;
        let n: number | null;
        try {
          n = this.#closed
            ? null
            : await this.#conn.read(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
        } catch (e) {
          if (!this.#closed || !closedUnderneath(e)) throw e;
          n = null;
        }
        if (n === null) {
          c.close();
          req.respond(0);
        } else req.respond(n);
      },
      cancel: () => this.close(),
    }, { highWaterMark: 0 });
    this.writable = new WritableStream({
      write: async (chunk) => {
        for (let off = 0; off < chunk.length;) {
          if (this.#closed) throw new Deno.errors.BadResource("connection closed");
          off += await this.#conn.write(chunk.subarray(off));
        }
      },
      close: () => this.#shutdownWrite(),
      abort: () => this.close(),
    });
  }

  async #shutdownWrite(): Promise<void> {
    if (this.#closed || this.#writeClosed) return;
    this.#writeClosed = true;
    await this.#conn.closeWrite();
  }

  /** Half-closes (the writable must not be locked; closing it does the same). */
  async closeWrite(): Promise<void> {
    if (this.writable.locked) await this.#shutdownWrite();
    else await this.writable.close();
  }

  /** Closes the socket. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed by Deno
    }
  }
}

/** A unix listener at `<dir>/port-<P>.sock`; the socket file goes with it. */
class UnixListener implements AgentListener {
  #listener: Deno.UnixListener;
  #path: string;
  #release: () => void;
  #closed = false;
  readonly port: number;

  constructor(port: number, path: string, release: () => void) {
    this.port = port;
    this.#path = path;
    this.#release = release;
    // A socket file left by an earlier run of this directory would make listen fail.
    try {
      Deno.removeSync(path);
    } catch {
      // none
    }
    this.#listener = Deno.listen({ transport: "unix", path });
  }

  async accept(signal?: AbortSignal): Promise<AgentConnection> {
    signal?.throwIfAborted();
    const onAbort = () => this.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return new UnixConnection(await this.#listener.accept());
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw e;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    try {
      Deno.removeSync(this.#path);
    } catch {
      // gone already
    }
    this.#release();
  }
}

/** The transport of a native agent whose socket directory is `dir`. */
export class UnixTransport implements AgentTransport {
  #dir: string;
  #used = new Set<number>();
  #next = FIRST_PORT;

  /** A transport for the agent listening at `<dir>/agent.sock`. */
  constructor(dir: string) {
    this.#dir = dir;
  }

  /** Connects to the agent (only {@link AGENT_PORT} exists). */
  async connect(guestPort: number, signal?: AbortSignal): Promise<AgentConnection> {
    if (guestPort !== AGENT_PORT) {
      throw new Deno.errors.ConnectionRefused(`no guest port ${guestPort} (only ${AGENT_PORT})`);
    }
    signal?.throwIfAborted();
    const conn = await Deno.connect({ transport: "unix", path: `${this.#dir}/agent.sock` });
    if (signal?.aborted) {
      conn.close();
      throw signal.reason;
    }
    return new UnixConnection(conn);
  }

  /** Listens on `hostPort` or the next free port from 1025. */
  listen(hostPort?: number): Promise<AgentListener> {
    let port = hostPort;
    if (port === undefined) {
      for (let i = 0; i < 0x10000 && (port === undefined || this.#used.has(port)); i++) {
        port = this.#next;
        this.#next = this.#next >= 0xffff ? FIRST_PORT : this.#next + 1;
      }
    }
    if (port === undefined || this.#used.has(port)) {
      return Promise.reject(new Deno.errors.AddrInUse(`host port ${port ?? "(none free)"} in use`));
    }
    const p = port;
    this.#used.add(p);
    try {
      return Promise.resolve(
        new UnixListener(p, `${this.#dir}/port-${p}.sock`, () => this.#used.delete(p)),
      );
    } catch (e) {
      this.#used.delete(p);
      return Promise.reject(e);
    }
  }
}
