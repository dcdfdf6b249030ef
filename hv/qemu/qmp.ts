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

import {
  MigrationError,
  type MigrationInfo,
  type PciDeviceInfo,
  type QemuVersion,
  QMP_MIN_VERSION,
  QmpError,
  type QmpEvent,
  type QmpWaitOptions,
  shellQuotePath,
  versionAtLeast,
} from "./qmp_types.ts";

/** Migration states after which nothing changes (QAPI `MigrationStatus`). */
const MIGRATION_DONE = new Set(["completed", "failed", "cancelled"]);

const DEFAULT_WAIT_MS = 60_000;

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
  /** Called once when the connection closes (pending {@link waitEvent}s). */
  #closeListeners = new Set<() => void>();

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
    for (const l of this.#closeListeners) l();
    this.#closeListeners.clear();
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
      p.reject(
        new QmpError(
          `QMP ${p.command} failed: ${err.desc ?? line}`,
          err.class,
          p.command,
          err.desc,
        ),
      );
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
    // The reader may fail it while the write below is in flight, and a failed
    // write never awaits it: handled here, awaited (and surfaced) below.
    result.catch(() => {});
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

  /** Event waits ({@link waitEvent}) still pending (diagnostics and tests). */
  get pendingWaits(): number {
    return this.#closeListeners.size;
  }

  /** Resolves once the connection has closed (QEMU exited or {@link close} was called). */
  get ended(): Promise<void> {
    return this.#reader;
  }

  /**
   * Waits for the first event (from now on) that `match` accepts. Rejects
   * when the connection closes, `signal` aborts or `timeoutMs` passes.
   * Subscribe before sending the command that causes the event, or it may
   * be missed: call this first and await it after.
   */
  waitEvent(
    match: (e: QmpEvent) => boolean,
    what: string,
    o: QmpWaitOptions = {},
  ): Promise<QmpEvent> {
    const limit = o.timeoutMs ?? DEFAULT_WAIT_MS;
    return new Promise<QmpEvent>((resolve, reject) => {
      const cleanup = () => {
        unsubscribe();
        clearTimeout(timer);
        o.signal?.removeEventListener("abort", onAbort);
        this.#closeListeners.delete(onClose);
      };
      const unsubscribe = this.onEvent((e) => {
        if (!match(e)) return;
        cleanup();
        resolve(e);
      });
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpError(`QMP: no ${what} within ${limit} ms`));
      }, limit);
      const onAbort = () => {
        cleanup();
        reject(o.signal!.reason ?? new DOMException("aborted", "AbortError"));
      };
      const onClose = () => {
        cleanup();
        reject(new QmpError(`QMP connection closed while waiting for ${what}`));
      };
      if (o.signal?.aborted) return onAbort();
      if (this.#closed) return onClose();
      o.signal?.addEventListener("abort", onAbort, { once: true });
      this.#closeListeners.add(onClose);
    });
  }

  // ---- typed commands (QAPI schema, qapi/*.json of QEMU 7.2) ----

  /** `stop`: pauses the vCPUs (run state `paused`). */
  async stop(): Promise<void> {
    await this.execute("stop");
  }

  /** `cont`: resumes the vCPUs (also after an incoming migration started with `-S`). */
  async cont(): Promise<void> {
    await this.execute("cont");
  }

  /** `migrate-set-capabilities`: e.g. `{ events: true, "x-ignore-shared": true }`. */
  async setMigrationCapabilities(caps: Record<string, boolean>): Promise<void> {
    await this.execute("migrate-set-capabilities", {
      capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
    });
  }

  /** `query-migrate`. */
  async queryMigrate(): Promise<MigrationInfo> {
    return await this.execute("query-migrate") as MigrationInfo;
  }

  /**
   * Waits until the current migration (outgoing or incoming) ends, from
   * `MIGRATION` events (capability `events` must be on) and one
   * `query-migrate` for a migration that ended before the wait began.
   * Resolves with `completed`; throws {@link MigrationError} for `failed` or
   * `cancelled` (with QEMU's reason when it gives one). A QEMU that exits on
   * a failed incoming migration (7.2 does) rejects with a closed-connection
   * {@link QmpError}.
   */
  async waitMigration(o: QmpWaitOptions = {}): Promise<MigrationInfo> {
    // Cancelled when the migration had ended before (no timer left behind).
    const done = new AbortController();
    const ended = this.waitEvent(
      (e) => e.event === "MIGRATION" && MIGRATION_DONE.has(String(e.data?.status)),
      "end of the migration",
      { ...o, signal: o.signal ? AbortSignal.any([o.signal, done.signal]) : done.signal },
    );
    ended.catch(() => {});
    let info: MigrationInfo;
    try {
      info = await this.queryMigrate();
      if (!MIGRATION_DONE.has(info.status)) {
        await ended;
        info = await this.queryMigrate();
      }
    } finally {
      done.abort();
    }
    if (info.status !== "completed") {
      throw new MigrationError(
        `migration ${info.status}${info["error-desc"] ? `: ${info["error-desc"]}` : ""}`,
        info.status,
      );
    }
    return info;
  }

  /**
   * `migrate` to a file through `exec:cat > FILE` (QEMU 7.2 has no `file:`
   * URI; passing an fd with `getfd` needs SCM_RIGHTS on the QMP socket,
   * which a Deno `Conn` cannot send) and waits for completion.
   */
  async migrateToFile(path: string, o: QmpWaitOptions = {}): Promise<MigrationInfo> {
    await this.execute("migrate", { uri: `exec:cat > ${shellQuotePath(path)}` });
    return await this.waitMigration(o);
  }

  /**
   * `migrate-incoming` from `uri` (QEMU started `-incoming defer`); resolves
   * once QEMU took the command — {@link waitMigration} waits for the load.
   * A file is loaded by `QemuProcess.migrateIncomingFromFile` (over a Unix socket).
   */
  async migrateIncoming(uri: string): Promise<void> {
    await this.execute("migrate-incoming", { uri });
  }

  /** `chardev-add` of a Unix socket client connecting to `path` (a back-end listening there). */
  async chardevAddSocket(id: string, path: string): Promise<void> {
    await this.execute("chardev-add", {
      id,
      backend: {
        type: "socket",
        data: { addr: { type: "unix", data: { path } }, server: false },
      },
    });
  }

  /** `chardev-remove`. */
  async chardevRemove(id: string): Promise<void> {
    await this.execute("chardev-remove", { id });
  }

  /** `device_add` of `driver` with id `id` and its properties (`bus`, `chardev`, `tag`…). */
  async deviceAdd(driver: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
    await this.execute("device_add", { driver, id, ...props });
  }

  /**
   * `device_del`, then waits for its `DEVICE_DELETED` event: on q35 the guest
   * has to acknowledge the ACPI eject, so a paused or unresponsive guest
   * makes this wait until `timeoutMs`.
   */
  async deviceDel(id: string, o: QmpWaitOptions = {}): Promise<void> {
    const refused = new AbortController();
    const deleted = this.waitEvent(
      (e) => e.event === "DEVICE_DELETED" && e.data?.device === id,
      `DEVICE_DELETED for '${id}'`,
      { ...o, signal: o.signal ? AbortSignal.any([o.signal, refused.signal]) : refused.signal },
    );
    deleted.catch(() => {});
    try {
      await this.execute("device_del", { id });
    } catch (e) {
      refused.abort(); // no event will come: drop the waiter and its timer
      throw e;
    }
    await deleted;
  }

  /** `netdev_add` (e.g. `{type: "stream", id, server: false, addr: {…}}` or `{type: "vhost-user", id, chardev}`). */
  async netdevAdd(args: { type: string; id: string } & Record<string, unknown>): Promise<void> {
    await this.execute("netdev_add", args);
  }

  /** `netdev_del`. */
  async netdevDel(id: string): Promise<void> {
    await this.execute("netdev_del", { id });
  }

  /** `query-pci`: every PCI bus with its devices (bridges list theirs under `pci_bridge`). */
  async queryPci(): Promise<{ bus: number; devices: PciDeviceInfo[] }[]> {
    return await this.execute("query-pci") as { bus: number; devices: PciDeviceInfo[] }[];
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
