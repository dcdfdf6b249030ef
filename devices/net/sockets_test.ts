/**
 * L0 tests of the loop's host sockets over real loopback sockets, both ends
 * in one poller: connect/accept, bytes both ways, flow control by pausing
 * reads, half-close, refused connects, UDP, and adopting a prebound listener.
 */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { libc } from "../../kvm_ffi/libc.ts";
import type { HostTcp, HostTcpEvents } from "./host.ts";
import { Poller } from "./poller.ts";
import { PollSockets, preboundKey } from "./sockets.ts";
import { bindInet, SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET } from "./sys.ts";

/** SO_LINGER (asm-generic/socket.h). */
const SO_LINGER = 13;

/** Turns `p` until `cond()` holds; the bound only catches a hang. */
function turnUntil(p: Poller, what: string, cond: () => boolean): void {
  const deadline = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    p.turn(20);
  }
}

/** Events that record what happened. */
function recorder() {
  const r = {
    connected: null as boolean | null,
    readable: 0,
    writable: 0,
    events: {} as HostTcpEvents,
  };
  r.events = {
    connected: (ok) => void (r.connected = ok),
    readable: () => void r.readable++,
    writable: () => void r.writable++,
  };
  return r;
}

/** Reads everything available from `s` (null once at end of stream). */
function drain(s: HostTcp, into: number[]): boolean {
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = s.read(buf);
    if (n === null) return true;
    if (n === 0) return false;
    into.push(...buf.subarray(0, n));
  }
}

Deno.test("sockets: TCP connect, accept, bytes both ways, paused reads, half-close", () => {
  const p = new Poller();
  const sockets = new PollSockets(p);
  const accepted: HostTcp[] = [];
  const l = sockets.listenTcp("127.0.0.1", 0, (c) => accepted.push(c));
  const cli = recorder();
  const client = sockets.connectTcp("127.0.0.1", l.addr.port, cli.events);
  try {
    turnUntil(p, "connect and accept", () => cli.connected !== null && accepted.length > 0);
    strictEqual(cli.connected, true);
    const server = accepted[0];
    const srv = recorder();
    server.events = srv.events;
    // Reading is off until asked for: data waits in the socket.
    strictEqual(client.write(new TextEncoder().encode("ping")), 4);
    p.turn(20);
    strictEqual(srv.readable, 0);
    server.setReading(true);
    turnUntil(p, "server readable", () => srv.readable > 0);
    const got: number[] = [];
    strictEqual(drain(server, got), false);
    strictEqual(new TextDecoder().decode(new Uint8Array(got)), "ping");
    // Flow control: the client writes until its socket is full; the short
    // write arms exactly one writable event, which comes once the server reads.
    server.setReading(false);
    const chunk = new Uint8Array(1 << 20).fill(7);
    let sent = 0;
    for (let i = 0; i < 200; i++) {
      const n = client.write(chunk);
      sent += n;
      if (n < chunk.length) break;
    }
    ok(sent < 200 * chunk.length, "the socket filled up");
    p.turn(20);
    strictEqual(cli.writable, 0);
    const all: number[] = [];
    server.setReading(true);
    turnUntil(p, "writable after the server read", () => {
      if (srv.readable > 0) drain(server, all);
      return cli.writable === 1;
    });
    // Half-close: the server sees the end of the stream after the bytes.
    client.shutdownWrite();
    let eof = false;
    turnUntil(p, "end of stream", () => eof ||= drain(server, all));
    strictEqual(all.length, sent);
    ok(all.every((b) => b === 7));
    // The other direction still works.
    strictEqual(server.write(new Uint8Array([1, 2, 3])), 3);
    client.setReading(true);
    const back: number[] = [];
    turnUntil(p, "client reads", () => (drain(client, back), back.length === 3));
    deepStrictEqual(back, [1, 2, 3]);
  } finally {
    client.close();
    for (const c of accepted) c.close();
    l.close();
    p.close();
  }
});

