/**
 * The host client of the guest agent (`AGENT.md`): one connection per
 * request over an {@link AgentTransport}; a spawned command's stdin, stdout
 * and stderr are their own connections, so data flows between the host's
 * streams and the command with the transport's backpressure and never
 * through the agent. Every call takes an `AbortSignal`.
 *
 * @example
 * ```ts ignore
 * import { AgentClient, UnixTransport } from "./mod.ts";
 * const agent = new AgentClient(new UnixTransport("/tmp/agent-dir"));
 * const r = await agent.exec(["uname", "-a"]);
 * console.log(r.code, r.stdoutText);
 * await using child = await agent.spawn(["cat"], { stdin: "piped" });
 * ```
 *
 * @module
 */

import {
  AgentError,
  AgentProtocolError,
  AgentRequestError,
  AgentStepError,
  FileTooLargeError,
} from "./errors.ts";
import { AGENT_PORT, type RequestKind } from "./protocol.ts";
import { ReplyReader } from "./reply_reader.ts";
import type { AgentConnection, AgentListener, AgentTransport } from "./transport.ts";
import {
  encodeExec,
  encodeKill,
  encodePoweroff,
  encodeReadFile,
  encodeSetup,
  encodeSignalFrame,
  encodeWriteFile,
  frameRequest,
  type Reply,
  type SetupSpec,
} from "./wire.ts";

/** Search list for argv[0] when the environment has no PATH. */
export const AGENT_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Default `maxBytes` of {@link AgentClient.readFile}: 1 GiB. */
export const READ_FILE_DEFAULT_MAX_BYTES = 1 << 30;

/** Linux x86-64 signal numbers by name (arch/x86/include/uapi/asm/signal.h). */
const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGIOT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPOLL: 29,
  SIGPWR: 30,
  SIGSYS: 31,
};

/** A signal by Deno name (`"SIGTERM"`) or Linux number. */
export type AgentSignal = Deno.Signal | number;

/** The Linux number of `s`; throws for names Linux does not have. */
export function signalNumber(s: AgentSignal): number {
  if (typeof s === "number") return s;
  const n = SIGNALS[s];
  if (n === undefined) throw new AgentRequestError(`signal ${s} does not exist on Linux`);
  return n;
}

/** How a command ended. */
export interface AgentStatus {
  /** Exit code, or 128 + signal number when a signal ended it (as shells report it). */
  code: number;
  /** The signal that ended it, or null. */
  signal: number | null;
  /** Exited with code 0. */
  success: boolean;
}

/** Options of {@link AgentClient.spawn}. */
export interface AgentSpawnOptions {
  /** Environment ("K=V" strings or a record); its PATH is also the search list for argv[0]. */
  env?: Record<string, string> | string[];
  /** Working directory inside the root (default "/"). */
  cwd?: string;
  /** Directory to chroot into (default "": the agent's own root). */
  root?: string;
  /** uid and gid to run as (default: root). */
  uid?: number;
  gid?: number;
  /** Supplementary groups, with a gid (default: none). */
  groups?: readonly number[];
  /** "piped": a {@link AgentChild.stdin} stream; "null" (default): /dev/null. */
  stdin?: "piped" | "null";
  /** "piped" (default): a readable stream; "null": /dev/null. */
  stdout?: "piped" | "null";
  /** "piped" (default), "null", or "stdout": the same stream as stdout. */
  stderr?: "piped" | "null" | "stdout";
  /** Aborting kills the command (its whole process group, SIGKILL). */
  signal?: AbortSignal;
}

/** Options of {@link AgentClient.exec}. */
export interface AgentExecOptions extends Omit<AgentSpawnOptions, "stdin" | "stdout" | "stderr"> {
  /** Bytes or text for the command's stdin (default: /dev/null). */
  stdin?: Uint8Array | string;
  /** "stdout" merges stderr into stdout (default separate). */
  stderr?: "piped" | "stdout";
}

/** What {@link AgentClient.exec} resolves to. */
export interface AgentExecResult extends AgentStatus {
  stdout: Uint8Array;
  stderr: Uint8Array;
  stdoutText: string;
  stderrText: string;
}

