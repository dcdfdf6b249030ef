/**
 * Benchmark of the user-mode network stack against slirp4netns, both
 * serving a network namespace through a TAP device, measured in the same
 * run: TCP throughput guest → host loopback (`tcp-up`) and host → guest
 * (`tcp-down`) with iperf3 (MTU 65520 on both), and 1-byte request/response
 * transactions per second over one connection (`rr`). Each stack runs in
 * its own process (`skiff net tap`, `slirp4netns`) and namespace, both set
 * up at once, so a load spike on a shared machine hits neither side alone:
 * iperf3 alternates between them for two rounds and the best round of each
 * counts; rr keeps one client per namespace running (connection open, JIT
 * warm) and interleaves many short samples of the two (ABBA order), then
 * reports the median of each side, their ratio, and the spread (min–max of
 * each side and of the per-pair ratios), since a transaction costs four
 * wake-ups across four processes and its rate follows the scheduler on a
 * loaded machine. `rr-1cpu` repeats rr with every process of both chains
 * (stack, client, echo server) on one CPU: a wake-up of a process on the
 * other CPU of a small VM costs more than a whole transaction on one CPU,
 * so unpinned rr mostly measures where the scheduler put the four
 * processes in that run (5k to 37k transactions/s for the same stack),
 * while on one CPU the rate is the CPU time a transaction costs all
 * parties, which is what a stack controls. Needs root, /dev/net/tun,
 * iperf3, slirp4netns and taskset.
 *
 * @module
 */

import { median } from "../../tests/bench_util.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const GUEST_TOOL = new URL("./testdata/guest_tool.ts", import.meta.url).pathname;
const MTU = 65520;
/** Seconds per iperf3 round. */
const IPERF_SECONDS = 2;
/** Alternating iperf3 rounds (the best of each side counts). */
const IPERF_ROUNDS = 2;
/** Milliseconds per rr sample, and interleaved samples per side (after one warm-up each). */
const RR_SAMPLE_MS = 250;
const RR_SAMPLES = 20;
const dec = new TextDecoder();

async function run(cmd: string, args: string[], ms = 30_000): Promise<string> {
  const o = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(ms),
    env: { DENO_NO_UPDATE_CHECK: "1" },
  }).output();
  if (!o.success) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${o.code}: ${dec.decode(o.stderr)}`);
  }
  return dec.decode(o.stdout);
}

/** Reads `stream` until `marker` appears (or throws after `ms`); returns the text. */
async function waitFor(stream: ReadableStream<Uint8Array>, marker: string, ms = 15_000) {
  const reader = stream.getReader();
  let text = "";
  const timer = setTimeout(() => reader.cancel(), ms);
  try {
    while (!text.includes(marker)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`'${marker}' never appeared: ${text}`);
      text += dec.decode(value);
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  stream.cancel().catch(() => {});
  return text;
}

/** A namespace served by one stack (process `pid`); `gw` reaches host loopback from inside. */
interface Served {
  ns: string;
  gw: string;
  pid: number;
  stop(): Promise<void>;
}

function nsName(): string {
  return `sknb${Deno.pid}x${Math.floor(Math.random() * 1e6)}`;
}

async function serveSkiff(): Promise<Served> {
  const ns = nsName();
  await run("ip", ["netns", "add", ns]);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", MAIN, "net", "tap", "--netns", ns, "--net=host-loopback"]
      .concat(["--mtu", String(MTU)]),
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // exited
    }
    await child.status;
    await run("ip", ["netns", "del", ns]);
  };
  try {
    await waitFor(child.stderr, "Ctrl-C");
  } catch (e) {
    await stop();
    throw e;
  }
  return { ns, gw: "10.42.0.1", pid: child.pid, stop };
}

async function serveSlirp(): Promise<Served> {
  const ns = nsName();
  await run("ip", ["netns", "add", ns]);
  const child = new Deno.Command("slirp4netns", {
    args: ["--configure", `--mtu=${MTU}`, "--netns-type=path", `/run/netns/${ns}`, "tap0"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // exited
    }
    await child.status;
    await run("ip", ["netns", "del", ns]);
  };
  // Ready once slirp4netns has configured tap0 in the namespace.
  for (let i = 0;; i++) {
    const r = await run("ip", ["-n", ns, "-o", "addr", "show"]);
    if (r.includes("10.0.2.100")) break;
    if (i === 100) {
      await stop();
      throw new Error(`slirp4netns did not configure tap0: ${r}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { ns, gw: "10.0.2.2", pid: child.pid, stop };
}

/** iperf3 from inside `s.ns` to a one-shot server on host 127.0.0.1; Gbit/s received. */
async function iperf(s: Served, reverse: boolean): Promise<number> {
  const port = 15201 + Math.floor(Math.random() * 1000);
  const server = new Deno.Command("iperf3", {
    args: ["-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", String(port)],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    await waitFor(server.stdout, "listening");
    const out = await run("ip", [
      "netns",
      "exec",
      s.ns,
      "iperf3",
      "-c",
      s.gw,
      "-p",
      String(port),
      "-t",
      String(IPERF_SECONDS),
      "-J",
      ...(reverse ? ["-R"] : []),
    ], (IPERF_SECONDS + 20) * 1000);
    return JSON.parse(out).end.sum_received.bits_per_second / 1e9;
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // exited
    }
    await server.status;
  }
}

/**
 * A request/response client inside `s.ns` (guest_tool `rr-loop`) with one
 * connection to the echo server on host loopback; {@link sample} runs it
 * for a while and returns the transactions per second.
 */
class RrClient {
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #text = "";

