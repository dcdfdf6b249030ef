/**
 * One QEMU process: skiff listens on every Unix socket first (QMP, the serial
 * console, each virtio-serial port), starts QEMU as their client, accepts the
 * connections, and completes the QMP handshake. {@link QemuProcess.stop}
 * ends it with SIGTERM and, after a grace period, SIGKILL. The caller owns the
 * private directory the sockets live in.
 *
 * @module
 */

import { pcieLayoutOf, qemuArgs, type QemuLaunchSpec, type SerialPortSpec } from "./cmdline.ts";
import { QmpClient } from "./qmp.ts";
import type { MigrationInfo, QemuVersion, QmpWaitOptions } from "./qmp_types.ts";
import { HotplugSlots } from "./slots.ts";

/** Default QEMU binary (looked up on PATH). */
export const QEMU_BINARY = "qemu-system-x86_64";

/** util-linux's setpriv (Debian: essential), which can set PR_SET_PDEATHSIG before it execs. */
const SETPRIV = "/usr/bin/setpriv";
let setprivPresent: boolean | null = null;

/**
 * `argv` started through `setpriv --pdeathsig KILL` where setpriv exists, so
 * that QEMU is killed when skiff dies without stopping it (SIGKILL, a crash):
 * the signal is armed in the child and kept across its execve of QEMU
 * (prctl(2) PR_SET_PDEATHSIG). The "parent" is the spawning thread, which is
 * the JS thread that starts the VM and lives as long as the VM is used.
 * Without setpriv QEMU is started directly (and can outlive a killed skiff).
 */
export function withParentDeathSignal(argv: string[]): string[] {
  if (setprivPresent === null) {
    try {
      setprivPresent = Deno.statSync(SETPRIV).isFile;
    } catch {
      setprivPresent = false;
    }
  }
  return setprivPresent ? [SETPRIV, "--pdeathsig", "KILL", "--", ...argv] : argv;
}

/** QEMU failed to start or died during startup. */
export class QemuStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QemuStartError";
  }
}

/** What {@link QemuProcess.start} needs beyond the socket paths, which it picks. */
export type QemuStartOptions =
  & Omit<QemuLaunchSpec, "qmpSocket" | "consoleSocket" | "ports">
  & {
    /** Private directory (mode 0700) for the sockets; the caller removes it. */
    dir: string;
    /** virtio-serial port names, in order; ids and sockets are derived. */
    portNames: string[];
    /** Connect the serial console (ttyS0) to a socket (otherwise it is discarded). */
    console: boolean;
    /** QEMU binary (default `qemu-system-x86_64`). */
    binary?: string;
    /** Startup limit in ms for QEMU to connect every socket and greet on QMP. */
    startTimeoutMs?: number;
    /** Told "QEMU spawned" and "QMP up" as they happen (`--verbose`'s timeline). */
    timeline?: (event: string) => void;
  };

async function acceptOne(listener: Deno.Listener, what: string): Promise<Deno.Conn> {
  try {
    return await listener.accept();
  } catch (e) {
    throw new QemuStartError(`QEMU never connected its ${what} socket: ${(e as Error).message}`);
  }
}

/** A running QEMU with its QMP session and accepted console/port connections. */
export class QemuProcess implements AsyncDisposable {
  /** The QMP session (handshake done). */
  readonly qmp: QmpClient;
  /** QEMU's version from the QMP greeting. */
  readonly version: QemuVersion;
  /** Serial console connection, when asked for. */
  readonly console: Deno.Conn | null;
  /** Port connections by port name. */
  readonly ports: ReadonlyMap<string, Deno.Conn>;
  /** QEMU's process id. */
  readonly pid: number;
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** The full launch spec (socket paths filled in). */
  readonly spec: QemuLaunchSpec;
  /** QEMU's arguments (without the binary), for `--verbose`. */
  readonly args: readonly string[];
  /** Free and used hot-plug root ports (none on microvm). */
  readonly slots: HotplugSlots;
  #child: Deno.ChildProcess;
  /** The private directory of the sockets. */
  #dir: string;
  /** An incoming QEMU that has not loaded a stream yet. */
  #incoming: boolean;
  #output: { text: string };
  #status: Deno.CommandStatus | null = null;