/** Options of {@link AgentClient.writeFile}. */
export interface AgentWriteFileOptions {
  /** Permission bits, applied exactly (default 0o644). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Directory to chroot into first (default ""). */
  root?: string;
  /** Unlink an existing entry first (replaces a symlink rather than writing through it). */
  replace?: boolean;
  signal?: AbortSignal;
}

/** Options of {@link AgentClient.readFile}. */
export interface AgentReadFileOptions {
  /** Directory to chroot into first (default ""). */
  root?: string;
  /**
   * The most bytes to accept (default {@link READ_FILE_DEFAULT_MAX_BYTES},
   * 1 GiB): a larger file (or an endless one, as `/dev/zero`) rejects with
   * {@link FileTooLargeError} once it exceeds it, and the read stops.
   */
  maxBytes?: number;
  signal?: AbortSignal;
}

/** Guest figures from /proc (the agent's own root). */
export interface AgentStats {
  /** MemTotal − MemAvailable, bytes (/proc/meminfo). */
  memoryUsedBytes: number;
  /** MemTotal, bytes. */
  memoryTotalBytes: number;
  /** CPU time spent not idle since boot, all CPUs (user+nice+system+irq+softirq+steal of /proc/stat), ms. */
  cpuTimeMs: number;
  /** Scheduling entities (processes and threads) that exist (/proc/loadavg). */
  processes: number;
}

/** Runs `fn`, closing `cleanup` when `signal` aborts; rejects with the signal's reason then. */
async function guarded<T>(
  signal: AbortSignal | undefined,
  cleanup: () => void,
  fn: () => Promise<T>,
): Promise<T> {
  if (!signal) return await fn();
  signal.throwIfAborted();
  signal.addEventListener("abort", cleanup, { once: true });
  try {
    return await fn();
  } catch (e) {
    if (signal.aborted) throw signal.reason;
    throw e;
  } finally {
    signal.removeEventListener("abort", cleanup);
  }
}

function envList(env: AgentSpawnOptions["env"]): string[] {
  if (env === undefined) return [`PATH=${AGENT_DEFAULT_PATH}`];
  return Array.isArray(env) ? [...env] : Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

function statusOf(r: Reply): AgentStatus {
  if (r.kind === "exit") return { code: r.code, signal: null, success: r.code === 0 };
  if (r.kind === "signal") return { code: 128 + r.signal, signal: r.signal, success: false };
  throw new AgentProtocolError(`expected a command status, got ${JSON.stringify(r)}`);
}

/** Throws for an `error` reply (what: the request, for the message). */
function checkReply(what: string, r: Reply | null): Reply {
  if (r === null) {
    throw new AgentProtocolError(`${what}: the agent closed the connection without a reply`);
  }
  if (r.kind === "error") throw new AgentStepError(what, r.step, r.errno);
  return r;
}

/** Writes `bytes` and releases the writer (the stream stays open). */
async function send(conn: AgentConnection, bytes: Uint8Array): Promise<void> {
  const w = conn.writable.getWriter();
  try {
    await w.write(bytes);
  } finally {
    w.releaseLock();
  }
}

/** A readable that closes `conn` once it ends or is cancelled (pulled on demand). */
function ownedReadable(conn: AgentConnection): ReadableStream<Uint8Array> {
  const reader = conn.readable.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(c) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        conn.close();
        throw e;
      }
      if (r.done) {
        c.close();
        conn.close();
      } else c.enqueue(r.value);
    },
    async cancel(reason) {
      await reader.cancel(reason).catch(() => {});
      conn.close();
    },
  }, { highWaterMark: 0 });
}

/**
 * A command running in the guest. `await using` kills it (SIGKILL to its
 * process group, by closing the control connection's write side) unless it
 * has ended, waits for its status and closes every connection.
 */
export class AgentChild implements AsyncDisposable {
  /** Its pid in the guest. */
  readonly pid: number;
  /** How it ends (the control connection's last reply). */
  readonly status: Promise<AgentStatus>;
  #control: AgentConnection;
  #controlWriter: WritableStreamDefaultWriter<Uint8Array>;
  #stdin: WritableStream<Uint8Array> | null;
  #stdout: ReadableStream<Uint8Array> | null;
  #stderr: ReadableStream<Uint8Array> | null;
  #conns: AgentConnection[];
  #done = false;
  #dropped = false;
  #signal?: AbortSignal;
  #onAbort = () => void this.#drop();