Deno.test("sockets: a refused connect reports connected(false)", () => {
  const p = new Poller();
  const sockets = new PollSockets(p);
  // A port nobody listens on: bind one, note it, close it.
  const b = bindInet(SOCK_STREAM, "127.0.0.1", 0);
  libc.close(b.fd);
  const r = recorder();
  const s = sockets.connectTcp("127.0.0.1", b.addr.port, r.events);
  try {
    turnUntil(p, "the refusal", () => r.connected !== null);
    strictEqual(r.connected, false);
  } finally {
    s.close();
    p.close();
  }
});

Deno.test("sockets: a reset while reading is paused surfaces once reading resumes", () => {
  const p = new Poller();
  const sockets = new PollSockets(p);
  const l = bindInet(SOCK_STREAM, "127.0.0.1", 0); // a plain listener: the test holds its fds
  const r = recorder();
  const client = sockets.connectTcp("127.0.0.1", l.addr.port, r.events);
  try {
    turnUntil(p, "connect", () => r.connected === true);
    const srv = libc.accept4(l.fd, null, null, 0);
    ok(srv >= 0);
    // SO_LINGER {on, 0 s}: close sends a reset.
    const linger = new Uint8Array(8);
    linger[0] = 1;
    strictEqual(libc.setsockopt(srv, SOL_SOCKET, SO_LINGER, linger, 8), 0);
    libc.close(srv);
    // The error comes while nobody reads: reported by epoll once, then the
    // socket leaves epoll (epoll reports errors whatever is asked for, so
    // staying in would spin the loop).
    let events = 0;
    for (let i = 0; i < 5; i++) events += p.turn(10);
    ok(events <= 1, `${events} events`);
    strictEqual(r.readable, 0);
    client.setReading(true);
    turnUntil(p, "readable after resuming", () => r.readable > 0);
    throws(() => client.read(new Uint8Array(16)), /read\(host tcp\) failed: ECONNRESET/);
  } finally {
    client.close();
    libc.close(l.fd);
    p.close();
  }
});

Deno.test("sockets: UDP both ways; binding a taken port throws naming it", () => {
  const p = new Poller();
  const bound = bindInet(SOCK_DGRAM, "127.0.0.1", 0);
  const port = bound.addr.port;
  const sockets = new PollSockets(
    p,
    new Map([[preboundKey("udp", "127.0.0.1", port), [bound.fd]]]),
  );
  const got: string[] = [];
  const dec = new TextDecoder();
  const a = sockets.openUdp((d, host, from) => {
    got.push(`a: ${dec.decode(d)} from ${host}`);
    a.send(new TextEncoder().encode("pong"), host, from);
  }, { hostname: "127.0.0.1", port }); // adopts the prebound socket
  const b = sockets.openUdp((d, host, from) => {
    got.push(`b: ${dec.decode(d)} from ${host}:${from}`);
  });
  try {
    b.send(new TextEncoder().encode("ping"), "127.0.0.1", port);
    turnUntil(p, "the exchange", () => got.length === 2);
    deepStrictEqual(got, ["a: ping from 127.0.0.1", `b: pong from 127.0.0.1:${port}`]);
    throws(
      () => sockets.openUdp(() => {}, { hostname: "127.0.0.1", port }),
      new RegExp(`bind\\(127\\.0\\.0\\.1:${port}/udp\\) failed: EADDRINUSE`),
    );
  } finally {
    a.close();
    b.close();
    p.close();
  }
});

Deno.test("sockets: a prebound listener is adopted instead of bound again", () => {
  const p = new Poller();
  const b = bindInet(SOCK_STREAM, "127.0.0.1", 0);
  const sockets = new PollSockets(p, new Map([[preboundKey("tcp", "127.0.0.1", 0), [b.fd]]]));
  let accepted = 0;
  const l = sockets.listenTcp("127.0.0.1", 0, (c) => {
    accepted++;
    c.close();
  });
  const r = recorder();
  const c = sockets.connectTcp("127.0.0.1", b.addr.port, r.events);
  try {
    strictEqual(l.addr.port, b.addr.port);
    turnUntil(p, "accept", () => accepted === 1 && r.connected === true);
  } finally {
    c.close();
    l.close();
    p.close();
  }
});
