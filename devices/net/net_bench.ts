/**
 * Benchmark of the user-mode network stack against slirp4netns, both
 * serving a network namespace through a TAP device, measured in the same
 * run: TCP throughput guest → host loopback (`tcp-up`) and host → guest
 * (`tcp-down`) with iperf3 (3 s each, MTU 65520 on both), and 1-byte
 * request/response transactions per second over one connection (`rr`).
 * Each stack runs in its own process (`skiff net tap`, `slirp4netns`).
 * Needs root, /dev/net/tun, iperf3 and slirp4netns.
 *
 * @module
 */

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const GUEST_TOOL = new URL("./testdata/guest_tool.ts", import.meta.url).pathname;
const MTU = 65520;
const SECONDS = 3;
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

/** Reads `child`'s stream until `marker` appears (or throws after `ms`). */
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

interface Result {
  up: number;
  down: number;
  rr: number;
}

/** Measures one stack serving namespace `ns`, reaching host loopback at `gw`. */
async function measure(ns: string, gw: string): Promise<Result> {
  const iperfPort = 15201 + Math.floor(Math.random() * 1000);
  const iperf = async (reverse: boolean) => {
    const server = new Deno.Command("iperf3", {
      args: ["-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", String(iperfPort)],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      await waitFor(server.stdout, "listening");
      const out = await run("ip", [
        "netns",
        "exec",
        ns,
        "iperf3",
        "-c",
        gw,
        "-p",
        String(iperfPort),
        "-t",
        String(SECONDS),
        "-J",
        ...(reverse ? ["-R"] : []),
      ], (SECONDS + 20) * 1000);
      return JSON.parse(out).end.sum_received.bits_per_second / 1e9;
    } finally {
      try {
        server.kill("SIGKILL");
      } catch {
        // exited
      }
      await server.status;
    }
  };
  const up = await iperf(false);
  const down = await iperf(true);
  const echo = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", GUEST_TOOL, "serve-tcp", "0", "127.0.0.1"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const line = await waitFor(echo.stdout, "}");
    const port = JSON.parse(line.trim().split("\n")[0]).listening;
    const out = await run("ip", [
      "netns",
      "exec",
      ns,
      Deno.execPath(),
      "run",
      "-A",
      "--no-check",
      GUEST_TOOL,
      "rr",
      gw,
      String(port),
      "2",
    ]);
    return { up, down, rr: JSON.parse(out.trim().split("\n").pop()!).tps };
  } finally {
    echo.kill("SIGKILL");
    await echo.status;
  }
}

async function withNs<T>(fn: (ns: string) => Promise<T>): Promise<T> {
  const ns = `sknb${Deno.pid}x${Math.floor(Math.random() * 1e6)}`;
  await run("ip", ["netns", "add", ns]);
  try {
    return await fn(ns);
  } finally {
    await run("ip", ["netns", "del", ns]);
  }
}

async function skiff(): Promise<Result> {
  return await withNs(async (ns) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", MAIN, "net", "tap", "--netns", ns, "--net=host-loopback"]
        .concat(["--mtu", String(MTU)]),
      stdout: "null",
      stderr: "piped",
    }).spawn();
    try {
      await waitFor(child.stderr, "Ctrl-C");
      return await measure(ns, "10.42.0.1");
    } finally {
      child.kill("SIGTERM");
      await child.status;
    }
  });
}

async function slirp(): Promise<Result> {
  return await withNs(async (ns) => {
    const child = new Deno.Command("slirp4netns", {
      args: ["--configure", `--mtu=${MTU}`, "--netns-type=path", `/run/netns/${ns}`, "tap0"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      // Ready once slirp4netns has configured tap0 in the namespace.
      for (let i = 0;; i++) {
        const r = await run("ip", ["-n", ns, "-o", "addr", "show"]);
        if (r.includes("10.0.2.100")) break;
        if (i === 100) throw new Error(`slirp4netns did not configure tap0: ${r}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      return await measure(ns, "10.0.2.2");
    } finally {
      child.kill("SIGTERM");
      await child.status;
    }
  });
}

/** Runs the benchmark; returns the three `net-bench` lines. */
export async function bench(): Promise<string[]> {
  const s = await skiff();
  const r = await slirp();
  const f = (x: number, d: number) => x.toFixed(d);
  return [
    `net-bench tcp-up skiff=${f(s.up, 2)} slirp4netns=${f(r.up, 2)} ratio=${f(s.up / r.up, 2)}`,
    `net-bench tcp-down skiff=${f(s.down, 2)} slirp4netns=${f(r.down, 2)} ratio=${
      f(s.down / r.down, 2)
    }`,
    `net-bench rr skiff=${f(s.rr, 0)} slirp4netns=${f(r.rr, 0)} ratio=${f(s.rr / r.rr, 2)}`,
  ];
}

if (import.meta.main) {
  for (const line of await bench()) console.log(line);
}