  private constructor(
    child: Deno.ChildProcess,
    exited: Promise<Deno.CommandStatus>,
    output: { text: string },
    qmp: QmpClient,
    version: QemuVersion,
    console: Deno.Conn | null,
    ports: Map<string, Deno.Conn>,
    spec: QemuLaunchSpec,
    args: string[],
    dir: string,
  ) {
    this.#child = child;
    this.#dir = dir;
    this.#incoming = spec.incoming === true;
    this.spec = spec;
    this.args = args;
    this.slots = new HotplugSlots(pcieLayoutOf(spec)?.rootPorts ?? []);
    this.pid = child.pid;
    this.exited = exited;
    this.#output = output;
    this.qmp = qmp;
    this.version = version;
    this.console = console;
    this.ports = ports;
    exited.then((s) => this.#status = s);
  }

  /** QEMU's own stdout/stderr so far (its error messages), trimmed to the last 4 KiB. */
  get diagnostics(): string {
    return this.#output.text.trim();
  }

  /** Exit status once QEMU has exited, else null. */
  get status(): Deno.CommandStatus | null {
    return this.#status;
  }

  /** Starts QEMU; resolves once every socket is connected and QMP is ready. */
  static async start(opts: QemuStartOptions): Promise<QemuProcess> {
    const listeners: Deno.Listener[] = [];
    const listen = (name: string) => {
      const path = `${opts.dir}/${name}.sock`;
      const l = Deno.listen({ transport: "unix", path });
      listeners.push(l);
      return { path, l };
    };
    const conns: Deno.Conn[] = [];
    let child: Deno.ChildProcess | null = null;
    let qmp: QmpClient | null = null;
    try {
      const qmpL = listen("qmp");
      const conL = opts.console ? listen("console") : null;
      const portLs: { spec: SerialPortSpec; l: Deno.Listener }[] = opts.portNames.map((
        name,
        i,
      ) => {
        const { path, l } = listen(`port${i}`);
        return { spec: { id: `port${i}`, name, socketPath: path }, l };
      });
      const {
        dir: _dir,
        portNames: _names,
        console: _console,
        binary: _binary,
        startTimeoutMs: _startTimeoutMs,
        timeline: _timeline,
        ...launch
      } = opts;
      const spec: QemuLaunchSpec = {
        ...launch,
        qmpSocket: qmpL.path,
        consoleSocket: conL?.path ?? null,
        ports: portLs.map((p) => p.spec),
      };
      const args = qemuArgs(spec);
      const [cmd, ...cmdArgs] = withParentDeathSignal([opts.binary ?? QEMU_BINARY, ...args]);
      child = new Deno.Command(cmd, {
        args: cmdArgs,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      opts.timeline?.(`QEMU spawned (pid ${child.pid})`);
      const output = { text: "" };
      const collect = async (s: ReadableStream<Uint8Array>) => {
        const d = new TextDecoder();
        for await (const chunk of s) {
          output.text = (output.text + d.decode(chunk, { stream: true })).slice(-4096);
        }
      };
      const collected = Promise.all([collect(child.stdout), collect(child.stderr)]);
      const status = child.status;
      const exited = status.then(async (s) => {
        await collected.catch(() => {});
        return s;
      });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const died = Promise.race([
        exited.then((s) => {
          throw new QemuStartError(
            `QEMU exited during startup (code ${s.code}${s.signal ? `, ${s.signal}` : ""}): ${
              output.text.trim().split("\n").slice(-3).join(" | ") || "no message"
            }`,
          );
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new QemuStartError(`QEMU did not start within ${opts.startTimeoutMs ?? 30000} ms`),
              ),
            opts.startTimeoutMs ?? 30000,
          );
        }),
      ]);
      died.catch(() => {});
      try {
        const accepted = Promise.all([
          acceptOne(qmpL.l, "QMP"),
          conL ? acceptOne(conL.l, "console") : Promise.resolve(null),
          ...portLs.map((p) => acceptOne(p.l, `port ${p.spec.name}`)),
        ]);
        accepted.then((cs) => cs.forEach((c) => c && conns.push(c)), () => {});
        const [qmpConn, conConn, ...portConns] = await Promise.race([accepted, died]);
        qmp = new QmpClient(qmpConn!);
        const version = await Promise.race([qmp.handshake(), died]);
        opts.timeline?.("QMP up");
        const ports = new Map<string, Deno.Conn>();
        portLs.forEach((p, i) => ports.set(p.spec.name, portConns[i]!));
        return new QemuProcess(
          child,
          exited,
          output,
          qmp,
          version,
          conConn,
          ports,
          spec,
          args,
          opts.dir,
        );
      } finally {
        clearTimeout(timer);
      }
    } catch (e) {
      if (qmp) await qmp.close().catch(() => {});
      for (const c of conns) closeQuietly(c);
      if (child) await killAndWait(child, 0);
      throw e;
    } finally {
      // The listeners are only needed until QEMU connected; remove their paths.
      for (const l of listeners) closeQuietly(l);
      for (const l of listeners) {
        await Deno.remove((l.addr as Deno.UnixAddr).path).catch(() => {});
      }
    }
  }

  /**
   * Loads the migration stream in `path` into this incoming QEMU (started
   * with `incoming`): `migrate-incoming unix:SOCKET`, then the file's bytes
   * written into QEMU's connection. QEMU 7.2 has no `file:` URI, and its
   * `exec:cat FILE` forks a shell and `cat` (measured here: 6.5 ms per load
   * against 2.8 ms over the socket). Resolves once the migration is
   * `completed`; rejects as {@link QmpClient.waitMigration} does. Once only.
   * `whileLoading` runs once QEMU has taken the command, while it loads.
   */
  async migrateIncomingFromFile(
    path: string,
    o: QmpWaitOptions & { whileLoading?: () => void } = {},
  ): Promise<MigrationInfo> {
    if (!this.#incoming) {
      throw new Error("QEMU was not started incoming, or it has loaded a stream already");
    }
    this.#incoming = false;
    const socket = `${this.#dir}/incoming.sock`;
    const file = await Deno.open(path, { read: true });
    let conn: Deno.UnixConn;
    try {
      // QEMU listens on the socket by the time the command returns.
      await this.qmp.migrateIncoming(`unix:${socket}`);
      conn = await Deno.connect({ transport: "unix", path: socket });
    } catch (e) {
      file.close();
      throw e;
    }
    // QEMU may stop reading a bad stream and exit: that broken pipe is not
    // the error to report, QEMU's own message (or the wait's) is. The copy
    // closes the file and the connection's writing side at the end.
    const fed = file.readable.pipeTo(conn.writable).catch(() => {});
    try {
      o.whileLoading?.();
      return await this.qmp.waitMigration(o);
    } finally {
      // Closed before the copy is awaited: after a completed load QEMU has
      // read it all, and after a failure (an abort, a QEMU that stopped
      // reading) the copy must not hold this up.
      try {
        conn.close();
      } catch {
        // closed with its stream
      }
      await fed;
      await Deno.remove(socket).catch(() => {});
    }
  }

  /**
   * Stops QEMU: SIGTERM, then SIGKILL after `graceMs`. Closes the QMP session
   * and every connection. Resolves to the exit status. Idempotent.
   */
  async stop(graceMs = 2000): Promise<Deno.CommandStatus> {
    const status = await killAndWait(this.#child, graceMs, this.exited);
    await this.qmp.close().catch(() => {});
    if (this.console) closeQuietly(this.console);
    for (const c of this.ports.values()) closeQuietly(c);
    return status;
  }

  /** {@link stop} for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch {
    // already closed
  }
}

/** SIGTERM, wait `graceMs`, SIGKILL; resolves once the process is gone. */
async function killAndWait(
  child: Deno.ChildProcess,
  graceMs: number,
  exited: Promise<Deno.CommandStatus> = child.status,
): Promise<Deno.CommandStatus> {
  let done = false;
  const finished = exited.then((s) => {
    done = true;
    return s;
  });
  await Promise.race([finished, Promise.resolve()]);
  if (done) return await finished;
  try {
    child.kill(graceMs > 0 ? "SIGTERM" : "SIGKILL");
  } catch {
    // exited meanwhile
  }
  if (graceMs > 0) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), graceMs));
    const first = await Promise.race([finished, timeout]);
    clearTimeout(timer);
    if (first === "timeout") {
      try {
        child.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
  }
  return await finished;
}
