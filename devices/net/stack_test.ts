/** L0 tests of the stack with fake host sockets: every frame is built by the test. */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { parsePublish, resolveConfig } from "./config.ts";
import type { HostSockets, HostTcp, HostTcpEvents, HostUdp, Scheduler } from "./host.ts";
import { NetEngine } from "./stack.ts";
import {
  arpRequest,
  dhcpDiscover,
  fixChecksums,
  GUEST_IP,
  GW_IP,
  icmpEcho,
  ipv4,
  tcp,
  udp,
} from "./testdata/frames.ts";
import { checksum, ETH_HLEN, PROTO, TCP_FLAG, u16, u32 } from "./wire.ts";

/**
 * A fake host TCP socket: records writes, serves queued reads, and reports
 * readiness from a macrotask as the poll loop would.
 */
class FakeTcp implements HostTcp {
  events: HostTcpEvents;
  written: number[] = [];
  closed = false;
  writeClosed = false;
  reading = false;
  #reads: (Uint8Array | null)[] = [];
  constructor(events: HostTcpEvents) {
    this.events = events;
  }
  push(d: Uint8Array | null): void {
    this.#reads.push(d);
    this.#poke();
  }
  #poke(): void {
    setTimeout(() => {
      if (this.reading && !this.closed && this.#reads.length > 0) this.events.readable();
    }, 0);
  }
  read(p: Uint8Array): number | null {
    if (this.#reads.length === 0) return 0;
    const d = this.#reads.shift()!;
    if (d === null) return null;
    p.set(d);
    return d.length;
  }
  write(p: Uint8Array): number {
    this.written.push(...p);
    return p.length;
  }
  setReading(on: boolean): void {
    this.reading = on;
    if (on) this.#poke();
  }
  shutdownWrite(): void {
    this.writeClosed = true;
  }
  close(): void {
    this.closed = true;
  }
}

/** Fake sockets: TCP connects to 10.0.0.9 succeed with a {@link FakeTcp}, others are refused. */
class FakeSockets implements HostSockets {
  connects: string[] = [];
  udpSent: string[] = [];
  conns: FakeTcp[] = [];
  connectTcp(hostname: string, port: number, events: HostTcpEvents): HostTcp {
    this.connects.push(`${hostname}:${port}`);
    const c = new FakeTcp(events);
    const ok = hostname === "10.0.0.9";
    if (ok) this.conns.push(c);
    queueMicrotask(() => c.events.connected(ok));
    return c;
  }
  openUdp(): HostUdp {
    return {
      send: (_p: Uint8Array, h: string, port: number) => void this.udpSent.push(`${h}:${port}`),
      close() {},
    };
  }
  listenTcp(): never {
    throw new Error("no listeners in this test");
  }
}

/** A stack on fake sockets and a fake clock (`clock.ms`, advanced by the test). */
/**
 * A {@link Scheduler} whose time moves only when the test says: protocol
 * timers fire on {@link ManualClock.advance}, never because the machine was
 * slow (deferred work still runs as microtasks, as on the event loop).
 */
class ManualClock implements Scheduler {
  ms = 1_000_000;
  #timers = new Set<{ at: number; fn: () => void }>();
  now(): number {
    return this.ms;
  }
  defer(fn: () => void): void {
    queueMicrotask(fn);
  }
  after(ms: number, fn: () => void): () => void {
    const t = { at: this.ms + ms, fn };
    this.#timers.add(t);
    return () => this.#timers.delete(t);
  }
  /** Moves the clock on by `ms` and runs every timer now due, earliest first. */
  advance(ms: number): void {
    this.ms += ms;
    for (;;) {
      const due = [...this.#timers].filter((t) => t.at <= this.ms).sort((a, b) => a.at - b.at)[0];
      if (!due) return;
      this.#timers.delete(due);
      due.fn();
    }
  }
}

/**
 * An engine on fake sockets; with `manualClock` its protocol timers run on a
 * {@link ManualClock} instead of the event loop's.
 */
function setup(config = {}, manualClock = false) {
  const sockets = new FakeSockets();
  const clock = new ManualClock();
  const stack = new NetEngine(config, { sockets, ...(manualClock ? { scheduler: clock } : {}) });
  const out: Uint8Array[] = [];
  stack.attach({ send: (f) => void out.push(f) });
  return { stack, out, sockets, clock, [Symbol.asyncDispose]: () => stack.close() };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("arp: the gateway answers with its MAC, others are ignored", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  strictEqual(s.out.length, 1);
  const r = s.out[0];
  strictEqual(u16(r, 12), 0x0806);
  strictEqual(u16(r, ETH_HLEN + 6), 2);
  deepStrictEqual([...r.subarray(ETH_HLEN + 8, ETH_HLEN + 14)], [0x52, 0x54, 0, 0x42, 0, 1]);
  strictEqual(u32(r, ETH_HLEN + 14), GW_IP);
  strictEqual(u32(r, ETH_HLEN + 24), GUEST_IP);
  s.stack.input(arpRequest(0x0a2a0063));
  strictEqual(s.out.length, 1);
  strictEqual(s.stack.counters().arpReplies, 1);
});

Deno.test("icmp: echo to the gateway is answered, also when fragmented", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  s.out.length = 0;
  const payload = new Uint8Array(3000).map((_, i) => i * 13);
  const echo = icmpEcho(payload);
  // Fragments of 1480 bytes, delivered out of order.
  const parts = [0, 1480, 2960].map((off) =>
    ipv4(PROTO.ICMP, echo.subarray(off, Math.min(off + 1480, echo.length)), {
      id: 99,
      fragOff: off,
      more: off + 1480 < echo.length,
    })
  );
  for (const i of [2, 0, 1]) s.stack.input(parts[i]);
  strictEqual(s.stack.counters().reassembled, 1);
  strictEqual(s.out.length, 1);
  const r = s.out[0];
  const o = ETH_HLEN + 20;
  strictEqual(r[o], 0);
  strictEqual(checksum(r, o, r.length - o), 0);
  deepStrictEqual(r.subarray(o + 8), payload);
  // A bad checksum is dropped and counted.
  const bad = ipv4(PROTO.ICMP, icmpEcho(new Uint8Array(8)));
  bad[bad.length - 1] ^= 1;
  s.stack.input(bad);
  strictEqual(s.stack.counters().dropChecksum, 1);
});

Deno.test("dhcp: DISCOVER gets an OFFER of the guest address with router and DNS", async () => {
  await using s = setup();
  s.stack.input(ipv4(PROTO.UDP, udp(68, 67, dhcpDiscover()), { src: 0, dst: 0xffffffff }));
  strictEqual(s.out.length, 1);
  const r = s.out[0];
  const m = r.subarray(ETH_HLEN + 28);
  strictEqual(m[0], 2);
  strictEqual(u32(m, 4), 0x11223344);
  strictEqual(u32(m, 16), GUEST_IP);
  const opts = new Map<number, Uint8Array>();
  for (let o = 240; m[o] !== 255;) {
    opts.set(m[o], m.subarray(o + 2, o + 2 + m[o + 1]));
    o += 2 + m[o + 1];
  }
  deepStrictEqual([...opts.get(53)!], [2]);
  deepStrictEqual([...opts.get(1)!], [255, 255, 255, 0]);
  deepStrictEqual([...opts.get(3)!], [10, 42, 0, 1]);
  deepStrictEqual([...opts.get(6)!], [10, 42, 0, 1]);
});

Deno.test("tcp: handshake with MSS and window scale, data both ways, FIN both ways", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  s.out.length = 0;
  const dst = 0x0a000009; // 10.0.0.9
  const syn = tcp({
    sport: 40000,
    dport: 80,
    seq: 1000,
    flags: TCP_FLAG.SYN,
    opts: [2, 4, 0x05, 0xb4, 1, 3, 3, 7],
  });
  s.stack.input(ipv4(PROTO.TCP, syn, { dst }));
  await tick();
  deepStrictEqual(s.sockets.connects, ["10.0.0.9:80"]);
  strictEqual(s.out.length, 1);
  let r = s.out.pop()!;
  const o = ETH_HLEN + 20;
  strictEqual(r[o + 13], TCP_FLAG.SYN | TCP_FLAG.ACK);
  strictEqual(u32(r, o + 8), 1001);
  const iss = u32(r, o + 4);
  // Options: MSS 1460, NOP, wscale 7.
  deepStrictEqual([...r.subarray(o + 20, o + 28)], [2, 4, 0x05, 0xb4, 1, 3, 3, 7]);
  // ACK + 5 bytes of data.
  const data = new TextEncoder().encode("hello");
  s.stack.input(
    ipv4(
      PROTO.TCP,
      tcp({
        sport: 40000,
        dport: 80,
        seq: 1001,
        ack: iss + 1,
        flags: TCP_FLAG.ACK | TCP_FLAG.PSH,
        wnd: 1000,
        payload: data,
      }),
      { dst },
    ),
  );
  await tick();
  await tick();
  const host = s.sockets.conns[0];
  deepStrictEqual(host.written, [...data]);
  strictEqual(s.stack.counters().tcpOpened, 1);
  r = s.out.pop()!;
  strictEqual(u32(r, o + 8), 1006); // acked
  // The host sends 3000 bytes: the window (1000 << 7) lets them go at MSS 1460.
  host.push(new Uint8Array(3000).fill(7));
  await tick();
  await tick();
  const segs = s.out.splice(0).filter((f) => f.length > ETH_HLEN + 40);
  deepStrictEqual(segs.map((f) => f.length - ETH_HLEN - 40), [1460, 1460, 80]);
  strictEqual(u32(segs[1], o + 4), iss + 1 + 1460);
  // Guest acks all; host closes: FIN to the guest.
  s.stack.input(
    ipv4(
      PROTO.TCP,
      tcp({ sport: 40000, dport: 80, seq: 1006, ack: iss + 3001, flags: TCP_FLAG.ACK, wnd: 1000 }),
      { dst },
    ),
  );
  host.push(null);
  await tick();
  await tick();
  const fin = s.out.pop()!;
  ok(fin[o + 13] & TCP_FLAG.FIN);
  strictEqual(u32(fin, o + 4), iss + 3001);
  // The guest acks our FIN and sends its own: we enter TIME_WAIT and ack it.
  s.stack.input(
    ipv4(
      PROTO.TCP,
      tcp({
        sport: 40000,
        dport: 80,
        seq: 1006,
        ack: iss + 3002,
        flags: TCP_FLAG.ACK | TCP_FLAG.FIN,
        wnd: 1000,
      }),
      { dst },
    ),
  );
  await tick();
  await tick();
  strictEqual(u32(s.out[s.out.length - 1], o + 8), 1007);
  ok(host.closed); // both sides closed: the host socket is closed in TIME_WAIT
  strictEqual(s.stack.counters().internalErrors, 0);
});

