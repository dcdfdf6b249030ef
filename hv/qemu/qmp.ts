/**
 * A small QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.txt):
 * newline-separated JSON over a stream. The server greets with
 * `{"QMP": {"version": …, "capabilities": […]}}`; the client leaves
 * capabilities-negotiation mode with `qmp_capabilities`; then each command
 * gets exactly one `return` or `error` carrying the command's `id`, and
 * asynchronous `event`s may arrive at any time.
 *
 * @module
 */

/** QEMU's version from the greeting. */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** An asynchronous QMP event (e.g. `SHUTDOWN`, `STOP`). */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** A command answered with `{"error": …}`, or the connection failing. */
export class QmpError extends Error {
  constructor(message: string, readonly errorClass?: string) {
    super(message);
    this.name = "QmpError";
  }
}

/** Oldest QEMU skiff drives: 7.2 brought `-netdev stream` and a stable microvm ACPI. */
export const QMP_MIN_VERSION: QemuVersion = { major: 7, minor: 2, micro: 0 };

/** `a >= b` for versions. */
export function versionAtLeast(a: QemuVersion, b: QemuVersion): boolean {
  if (a.major !== b.major) return a.major > b.major;
  if (a.minor !== b.minor) return a.minor > b.minor;
  return a.micro >= b.micro;
}

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string };

/** A QMP session over any byte stream (normally a Unix socket). */
export class QmpClient {
  #conn: Deno.Conn;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #greeting: Promise<QemuVersion>;
  #resolveGreeting!: (v: QemuVersion) => void;
  #rejectGreeting!: (e: Error) => void;
  #closed = false;
  #reader: Promise<void>;
  /** Every event received, in order (a session is short: no need to trim). */
  readonly events: QmpEvent[] = [];
  #eventListeners = new Set<(e: QmpEvent) => void>();

  /** Wraps an accepted or connected QMP stream; call {@link handshake} next. */
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#greeting = new Promise((resolve, reject) => {
      this.#resolveGreeting = resolve;
      this.#rejectGreeting = reject;
    });
    this.#greeting.catch(() => {});
    this.#reader = this.#readLoop();
  }

  async #readLoop(): Promise<void> {
    const decoder = new TextDecoder();
    let buf = "";
    let failure: Error = new QmpError("QMP connection closed");
    try {
      const chunk = new Uint8Array(65536);
      for (;;) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        buf += decoder.decode(chunk.subarray(0, n), { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) this.#dispatch(line);
        }
      }
    } catch (e) {
      failure = new QmpError(`QMP connection failed: ${(e as Error).message}`);
    }
    this.#closed = true;
    this.#rejectGreeting(failure);
    for (const p of this.#pending.values()) p.reject(failure);
    this.#pending.clear();
  }

  #dispatch(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // not JSON: ignore rather than kill the session
    }
    if ("QMP" in msg) {
      const v = (msg.QMP as { version?: { qemu?: QemuVersion } }).version?.qemu;
      if (v && typeof v.major === "number") this.#resolveGreeting(v);
      else this.#rejectGreeting(new QmpError(`QMP greeting without a version: ${line}`));
      return;
    }
    if ("event" in msg) {
      const ev = msg as unknown as QmpEvent;
      this.events.push(ev);
      for (const l of this.#eventListeners) l(ev);
      return;
    }
    const id = msg.id;
    if (typeof id !== "number") return;
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    if ("error" in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(`QMP ${p.command} failed: ${err.desc ?? line}`, err.class));
    } else {
      p.resolve(msg.return);
    }
  }

  /**
   * Waits for the greeting, checks the version against `minVersion`, and
   * leaves capabilities-negotiation mode. Resolves to QEMU's version.
   */
  async handshake(minVersion: QemuVersion = QMP_MIN_VERSION): Promise<QemuVersion> {
    const v = await this.#greeting;
    if (!versionAtLeast(v, minVersion)) {
      throw new QmpError(
        `QEMU ${v.major}.${v.minor}.${v.micro} is too old: skiff needs ≥ ` +
          `${minVersion.major}.${minVersion.minor}.${minVersion.micro}`,
      );
    }
    await this.execute("qmp_capabilities");
    return v;
  }

  /** Runs one command; resolves to its `return` value. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.#closed) throw new QmpError(`QMP ${command}: connection closed`);
    const id = this.#nextId++;
    const line = JSON.stringify(
      args ? { execute: command, arguments: args, id } : {
        execute: command,
        id,
      },
    ) + "\n";
    const result = new Promise<unknown>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, command });
    });
    try {
      const bytes = new TextEncoder().encode(line);
      for (let off = 0; off < bytes.length;) off += await this.#conn.write(bytes.subarray(off));
    } catch (e) {
      this.#pending.delete(id);
      throw new QmpError(`QMP ${command}: write failed: ${(e as Error).message}`);
    }
    return await result;
  }

  /** `query-status`: the run state, e.g. `running`, `paused`, `shutdown`. */
  async status(): Promise<{ running: boolean; status: string }> {
    return await this.execute("query-status") as { running: boolean; status: string };
  }

  /** `quit`: QEMU exits at once (the connection then closes). */
  async quit(): Promise<void> {
    try {
      await this.execute("quit");
    } catch (e) {
      // QEMU may close the socket before the reply arrives: that is success.
      if (!(e instanceof QmpError) || !/closed/.test(e.message)) throw e;
    }
  }

  /** Calls `listener` for every later event; returns an unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.#eventListeners.add(listener);
    return () => this.#eventListeners.delete(listener);
  }

  /** True once the connection has closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the connection and waits for the reader to finish. */
  async close(): Promise<void> {
    if (!this.#closed) {
      try {
        this.#conn.close();
      } catch {
        // already closed
      }
    }
    await this.#reader;
  }
}
