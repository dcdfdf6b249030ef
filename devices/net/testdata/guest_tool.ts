/**
 * Runs inside a test's network namespace and plays the guest's programs for
 * the L3 tests: `udp-echo HOST PORT COUNT`, `dns SERVER NAME`,
 * `conns HOST PORT N BYTES`, `rr HOST PORT SECONDS` (1-byte transactions),
 * `rr-loop HOST PORT` (1-byte transactions on one connection, one sample per
 * stdin line giving its milliseconds, one JSON line per sample),
 * `serve-tcp PORT [ADDR]` and `serve-udp PORT` (echo servers printing
 * "listening" once bound). Prints one JSON line with the result.
 *
 * @module
 */

import dgram from "node:dgram";

const [cmd, ...args] = Deno.args;

/**
 * UDP has no retransmission: a datagram the kernel drops (e.g. while ARP
 * resolves) is resent every second, as a real client would, until `done`;
 * no deadline (the test's bound catches a hang).
 */
async function resendUntil(done: Promise<unknown>, send: () => void): Promise<void> {
  send();
  const timer = setInterval(send, 1000);
  try {
    await done;
  } finally {
    clearInterval(timer);
  }
}

async function udpEcho(host: string, port: number, count: number): Promise<unknown> {
  const sock = dgram.createSocket("udp4");
  const got = new Set<string>();
  const done = new Promise<void>((resolve) => {
    sock.on("message", (m: Uint8Array) => {
      got.add(new TextDecoder().decode(m));
      if (got.size === count) resolve();
    });
  });
  await resendUntil(done, () => {
    for (let i = 0; i < count; i++) {
      if (!got.has(`ping ${i}`)) sock.send(new TextEncoder().encode(`ping ${i}`), port, host);
    }
  });
  sock.close();
  return { replies: [...got].sort() };
}

/** A minimal RFC 1035 A query; returns the A records of the answer. */
async function dns(server: string, name: string): Promise<unknown> {
  const labels = name.split(".").flatMap((l) => [l.length, ...new TextEncoder().encode(l)]);
  const q = new Uint8Array([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]);
  const sock = dgram.createSocket("udp4");
  const reply = new Promise<Uint8Array>((resolve) =>
    sock.on("message", (m: Uint8Array) => resolve(m))
  );
  await resendUntil(reply, () => sock.send(q, 53, server));
  const r = await reply;
  sock.close();
  const rcode = r[3] & 15;
  const an = (r[6] << 8) | r[7];
  let o = q.length;
  const addrs: string[] = [];
  for (let i = 0; i < an; i++) {
    if ((r[o] & 0xc0) === 0xc0) o += 2;
    else {
      while (r[o] !== 0) o += r[o] + 1;
      o++;
    }
    const type = (r[o] << 8) | r[o + 1];
    const len = (r[o + 8] << 8) | r[o + 9];
    if (type === 1 && len === 4) addrs.push(Array.from(r.subarray(o + 10, o + 14)).join("."));
    o += 10 + len;
  }
  return { rcode, addrs };
}

async function conns(host: string, port: number, n: number, bytes: number): Promise<unknown> {
  const one = async (i: number) => {
    const c = await Deno.connect({ hostname: host, port });
    const data = new Uint8Array(bytes).map((_, k) => (k * 7 + i) & 255);
    const writing = (async () => {
      let o = 0;
      while (o < data.length) o += await c.write(data.subarray(o));
      await c.closeWrite();
    })();
    const back = new Uint8Array(bytes);
    let got = 0;
    for (;;) {
      const r = await c.read(back.subarray(got));
      if (r === null || r === 0) break;
      got += r;
      if (got === bytes) break;
    }
    await writing;
    c.close();
    return got === bytes && back.every((v, k) => v === data[k]);
  };
  const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => one(i)));
  return {
    ok: results.filter((r) => r.status === "fulfilled" && r.value).length,
    errors: [
      ...new Set(results.flatMap((r) => r.status === "rejected" ? [String(r.reason)] : [])),
    ].slice(0, 3),
  };
}

/** Sequential 1-byte request/response transactions over one connection for `seconds`. */
async function rr(host: string, port: number, seconds: number): Promise<unknown> {
  const c = await Deno.connect({ hostname: host, port });
  c.setNoDelay(true);
  const b = new Uint8Array([42]);
  const r = new Uint8Array(1);
  let n = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  while (performance.now() < end) {
    await c.write(b);
    if ((await c.read(r)) !== 1) throw new Error("rr: connection closed");
    n++;
  }
  c.close();
  return { tps: n / ((performance.now() - t0) / 1000) };
}

/**
 * One connection for many request/response samples: each stdin line is a
 * duration in ms; the transactions done in it are printed as
 * `{"n", "ms"}`. The connection and the JIT stay warm between samples, so
 * a benchmark can interleave short samples of two stacks without paying a
 * process start in any of them. Ends at the end of stdin.
 */
async function rrLoop(host: string, port: number): Promise<void> {
  const c = await Deno.connect({ hostname: host, port });
  c.setNoDelay(true);
  const b = new Uint8Array([42]);
  const r = new Uint8Array(1);
  const dec = new TextDecoder();
  let text = "";
  for await (const chunk of Deno.stdin.readable) {
    text += dec.decode(chunk);
    for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n")) {
      const ms = Number(text.slice(0, nl));
      text = text.slice(nl + 1);
      let n = 0;
      const t0 = performance.now();
      const end = t0 + ms;
      while (performance.now() < end) {
        await c.write(b);
        if ((await c.read(r)) !== 1) throw new Error("rr-loop: connection closed");
        n++;
      }
      console.log(JSON.stringify({ n, ms: performance.now() - t0 }));
    }
  }
  c.close();
}

async function serveTcp(port: number, hostname = "0.0.0.0"): Promise<void> {
  const l = Deno.listen({ hostname, port });
  console.log(JSON.stringify({ listening: (l.addr as Deno.NetAddr).port }));
  for await (const c of l) {
    c.setNoDelay(true);
    (async () => {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await c.read(buf);
        if (n === null) break;
        let o = 0;
        while (o < n) o += await c.write(buf.subarray(o, n));
      }
      c.close();
    })().catch(() => {});
  }
}

/** A UDP echo server on `port`; prints "listening" once bound. */
function serveUdp(port: number): void {
  const sock = dgram.createSocket("udp4");
  sock.on("message", (m: Uint8Array, r: { address: string; port: number }) => {
    sock.send(m, r.port, r.address);
  });
  sock.bind(port, "0.0.0.0", () => console.log(JSON.stringify({ listening: port })));
}

switch (cmd) {
  case "udp-echo":
    console.log(JSON.stringify(await udpEcho(args[0], Number(args[1]), Number(args[2]))));
    break;
  case "dns":
    console.log(JSON.stringify(await dns(args[0], args[1])));
    break;
  case "conns":
    console.log(
      JSON.stringify(await conns(args[0], Number(args[1]), Number(args[2]), Number(args[3]))),
    );
    break;
  case "serve-tcp":
    await serveTcp(Number(args[0]), args[1]);
    break;
  case "serve-udp":
    serveUdp(Number(args[0]));
    break;
  case "rr-loop":
    await rrLoop(args[0], Number(args[1]));
    break;
  case "rr":
    console.log(JSON.stringify(await rr(args[0], Number(args[1]), Number(args[2]))));
    break;
  default:
    console.error(`unknown command ${cmd}`);
    Deno.exit(2);
}