Deno.test("tcp: refused connects and disallowed destinations get RST", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  s.out.length = 0;
  // Host loopback is off: 10.42.0.1 is refused without a host connect.
  s.stack.input(ipv4(PROTO.TCP, tcp({ sport: 40001, dport: 22, seq: 5, flags: TCP_FLAG.SYN })));
  // 10.0.0.8 is refused by the host.
  s.stack.input(
    ipv4(PROTO.TCP, tcp({ sport: 40002, dport: 22, seq: 5, flags: TCP_FLAG.SYN }), {
      dst: 0x0a000008,
    }),
  );
  await tick();
  deepStrictEqual(s.sockets.connects, ["10.0.0.8:22"]);
  const o = ETH_HLEN + 20;
  deepStrictEqual(s.out.map((f) => [f[o + 13], u32(f, o + 8)]), [
    [TCP_FLAG.RST | TCP_FLAG.ACK, 6],
    [TCP_FLAG.RST | TCP_FLAG.ACK, 6],
  ]);
  strictEqual(s.stack.counters().tcpRefused, 2);
});

Deno.test("udp: flows go to host sockets; spoofed sources are dropped", async () => {
  await using s = setup();
  s.stack.input(ipv4(PROTO.UDP, udp(5000, 9999, new Uint8Array(4)), { dst: 0x0a000009 }));
  s.stack.input(
    ipv4(PROTO.UDP, udp(5000, 9999, new Uint8Array(4)), { src: 0x0a2a0005, dst: 0x0a000009 }),
  );
  await tick();
  deepStrictEqual(s.sockets.udpSent, ["10.0.0.9:9999"]);
  strictEqual(s.stack.counters().dropSpoofed, 1);
});