  /** Used by {@link AgentClient.spawn}. */
  constructor(
    pid: number,
    control: AgentConnection,
    replies: ReplyReader,
    streams: {
      stdin: AgentConnection | null;
      stdout: AgentConnection | null;
      stderr: AgentConnection | null;
    },
    signal?: AbortSignal,
  ) {
    this.pid = pid;
    this.#control = control;
    this.#controlWriter = control.writable.getWriter();
    this.#conns = [
      control,
      ...[streams.stdin, streams.stdout, streams.stderr].filter((c) => c !== null),
    ] as AgentConnection[];
    this.#stdin = streams.stdin ? stdinStream(streams.stdin) : null;
    this.#stdout = streams.stdout ? ownedReadable(streams.stdout) : null;
    this.#stderr = streams.stderr ? ownedReadable(streams.stderr) : null;
    this.status = (async () => {
      try {
        const r = await replies.reply();
        return statusOf(checkReply(`command ${pid}`, r));
      } finally {
        this.#done = true;
        signal?.removeEventListener("abort", this.#onAbort);
        control.close();
        // Nobody reads the command's stdin any more.
        streams.stdin?.close();
      }
    })();
    this.status.catch(() => {});
    this.#signal = signal;
    if (signal?.aborted) void this.#drop();
    else signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /** The command's stdin (spawned with `stdin: "piped"`); closing it sends EOF. */
  get stdin(): WritableStream<Uint8Array> {
    if (!this.#stdin) throw new AgentError("stdin is not piped");
    return this.#stdin;
  }
  /** The command's stdout (spawned with `stdout: "piped"`). */
  get stdout(): ReadableStream<Uint8Array> {
    if (!this.#stdout) throw new AgentError("stdout is not piped");
    return this.#stdout;
  }
  /** The command's stderr (spawned with `stderr: "piped"`). */
  get stderr(): ReadableStream<Uint8Array> {
    if (!this.#stderr) throw new AgentError("stderr is not piped");
    return this.#stderr;
  }

  /**
   * Sends `signal` (default SIGTERM) to the command, or with `group` to its
   * process group. Its supervisor delivers it only while it has not reaped
   * the command, so a reused pid is never signalled; after the command ended
   * this throws.
   */
  async kill(signal: AgentSignal = "SIGTERM", o: { group?: boolean } = {}): Promise<void> {
    const frame = encodeSignalFrame(signalNumber(signal), o.group ?? false);
    if (this.#done) throw new AgentError(`command ${this.pid} has already ended`);
    if (this.#dropped) throw new AgentError(`command ${this.pid} is being killed (dropped)`);
    await this.#controlWriter.write(frame);
  }

  /** Half-closes the control connection: the supervisor SIGKILLs the group and reports it. */
  async #drop(): Promise<void> {
    if (this.#done || this.#dropped) return;
    this.#dropped = true;
    await this.#controlWriter.close().catch(() => {});
  }

  /** Kills it unless it ended, waits for the status, closes every connection. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    await this.#drop();
    await this.status.catch(() => {});
    for (const c of this.#conns) c.close();
  }
}

/** A writable for a command's stdin: closing it half-closes the connection (EOF in the guest). */
function stdinStream(conn: AgentConnection): WritableStream<Uint8Array> {
  const writer = conn.writable.getWriter();
  return new WritableStream<Uint8Array>({
    write: (chunk) => writer.write(chunk),
    close: () => writer.close(),
    abort: (reason) => writer.abort(reason),
  }, { highWaterMark: 1 });
}

/** A client of one guest agent. */
export class AgentClient {
  #t: AgentTransport;

  /** A client that reaches the agent through `transport`. */
  constructor(transport: AgentTransport) {
    this.#t = transport;
  }

  /** Opens a request connection and sends the request. */
  async #request(
    kind: RequestKind,
    payload: Uint8Array,
    signal?: AbortSignal,
  ): Promise<{ conn: AgentConnection; replies: ReplyReader }> {
    signal?.throwIfAborted();
    const conn = await this.#t.connect(AGENT_PORT, signal);
    try {
      await guarded(signal, () => conn.close(), () => send(conn, frameRequest(kind, payload)));
    } catch (e) {
      conn.close();
      throw e;
    }
    return { conn, replies: new ReplyReader(conn.readable) };
  }

  /** Sends a request whose answer is one line; returns it (errors thrown). */
  async #simple(what: string, kind: RequestKind, payload: Uint8Array, signal?: AbortSignal) {
    const { conn, replies } = await this.#request(kind, payload, signal);
    try {
      return await guarded(
        signal,
        () => conn.close(),
        async () => checkReply(what, await replies.reply()),
      );
    } finally {
      conn.close();
    }
  }

  /**
   * Mounts, host name and network, in this order (see `SetupSpec`). Throws
   * {@link AgentStepError} naming the failing step (`mount /mnt/root: ENOENT`).
   */
  async setup(config: SetupSpec, o: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#simple("setup", "SETUP", encodeSetup(config), o.signal);
  }

  /** Sends `signal` to `pid` in the guest (or its process group). */
  async kill(
    pid: number,
    signal: AgentSignal = "SIGTERM",
    o: { group?: boolean; signal?: AbortSignal } = {},
  ): Promise<void> {
    await this.#simple(
      `kill ${pid}`,
      "KILL",
      encodeKill(pid, signalNumber(signal), o.group ?? false),
      o.signal,
    );
  }

  /**
   * Starts `argv` in the guest. Its streams are the connections themselves:
   * nothing is buffered beyond the transport's windows and one chunk per
   * stream. Rejects with {@link AgentStepError} when the agent could not
   * start it (a missing working directory is reported by the command itself:
   * status 126 with the message on stderr; an unknown command: 127).
   */
  async spawn(argv: readonly string[], o: AgentSpawnOptions = {}): Promise<AgentChild> {
    const env = envList(o.env);
    const pathEntry = env.findLast((e) => e.startsWith("PATH="));
    const modes = {
      stdin: o.stdin ?? "null",
      stdout: o.stdout ?? "piped",
      stderr: o.stderr ?? "piped",
    };
    const spec = {
      argv,
      env,
      cwd: o.cwd ?? "/",
      root: o.root ?? "",
      path: pathEntry ? pathEntry.slice(5) : AGENT_DEFAULT_PATH,
      uid: o.uid ?? null,
      gid: o.gid ?? null,
      groups: o.groups ?? [],
      ports: { stdin: 0, stdout: 0, stderr: 0 },
    };
    encodeExec(spec); // refuse bad input before listening
    o.signal?.throwIfAborted();
    const listeners: Partial<Record<"stdin" | "stdout" | "stderr", AgentListener>> = {};
    const accepted: AgentConnection[] = [];
    let control: AgentConnection | null = null;
    const closeAll = () => {
      for (const l of Object.values(listeners)) l.close();
      for (const c of accepted) c.close();
      control?.close();
    };
    try {
      for (const k of ["stdin", "stdout", "stderr"] as const) {
        if (modes[k] === "piped") listeners[k] = await this.#t.listen();
      }
      spec.ports = {
        stdin: listeners.stdin?.port ?? 0,
        stdout: listeners.stdout?.port ?? 0,
        stderr: modes.stderr === "stdout"
          ? (listeners.stdout?.port ?? 0)
          : (listeners.stderr?.port ?? 0),
      };
      const req = await this.#request("EXEC", encodeExec(spec), o.signal);
      control = req.conn;
      const accept = async (k: "stdin" | "stdout" | "stderr") => {
        const l = listeners[k];
        if (!l) return null;
        const c = await l.accept();
        accepted.push(c);
        l.close();
        return c;
      };
      const what = `spawn ${argv[0]}`;
      const [first, stdin, stdout, stderr] = await guarded(o.signal, closeAll, () => {
        const first = req.replies.reply().then((r) => {
          // On an error no connection comes: stop waiting for them.
          if (r === null || r.kind === "error") closeAll();
          return checkReply(what, r);
        });
        return Promise.all([
          first,
          ...(["stdin", "stdout", "stderr"] as const).map((k) =>
            accept(k).catch(async (e) => {
              // The reply's error says more than a closed listener.
              await first;
              throw e;
            })
          ),
        ]);
      });
      if (first.kind !== "pid") {
        throw new AgentProtocolError(`${what}: expected a pid, got ${JSON.stringify(first)}`);
      }
      return new AgentChild(first.pid, control, req.replies, {
        stdin,
        stdout,
        stderr: modes.stderr === "stdout" ? null : stderr,
      }, o.signal);
    } catch (e) {
      closeAll();
      throw e;
    }
  }

  /**
   * Runs `argv` to the end and collects its output (bytes and text). With
   * `stdin` data, it is written while the output is read.
   */
  async exec(argv: readonly string[], o: AgentExecOptions = {}): Promise<AgentExecResult> {
    const input = typeof o.stdin === "string" ? new TextEncoder().encode(o.stdin) : o.stdin;
    await using child = await this.spawn(argv, {
      ...o,
      stdin: input ? "piped" : "null",
      stdout: "piped",
      stderr: o.stderr === "stdout" ? "stdout" : "piped",
    });
    const collect = (s: ReadableStream<Uint8Array> | null) =>
      s ? new Response(s).bytes() : Promise.resolve(new Uint8Array(0));
    const feed = async () => {
      if (!input) return;
      const w = child.stdin.getWriter();
      try {
        await w.write(input);
        await w.close();
      } catch {
        // The command exited without reading all of it: as with a pipe, not an error here.
      }
    };
    // Aborting kills the command (spawn's signal); then this rejects with the reason.
    const [stdout, stderr, status] = await Promise.all([
      collect(child.stdout),
      collect(o.stderr === "stdout" ? null : child.stderr),
      child.status,
      feed(),
    ]);
    o.signal?.throwIfAborted();
    const dec = new TextDecoder();
    return {
      ...status,
      stdout,
      stderr,
      stdoutText: dec.decode(stdout),
      stderrText: dec.decode(stderr),
    };
  }

  /**
   * Writes `data` to `path` in the guest: created or truncated, `mode`
   * applied exactly, streamed (any size; a stream is sent as it is read).
   */
  async writeFile(
    path: string,
    data: Uint8Array | string | ReadableStream<Uint8Array>,
    o: AgentWriteFileOptions = {},
  ): Promise<void> {
    const payload = encodeWriteFile({
      path,
      root: o.root ?? "",
      mode: o.mode ?? 0o644,
      uid: o.uid ?? null,
      gid: o.gid ?? null,
      replace: o.replace ?? false,
    });
    const { conn, replies } = await this.#request("WRITE_FILE", payload, o.signal);
    let sent = 0;
    try {
      await guarded(o.signal, () => conn.close(), async () => {
        // The agent answers at the end, or early with an error (then it stops reading).
        const reply = replies.reply();
        reply.catch(() => {});
        const w = conn.writable.getWriter();
        const sending = (async () => {
          const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
          if (bytes instanceof Uint8Array) {
            // Chunks keep one write's memory and latency bounded.
            for (let off = 0; off < bytes.length; off += 1 << 20) {
              const chunk = bytes.subarray(off, Math.min(bytes.length, off + (1 << 20)));
              await w.write(chunk);
              sent += chunk.length;
            }
          } else {
            for await (const chunk of bytes) {
              await w.write(chunk);
              sent += chunk.length;
            }
          }
          await w.close();
        })();
        const sendError = await sending.then(() => null, (e) => e ?? new Error("send failed"));
        const r = checkReply(`write ${path}`, await reply);
        if (sendError) throw sendError;
        if (r.kind !== "ok" || r.value !== sent) {
          throw new AgentProtocolError(
            `write ${path}: sent ${sent} bytes, the agent reported ${JSON.stringify(r)}`,
          );
        }
      });
    } finally {
      conn.close();
    }
  }

  /**
   * The bytes of `path` in the guest, at most `maxBytes` (default 1 GiB):
   * beyond it this rejects with {@link FileTooLargeError}, stops reading and
   * closes the connection. A file the agent cannot open or read rejects with
   * {@link AgentStepError} (`errno` ENOENT, EISDIR, …).
   */
  async readFile(path: string, o: AgentReadFileOptions = {}): Promise<Uint8Array> {
    const maxBytes = o.maxBytes ?? READ_FILE_DEFAULT_MAX_BYTES;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new AgentRequestError(
        `maxBytes: expected a non-negative integer number of bytes, got ${maxBytes}`,
      );
    }
    const payload = encodeReadFile({ path, root: o.root ?? "" });
    const { conn, replies } = await this.#request("READ_FILE", payload, o.signal);
    try {
      return await guarded(o.signal, () => conn.close(), async () => {
        const r = checkReply(`read ${path}`, await replies.reply());
        if (r.kind !== "ok") throw new AgentProtocolError(`read ${path}: got ${JSON.stringify(r)}`);
        if (r.value !== null && r.value > maxBytes) {
          throw new FileTooLargeError(path, maxBytes, r.value);
        }
        if (r.value !== null) {
          const out = new Uint8Array(r.value);
          let at = 0;
          for await (const chunk of replies.rest()) {
            if (at + chunk.length > out.length) {
              throw new AgentProtocolError(
                `read ${path}: more than the ${r.value} bytes announced`,
              );
            }
            out.set(chunk, at);
            at += chunk.length;
          }
          if (at !== out.length) {
            throw new AgentProtocolError(
              `read ${path}: got ${at} of ${r.value} bytes (a read error in the guest, or the file shrank)`,
            );
          }
          return out;
        }
        const chunks: Uint8Array[] = [];
        let total = 0;
        for await (const chunk of replies.rest()) {
          total += chunk.length;
          // Stop at once: the file may never end (/dev/zero).
          if (total > maxBytes) throw new FileTooLargeError(path, maxBytes);
          chunks.push(chunk);
        }
        const out = new Uint8Array(total);
        let at = 0;
        for (const c of chunks) {
          out.set(c, at);
          at += c.length;
        }
        return out;
      });
    } finally {
      conn.close();
    }
  }

  /** Memory, CPU time and process count of the guest, from its /proc. */
  async stats(o: { signal?: AbortSignal } = {}): Promise<AgentStats> {
    const dec = new TextDecoder();
    const read = async (p: string) => dec.decode(await this.readFile(p, { signal: o.signal }));
    const [meminfo, stat, loadavg] = await Promise.all([
      read("/proc/meminfo"),
      read("/proc/stat"),
      read("/proc/loadavg"),
    ]);
    return parseStats(meminfo, stat, loadavg);
  }

  /**
   * Syncs and powers the guest off. Resolves once the agent acknowledged it
   * or the connection ended (the VM went away first).
   */
  async poweroff(o: { signal?: AbortSignal } = {}): Promise<void> {
    const { conn, replies } = await this.#request("POWEROFF", encodePoweroff(), o.signal);
    try {
      await guarded(o.signal, () => conn.close(), async () => {
        let r: Reply | null;
        try {
          r = await replies.reply();
        } catch (e) {
          if (e instanceof AgentProtocolError) throw e;
          return; // the connection died with the VM
        }
        if (r !== null) checkReply("power off", r);
      });
    } finally {
      conn.close();
    }
  }
}

/** The figures of {@link AgentStats} from the three /proc files' text. */
export function parseStats(meminfo: string, stat: string, loadavg: string): AgentStats {
  const kb = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, "m").exec(meminfo);
    if (!m) throw new AgentProtocolError(`/proc/meminfo has no ${key}`);
    return Number(m[1]) * 1024;
  };
  const total = kb("MemTotal");
  const available = kb("MemAvailable");
  const cpu = /^cpu\s+(.*)$/m.exec(stat);
  if (!cpu) throw new AgentProtocolError("/proc/stat has no cpu line");
  // user nice system idle iowait irq softirq steal … in USER_HZ (100 on x86, fs/proc/stat.c).
  const t = cpu[1].trim().split(/\s+/).map(Number);
  const busy = [0, 1, 2, 5, 6, 7].reduce((s, i) => s + (t[i] ?? 0), 0);
  const la = /^\S+ \S+ \S+ \d+\/(\d+) \d+/.exec(loadavg);
  if (!la) throw new AgentProtocolError(`bad /proc/loadavg: ${JSON.stringify(loadavg)}`);
  return {
    memoryUsedBytes: total - available,
    memoryTotalBytes: total,
    cpuTimeMs: busy * 10,
    processes: Number(la[1]),
  };
}