  /** With `cpu`, the client runs on that CPU only. */
  constructor(s: Served, port: number, cpu?: number) {
    const args = ["netns", "exec", s.ns, Deno.execPath(), "run", "-A", "--no-check", GUEST_TOOL]
      .concat(["rr-loop", s.gw, String(port)]);
    this.#child = new Deno.Command(cpu === undefined ? "ip" : "taskset", {
      args: cpu === undefined ? args : ["-c", String(cpu), "ip", ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
      env: { DENO_NO_UPDATE_CHECK: "1" },
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#reader = this.#child.stdout.getReader();
  }

  /** Transactions per second over `ms` milliseconds. */
  async sample(ms: number): Promise<number> {
    await this.#writer.write(new TextEncoder().encode(`${ms}\n`));
    const timer = setTimeout(() => this.#reader.cancel(), ms + 15_000);
    try {
      while (!this.#text.includes("\n")) {
        const { value, done } = await this.#reader.read();
        if (done) throw new Error("rr client ended (connection failed?)");
        this.#text += dec.decode(value);
      }
    } finally {
      clearTimeout(timer);
    }
    const nl = this.#text.indexOf("\n");
    const r = JSON.parse(this.#text.slice(0, nl));
    this.#text = this.#text.slice(nl + 1);
    return r.n / (r.ms / 1000);
  }

  /** Ends the client (end of stdin closes its connection). */
  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 5000);
    await this.#reader.cancel().catch(() => {});
    await this.#child.status;
    clearTimeout(timer);
  }
}

/**
 * rr samples of each stack, interleaved A B B A …, after one warm-up sample
 * each (clients on `cpu` when given).
 */
async function rrSamples(served: Served[], port: number, cpu?: number): Promise<number[][]> {
  const clients = served.map((s) => new RrClient(s, port, cpu));
  try {
    for (const c of clients) await c.sample(RR_SAMPLE_MS);
    const out: number[][] = served.map(() => []);
    for (let i = 0; i < RR_SAMPLES; i++) {
      const order = i % 2 === 0 ? [0, 1] : [1, 0];
      for (const k of order) out[k].push(await clients[k].sample(RR_SAMPLE_MS));
    }
    return out;
  } finally {
    for (const c of clients) await c.close();
  }
}

/** The TCP echo server on host 127.0.0.1 (on `cpu` only, when given). */
async function startEcho(cpu?: number): Promise<{ port: number; stop(): Promise<void> }> {
  const args = [Deno.execPath(), "run", "-A", "--no-check", GUEST_TOOL, "serve-tcp", "0"]
    .concat(["127.0.0.1"]);
  const echo = new Deno.Command(cpu === undefined ? args[0] : "taskset", {
    args: cpu === undefined ? args.slice(1) : ["-c", String(cpu), ...args],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      echo.kill("SIGKILL");
    } catch {
      // exited
    }
    await echo.status;
  };
  try {
    const line = await waitFor(echo.stdout, "}");
    return { port: JSON.parse(line.trim().split("\n")[0]).listening, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The `net-bench` line of rr samples `k` (skiff) and `r` (slirp4netns). */
function rrLine(name: string, k: number[], r: number[], where: string): string {
  const f = (x: number, d: number) => x.toFixed(d);
  const km = median(k), rm = median(r);
  const pairs = k.map((x, i) => x / r[i]).sort((a, b) => a - b);
  const range = (xs: number[], d: number) => `${f(Math.min(...xs), d)}-${f(Math.max(...xs), d)}`;
  return `net-bench ${name} skiff=${f(km, 0)} slirp4netns=${f(rm, 0)} ratio=${f(km / rm, 2)} ` +
    `(median of ${k.length} interleaved ${RR_SAMPLE_MS} ms samples${where}; skiff ${
      range(k, 0)
    }, slirp4netns ${range(r, 0)}, pair ratios ${range(pairs, 2)} median ${f(median(pairs), 2)})`;
}

/** Runs the benchmark; returns the four `net-bench` lines. */
export async function bench(): Promise<string[]> {
  const echo = await startEcho();
  const served: Served[] = [];
  let echo1: { stop(): Promise<void> } | null = null;
  try {
    served.push(await serveSkiff());
    served.push(await serveSlirp());
    const best = served.map(() => ({ up: 0, down: 0 }));
    for (let round = 0; round < IPERF_ROUNDS; round++) {
      for (const [i, s] of served.entries()) {
        best[i].up = Math.max(best[i].up, await iperf(s, false));
        best[i].down = Math.max(best[i].down, await iperf(s, true));
      }
    }
    const [kr, rr] = await rrSamples(served, echo.port);
    // Then every process of both chains on the last CPU (the stacks last:
    // nothing else runs in them any more).
    const cpu = navigator.hardwareConcurrency - 1;
    const e1 = echo1 = await startEcho(cpu);
    for (const s of served) await run("taskset", ["-a", "-c", "-p", String(cpu), String(s.pid)]);
    const [k1, r1] = await rrSamples(served, e1.port, cpu);
    const [k, r] = best;
    const f = (x: number, d: number) => x.toFixed(d);
    return [
      `net-bench tcp-up skiff=${f(k.up, 2)} slirp4netns=${f(r.up, 2)} ratio=${f(k.up / r.up, 2)}`,
      `net-bench tcp-down skiff=${f(k.down, 2)} slirp4netns=${f(r.down, 2)} ratio=${
        f(k.down / r.down, 2)
      }`,
      rrLine("rr", kr, rr, ""),
      rrLine("rr-1cpu", k1, r1, `, every process on CPU ${cpu}`),
    ];
  } finally {
    for (const s of served) await s.stop();
    await echo1?.stop();
    await echo.stop();
  }
}

if (import.meta.main) {
  for (const line of await bench()) console.log(line);
}