Deno.test("config: --publish parsing and validation errors name the value", () => {
  deepStrictEqual(parsePublish("8080:80"), {
    hostIp: "127.0.0.1",
    hostPort: 8080,
    guestPort: 80,
    proto: "tcp",
  });
  deepStrictEqual(parsePublish("0.0.0.0:53:5353/udp"), {
    hostIp: "0.0.0.0",
    hostPort: 53,
    guestPort: 5353,
    proto: "udp",
  });
  throws(() => parsePublish("80"), /bad --publish '80'/);
  throws(() => parsePublish("x:1:2"), /host address 'x'/);
  throws(() => parsePublish("1:2/sctp"), /protocol/);
  throws(() => parsePublish("1:70000"), /guest port '70000'/);
  throws(() => resolveConfig({ guestIp: "10.1.0.2" }), /not in one \/24/);
  throws(() => resolveConfig({ mtu: 100 }), /mtu must be/);
});

Deno.test("fixChecksums helper yields frames the stack accepts", async () => {
  await using s = setup();
  const f = ipv4(PROTO.ICMP, icmpEcho(new Uint8Array(10)));
  f[ETH_HLEN + 8 + 20] ^= 0xff;
  fixChecksums(f);
  s.stack.input(f);
  strictEqual(s.stack.counters().icmpEchoReplies, 1);
});

