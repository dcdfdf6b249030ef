/** L0 tests of the DNS server: hosts file answers, forwarding, SERVFAIL, bad queries. */

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { DnsServer, parseHosts, parseResolvConf } from "./dns.ts";
import type { HostSockets, UdpHandler } from "./host.ts";

/** The answer to `q`, or null when the server gives none. */
function ask(dns: DnsServer, q: Uint8Array): Promise<Uint8Array | null> {
  return new Promise((resolve) => {
    if (!dns.answer(q, resolve)) resolve(null);
  });
}

function query(name: string, type = 1, id = 0x4242): Uint8Array {
  const labels = name.split(".").flatMap((l) => [l.length, ...new TextEncoder().encode(l)]);
  return new Uint8Array([
    id >> 8,
    id & 255,
    1,
    0,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    ...labels,
    0,
    0,
    type,
    0,
    1,
  ]);
}

/** Fake sockets whose "upstream" answers every query with `reply(q)` (or stays silent). */
function upstream(reply: ((q: Uint8Array) => Uint8Array) | null): HostSockets & { sent: string[] } {
  const sent: string[] = [];
  return {
    sent,
    connectTcp: () => {
      throw new Error("no tcp");
    },
    listenTcp: () => {
      throw new Error("no listen");
    },
    openUdp(onMessage: UdpHandler) {
      return {
        send(p: Uint8Array, host: string, port: number) {
          sent.push(`${host}:${port}`);
          const q = p.slice();
          if (reply) queueMicrotask(() => onMessage(reply(q), host, port));
        },
        close() {},
      };
    },
  };
}

async function files(hosts: string, resolv: string): Promise<[string, string]> {
  const h = await Deno.makeTempFile({ prefix: "skiff-dns-hosts-" });
  const r = await Deno.makeTempFile({ prefix: "skiff-dns-resolv-" });
  await Deno.writeTextFile(h, hosts);
  await Deno.writeTextFile(r, resolv);
  return [h, r];
}

Deno.test("dns: hosts file names answer A and AAAA; other types get NODATA", async () => {
  const [h, r] = await files("10.1.2.3 a.test b.test # c\nfd00::1 a.test\n", "");
  try {
    const dns = new DnsServer(upstream(null), h, r);
    const a = (await ask(dns, query("A.TEST")))!;
    strictEqual(a[3] & 15, 0);
    strictEqual((a[6] << 8) | a[7], 1);
    deepStrictEqual([...a.subarray(a.length - 4)], [10, 1, 2, 3]);
    const aaaa = (await ask(dns, query("a.test", 28)))!;
    deepStrictEqual([...aaaa.subarray(aaaa.length - 16)], [0xfd, 0, ...new Array(13).fill(0), 1]);
    const mx = (await ask(dns, query("b.test", 15)))!;
    strictEqual((mx[6] << 8) | mx[7], 0);
  } finally {
    await Deno.remove(h);
    await Deno.remove(r);
  }
});

Deno.test("dns: other names are forwarded; a silent upstream gives SERVFAIL", async () => {
  const [h, r] = await files("", "nameserver 192.0.2.53\n");
  try {
    const up = upstream((q) => {
      const a = q.slice();
      a[2] |= 0x80;
      return a;
    });
    const got = (await ask(new DnsServer(up, h, r), query("example.org")))!;
    strictEqual(got[2] & 0x80, 0x80);
    deepStrictEqual(up.sent, ["192.0.2.53:53"]);
    const silent = (await ask(new DnsServer(upstream(null), h, r), query("example.org")))!;
    strictEqual(silent[3] & 15, 2); // SERVFAIL after the upstream timeout
  } finally {
    await Deno.remove(h);
    await Deno.remove(r);
  }
});

Deno.test("dns: malformed queries get no answer", async () => {
  const dns = new DnsServer(upstream(null), "/nonexistent", "/nonexistent");
  strictEqual(await ask(dns, new Uint8Array(5)), null);
  const bad = query("x.test");
  bad[12] = 70; // label longer than 63
  strictEqual(await ask(dns, bad), null);
  const response = query("x.test");
  response[2] |= 0x80;
  strictEqual(await ask(dns, response), null);
  deepStrictEqual(parseResolvConf("# x\nnameserver 1.2.3.4\nnameserver ::1\n"), ["1.2.3.4"]);
  deepStrictEqual(parseHosts("1.1.1.1 A b\n").get("a"), ["1.1.1.1"]);
});
