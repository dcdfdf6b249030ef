/**
 * Fuzz test: 100 000+ random and mutated guest frames into one stack with
 * fake host sockets. Nothing may throw or count as an internal error, the
 * drop counters must move, and every address the stack tried to reach must
 * be one the guest may reach.
 */

import { ok, strictEqual } from "node:assert/strict";
import type { HostSockets, HostTcp, HostTcpEvents, HostUdp } from "./host.ts";
import { NetEngine } from "./stack.ts";
import {
  arpRequest,
  dhcpDiscover,
  fixChecksums,
  icmpEcho,
  ipv4,
  tcp,
  udp,
} from "./testdata/frames.ts";
import { PROTO, TCP_FLAG } from "./wire.ts";

/** A deterministic PRNG (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A host that accepts every byte and never answers. */
class SilentTcp implements HostTcp {
  constructor(public events: HostTcpEvents) {}
  read(): number | null {
    return 0;
  }
  write(p: Uint8Array): number {
    return p.length;
  }
  setReading(): void {}
  shutdownWrite(): void {}
  close(): void {}
}

Deno.test("fuzz: 120 000 random and mutated frames never throw; counters move", async () => {
  const reached: string[] = [];
  const sockets: HostSockets = {
    connectTcp(h, p, events) {
      reached.push(`${h}:${p}`);
      // Half the connects succeed (exercising established paths), half fail.
      const sock = new SilentTcp(events);
      queueMicrotask(() => sock.events.connected((p & 1) === 0));
      return sock;
    },
    openUdp(): HostUdp {
      return {
        send: (_d, h, p) => void reached.push(`${h}:${p}`),
        close() {},
      };
    },
    listenTcp() {
      throw new Error("no listeners");
    },
  };
  await using stack = new NetEngine({ maxFlows: 200, maxBufferedBytes: 1 << 20 }, { sockets });
  let sent = 0;
  stack.attach({ send: () => void sent++ });
  const rand = rng(12345);
  const int = (n: number) => Math.floor(rand() * n);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
  const dsts = [0x0a2a0001, 0x0a000009, 0x7f000001, 0xffffffff, 0x0a2a0002, 0xe0000001];
  const templates: (() => Uint8Array)[] = [
    () => arpRequest(),
    () => ipv4(PROTO.ICMP, icmpEcho(bytes(int(100)))),
    () => ipv4(PROTO.UDP, udp(68, 67, dhcpDiscover()), { src: 0, dst: 0xffffffff }),
    () => ipv4(PROTO.UDP, udp(1000 + int(50), 53, bytes(int(60))), { dst: 0x0a2a0001 }),
    () => ipv4(PROTO.UDP, udp(1000 + int(50), int(65536), bytes(int(60))), { dst: dsts[int(6)] }),
    () =>
      ipv4(
        PROTO.TCP,
        tcp({
          sport: 2000 + int(100),
          dport: int(4),
          seq: int(2 ** 32),
          ack: int(2 ** 32),
          flags: int(64),
          wnd: int(65536),
          opts: Array.from(bytes(int(40))),
          payload: bytes(int(200)),
        }),
        { dst: dsts[int(6)] },
      ),
    () =>
      ipv4(
        PROTO.TCP,
        tcp({ sport: 3000 + int(300), dport: 80, seq: int(2 ** 32), flags: TCP_FLAG.SYN }),
        {
          dst: 0x0a000009,
        },
      ),
    () =>
      ipv4(PROTO.ICMP, bytes(8 + int(100)), {
        id: int(4),
        fragOff: int(8) * 8,
        more: rand() < 0.5,
      }),
  ];
  const N = 120_000;
  for (let i = 0; i < N; i++) {
    let f: Uint8Array;
    const mode = int(10);
    if (mode === 0) {
      f = bytes(int(1600)); // pure noise
    } else {
      f = templates[int(templates.length)]();
      if (mode >= 5) {
        // Mutate: flip bytes, truncate or extend, then maybe fix checksums.
        for (let k = int(4) + 1; k > 0; k--) f[int(f.length)] = int(256);
        if (rand() < 0.2) f = f.subarray(0, int(f.length));
        if (rand() < 0.1) f = Uint8Array.from([...f, ...bytes(int(30))]);
        if (rand() < 0.6) fixChecksums(f);
      }
    }
    stack.input(f);
    if (i % 5000 === 0) await new Promise((r) => setTimeout(r, 0));
  }
  await new Promise((r) => setTimeout(r, 10));
  const c = stack.counters();
  strictEqual(c.internalErrors, 0);
  strictEqual(c.rxFrames, N);
  ok(c.dropMalformed > 1000, `dropMalformed ${c.dropMalformed}`);
  ok(c.dropChecksum > 1000, `dropChecksum ${c.dropChecksum}`);
  ok(c.dropUnsupported > 100, `dropUnsupported ${c.dropUnsupported}`);
  ok(c.arpReplies > 100 && c.icmpEchoReplies > 100 && c.dhcpReplies > 100, JSON.stringify(c));
  ok(c.tcpResetsSent > 100, `tcpResetsSent ${c.tcpResetsSent}`);
  ok(c.tcpActive + c.udpActive <= 200, "flow cap held");
  ok(sent > 1000);
  ok(reached.length > 100);
  // Mutated frames may aim anywhere outside, but never at host loopback (off
  // here), the guest's own subnet, "this network", multicast or broadcast.
  const bad = reached.filter((a) => {
    const [o1, o2, o3] = a.split(".").map(Number);
    return o1 === 127 || o1 === 0 || o1 >= 224 || (o1 === 10 && o2 === 42 && o3 === 0);
  });
  strictEqual(bad.length, 0, bad.slice(0, 5).join(", "));
});