/** Opens a connection from the guest to 10.0.0.9:80; returns the stack's ISS. */
async function handshake(s: ReturnType<typeof setup>, sport: number): Promise<number> {
  const dst = 0x0a000009;
  s.stack.input(
    ipv4(PROTO.TCP, tcp({ sport, dport: 80, seq: 1000, flags: TCP_FLAG.SYN }), { dst }),
  );
  await tick();
  const iss = u32(s.out.pop()!, ETH_HLEN + 24);
  s.stack.input(
    ipv4(PROTO.TCP, tcp({ sport, dport: 80, seq: 1001, ack: iss + 1, flags: TCP_FLAG.ACK }), {
      dst,
    }),
  );
  return iss;
}

Deno.test("tcp: out-of-order guest data is kept and delivered once the gap is filled", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  s.out.length = 0;
  const iss = await handshake(s, 40010);
  const dst = 0x0a000009;
  const seg = (seq: number, text: string) =>
    ipv4(
      PROTO.TCP,
      tcp({
        sport: 40010,
        dport: 80,
        seq,
        ack: iss + 1,
        flags: TCP_FLAG.ACK,
        payload: new TextEncoder().encode(text),
      }),
      { dst },
    );
  s.out.length = 0;
  s.stack.input(seg(1006, "world"));
  s.stack.input(seg(1011, "!"));
  // Duplicate ACKs for 1001 go out at once.
  deepStrictEqual(s.out.map((f) => u32(f, ETH_HLEN + 28)), [1001, 1001]);
  s.stack.input(seg(1001, "hello"));
  await tick();
  await tick();
  strictEqual(new TextDecoder().decode(new Uint8Array(s.sockets.conns[0].written)), "helloworld!");
  strictEqual(u32(s.out[s.out.length - 1], ETH_HLEN + 28), 1012);
  strictEqual(s.stack.counters().bufferedBytes, 0);
});

Deno.test("tcp: resetConnections (snapshot restore) resets open connections", async () => {
  await using s = setup();
  s.stack.input(arpRequest());
  await handshake(s, 40020);
  await tick();
  strictEqual(s.stack.counters().tcpActive, 1);
  s.out.length = 0;
  s.stack.resetConnections();
  strictEqual(s.out.length, 1);
  ok(s.out[0][ETH_HLEN + 33] & TCP_FLAG.RST);
  ok(s.sockets.conns[0].closed);
  strictEqual(s.stack.counters().tcpActive, 0);
});

Deno.test("tcp: three duplicate ACKs trigger fast retransmit; silence triggers the RTO", async () => {
  await using s = setup({}, true);
  s.stack.input(arpRequest());
  const iss = await handshake(s, 40030);
  const dst = 0x0a000009;
  await tick();
  const host = s.sockets.conns[0];
  s.out.length = 0;
  host.push(new Uint8Array(4000).fill(1));
  await tick();
  await tick();
  const seqs = () =>
    s.out.filter((f) => f.length > ETH_HLEN + 40).map((f) => u32(f, ETH_HLEN + 24));
  // No MSS option in the SYN: RFC 9293 §3.7.1's default of 536 bytes.
  deepStrictEqual(seqs(), Array.from({ length: 8 }, (_, i) => iss + 1 + 536 * i));
  s.out.length = 0;
  const dup = ipv4(
    PROTO.TCP,
    tcp({ sport: 40030, dport: 80, seq: 1001, ack: iss + 1, flags: TCP_FLAG.ACK }),
    { dst },
  );
  for (let i = 0; i < 3; i++) s.stack.input(dup);
  deepStrictEqual(seqs(), [iss + 1]);
  strictEqual(s.stack.counters().tcpRetransmits, 1);
  // No more ACKs: the retransmission timer (initially 1 s, RFC 6298 §2.1) resends from
  // SND.UNA once the clock passes it; nothing is resent before.
  s.out.length = 0;
  s.clock.advance(900);
  await tick();
  deepStrictEqual(seqs(), [], "resent before the RTO");
  s.clock.advance(200);
  await tick();
  strictEqual(s.stack.counters().tcpRetransmits, 2);
  strictEqual(seqs()[0], iss + 1, JSON.stringify(seqs()));
});

Deno.test("tcp: a reply carries the delayed ACK; without one a pure ACK follows when due, not before", async () => {
  await using s = setup({}, true);
  s.stack.input(arpRequest());
  const iss = await handshake(s, 40040);
  const dst = 0x0a000009;
  await tick();
  const host = s.sockets.conns[0];
  s.out.length = 0;
  const o = ETH_HLEN + 20;
  const request = (seq: number, ack: number) =>
    s.stack.input(
      ipv4(
        PROTO.TCP,
        tcp({
          sport: 40040,
          dport: 80,
          seq,
          ack,
          flags: TCP_FLAG.ACK | TCP_FLAG.PSH,
          payload: new Uint8Array([42]),
        }),
        { dst },
      ),
    );
  // A 1-byte request: to the host at once, its ACK held back for a reply.
  request(1001, iss + 1);
  await tick();
  deepStrictEqual(host.written, [42]);
  strictEqual(s.out.length, 0, "a pure ACK (or window update) before the reply");
  // The reply comes within the delayed-ACK time: one segment, data and ACK.
  host.push(new Uint8Array([43]));
  await tick();
  await tick();
  strictEqual(s.out.length, 1);
  strictEqual(s.out[0].length, ETH_HLEN + 40 + 1);
  strictEqual(u32(s.out[0], o + 8), 1002);
  s.out.length = 0;
  // The next request 0.6 ms later gets no reply. The delayed-ACK timer armed
  // for the first request fires 1 ms after it, before this one's ACK is due:
  // nothing is sent then; the pure ACK goes out once 1 ms has passed for it.
  s.clock.advance(0.6);
  request(1002, iss + 2);
  await tick();
  s.clock.advance(0.5);
  await tick();
  strictEqual(s.out.length, 0, "the ACK went out before it was due");
  s.clock.advance(0.6);
  await tick();
  strictEqual(s.out.length, 1);
  strictEqual(s.out[0].length, ETH_HLEN + 40, "a pure ACK");
  strictEqual(u32(s.out[0], o + 8), 1003);
  strictEqual(s.stack.counters().internalErrors, 0);
});

Deno.test("tcp: a SYN flood is capped at maxHalfOpen; flows at maxFlows", async () => {
  const sockets = new FakeSockets();
  sockets.connectTcp = (h: string, p: number, events: HostTcpEvents) => {
    sockets.connects.push(`${h}:${p}`);
    return new FakeTcp(events); // the host never answers
  };
  await using stack = new NetEngine({ maxHalfOpen: 50, maxFlows: 80 }, { sockets });
  stack.attach({ send() {} });
  for (let i = 0; i < 1000; i++) {
    stack.input(
      ipv4(PROTO.TCP, tcp({ sport: 1024 + i, dport: 80, seq: i, flags: TCP_FLAG.SYN }), {
        dst: 0x0a000009,
      }),
    );
  }
  const c = stack.counters();
  strictEqual(c.tcpActive, 50);
  strictEqual(c.dropSynFlood, 950);
  strictEqual(sockets.connects.length, 50);
  // UDP flows fill up to the flow cap; the rest are refused and counted.
  for (let i = 0; i < 100; i++) {
    stack.input(ipv4(PROTO.UDP, udp(2000 + i, 9, new Uint8Array(1)), { dst: 0x0a000009 }));
  }
  strictEqual(stack.counters().udpActive, 30);
  strictEqual(stack.counters().dropFlowLimit, 70);
});

/** A byte of the host's endless stream at `offset`. */
const pattern = (offset: number) => (offset * 7 + (offset >> 8)) & 255;

Deno.test("tcp flow control: a guest that does not acknowledge stops reads from the host at the buffer size; nothing is lost", async () => {
  const max = 64 * 1024;
  await using s = setup({ tcpBufferBytes: max });
  s.stack.input(arpRequest());
  const iss = await handshake(s, 40040);
  await tick();
  const host = s.sockets.conns[0];
  // An endless host: every read fills the buffer with the next bytes of the stream.
  let produced = 0;
  host.read = (p: Uint8Array) => {
    for (let i = 0; i < p.length; i++) p[i] = pattern(produced + i);
    produced += p.length;
    return p.length;
  };
  host.push(new Uint8Array(0)); // readable
  await tick();
  await tick();
  ok(!host.reading, "reading paused");
  const held = s.stack.counters().bufferedBytes;
  ok(held >= max && held <= max + 1024, `buffered ${held}`);
  strictEqual(produced, held);
  // The guest now acknowledges everything (its window was 65535 bytes, unscaled).
  const segs = () => s.out.splice(0).filter((f) => f.length > ETH_HLEN + 40);
  const got = new Map<number, Uint8Array>();
  const collect = () => {
    for (const f of segs()) got.set(u32(f, ETH_HLEN + 24), f.subarray(ETH_HLEN + 40));
  };
  collect();
  let acked = iss + 1;
  for (let round = 0; round < 50 && produced < 4 * max; round++) {
    const sent = [...got.entries()].reduce((m, [seq, d]) => Math.max(m, seq + d.length), acked);
    acked = sent;
    s.stack.input(
      ipv4(
        PROTO.TCP,
        tcp({ sport: 40040, dport: 80, seq: 1001, ack: acked, flags: TCP_FLAG.ACK }),
        { dst: 0x0a000009 },
      ),
    );
    await tick();
    await tick();
    collect();
    ok(s.stack.counters().bufferedBytes <= max + 1024);
  }
  ok(produced >= 4 * max, `the host stream went on after acknowledgments: ${produced}`);
  // Every byte sent to the guest is the host's stream, in order, without gaps.
  let next = iss + 1;
  for (const seq of [...got.keys()].sort((a, b) => a - b)) {
    strictEqual(seq, next);
    const d = got.get(seq)!;
    for (let i = 0; i < d.length; i++) {
      if (d[i] !== pattern(seq - iss - 1 + i)) throw new Error(`byte ${seq - iss - 1 + i} differs`);
    }
    next = seq + d.length;
  }
});

Deno.test("tcp flow control: a host that does not read closes the guest's window; nothing is lost", async () => {
  const max = 64 * 1024;
  await using s = setup({ tcpBufferBytes: max });
  s.stack.input(arpRequest());
  const iss = await handshake(s, 40050);
  await tick();
  const host = s.sockets.conns[0];
  // A host whose socket is full: it takes nothing until told otherwise.
  let open = false;
  const written: number[] = [];
  host.write = (p: Uint8Array) => {
    if (!open) return 0;
    written.push(...p);
    return p.length;
  };
  const dst = 0x0a000009;
  const wndOf = (f: Uint8Array) => u16(f, ETH_HLEN + 34); // no window scaling: the SYN had none
  let seq = 1001;
  const send = (n: number) => {
    const payload = new Uint8Array(n).map((_, i) => pattern(seq - 1001 + i));
    s.stack.input(
      ipv4(
        PROTO.TCP,
        tcp({ sport: 40050, dport: 80, seq, ack: iss + 1, flags: TCP_FLAG.ACK, payload }),
        { dst },
      ),
    );
  };
  // The guest keeps sending full segments; what is accepted moves RCV.NXT.
  let accepted = 0;
  for (let i = 0; i < 100; i++) {
    send(1460);
    await tick();
    const acks = s.out.splice(0).filter((f) => f[ETH_HLEN + 33] & TCP_FLAG.ACK);
    if (acks.length > 0) {
      const last = acks[acks.length - 1];
      seq = u32(last, ETH_HLEN + 28); // the guest resends from what was acknowledged
      accepted = seq - 1001;
      if (wndOf(last) === 0) break;
    }
  }
  ok(accepted >= max - 1460 && accepted <= max, `accepted ${accepted}`);
  strictEqual(s.stack.counters().bufferedBytes, accepted);
  // The host drains: every accepted byte arrives in order, and the window reopens.
  open = true;
  host.events.writable();
  await tick();
  strictEqual(written.length, accepted);
  ok(written.every((b, i) => b === pattern(i)));
  strictEqual(s.stack.counters().bufferedBytes, 0);
  const update = s.out.filter((f) => f[ETH_HLEN + 33] & TCP_FLAG.ACK).pop();
  ok(update && wndOf(update) >= max / 2, "a window update was sent");
});
