/**
 * L3 tests: the host kernel's TCP/IP inside a network namespace made by each
 * test plays the guest, served by skiff's stack through a TAP device. All
 * traffic stays on host loopback and the test's namespace.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import dgram from "node:dgram";
import { hostTest } from "../../tests/requirements.ts";
import type { NetConfig } from "./config.ts";
import { type NetnsTap, serveTapInNetns } from "./netns.ts";
import { HANG_MS } from "../../tests/waits.ts";

const GUEST_TOOL = new URL("./testdata/guest_tool.ts", import.meta.url).pathname;
const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const dec = new TextDecoder();
let seq = 0;

/** A fresh namespace name, unique per process and test. */
function nsName(): string {
  return `sknt${Deno.pid}x${seq++}`;
}

async function ipCmd(args: string[]): Promise<void> {
  const o = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!o.success) throw new Error(`ip ${args.join(" ")}: ${dec.decode(o.stderr)}`);
}

/** Runs `args` inside `ns`, killed after `ms` (only catches a hang); resolves to exit code and output. */
async function inNs(
  ns: string,
  args: string[],
  ms = HANG_MS,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, ...args],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(ms),
  }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Runs the guest tool in `ns` and parses its JSON line. */
async function guestTool(
  ns: string,
  args: string[],
  ms = HANG_MS,
): Promise<Record<string, unknown>> {
  // No update check: it would look up Deno's download site through the stack.
  const r = await inNs(ns, [
    "env",
    "DENO_NO_UPDATE_CHECK=1",
    Deno.execPath(),
    "run",
    "-A",
    "--no-check",
    GUEST_TOOL,
    ...args,
  ], ms);
  const line = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`guest tool ${args.join(" ")} exited ${r.code}: ${r.stdout} ${r.stderr}`);
  }
}

/**
 * Creates a namespace, serves it with a stack configured by `config` (the
 * TAP's reader runs before this returns, so the namespace's first frame is
 * read), runs `fn` with a bound that only catches a hang, then removes
 * everything.
 */
async function withNetns(
  config: NetConfig,
  fn: (ns: string, served: NetnsTap) => Promise<void>,
  deadlineMs = HANG_MS + 60_000,
): Promise<void> {
  const ns = nsName();
  await ipCmd(["netns", "add", ns]);
  let served: NetnsTap | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    served = await serveTapInNetns(ns, config);
    const s = served;
    await Promise.race([
      fn(ns, s),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `deadline of ${deadlineMs} ms passed; ${JSON.stringify(s.stack.counters())}`,
              ),
            ),
          deadlineMs,
        );
      }),
    ]);
    strictEqual((await s.stack.settledCounters()).internalErrors, 0);
  } finally {
    clearTimeout(timer);
    await served?.close();
    await ipCmd(["netns", "del", ns]);
  }
}

const NEEDS = ["root", "tun", "curl"] as const;

hostTest(
  "net L3: curl 50 MiB from host loopback through 10.42.0.1, byte-exact",
  [...NEEDS],
  async () => {
    const body = new Uint8Array(50 << 20);
    for (let o = 0; o < body.length; o += 65536) {
      crypto.getRandomValues(body.subarray(o, Math.min(o + 65536, body.length)));
    }
    const want = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", body)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const srv = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response(body),
    );
    try {
      await withNetns({ hostLoopback: true }, async (ns, served) => {
        const r = await inNs(ns, [
          "sh",
          "-c",
          `curl -sS http://10.42.0.1:${srv.addr.port}/ | sha256sum`,
        ]);
        const why = `curl: ${r.stderr}; stack: ${JSON.stringify(served.stack.counters())}`;
        strictEqual(r.stderr, "", why);
        strictEqual(r.stdout.split(" ")[0], want, why);
        const c = await served.stack.settledCounters();
        ok(c.tcpOpened >= 1 && c.txBytes > body.length, JSON.stringify(c));
      });
    } finally {
      await srv.shutdown();
    }
  },
);

hostTest("net L3: UDP echo with a host loopback server", [...NEEDS], async () => {
  const echo = dgram.createSocket("udp4");
  echo.on("message", (m: Uint8Array, r: { address: string; port: number }) => {
    echo.send(m, r.port, r.address);
  });
  const port = await new Promise<number>((res) =>
    echo.bind(0, "127.0.0.1", () => res(echo.address().port))
  );
  try {
    await withNetns({ hostLoopback: true }, async (ns) => {
      const r = await guestTool(ns, ["udp-echo", "10.42.0.1", String(port), "5"]);
      deepStrictEqual(r.replies, ["ping 0", "ping 1", "ping 2", "ping 3", "ping 4"]);
    });
  } finally {
    echo.close();
  }
});

hostTest(
  "net L3: DNS at 10.42.0.1 answers localhost and /etc/hosts names",
  [...NEEDS],
  async () => {
    // Any other name of /etc/hosts with an IPv4 address is asked for too.
    const hosts = Deno.readTextFileSync("/etc/hosts").split("\n").map((l) =>
      l.replace(/#.*/, "").trim()
    )
      .filter((l) => /^\d+\.\d+\.\d+\.\d+\s/.test(l)).map((l) => l.split(/\s+/));
    const other = hosts.flatMap(([a, ...names]) => names.map((n) => [n, a])).find(([n]) =>
      n !== "localhost"
    );
    const hostsFile = await Deno.makeTempFile({ prefix: "skiff-net-hosts-" });
    await Deno.writeTextFile(hostsFile, "10.9.8.7 skiff-test.example alias.example\n");
    try {
      await withNetns({}, async (ns) => {
        const r = await guestTool(ns, ["dns", "10.42.0.1", "localhost"]);
        deepStrictEqual(r, { rcode: 0, addrs: ["127.0.0.1"] });
        if (other) {
          const r2 = await guestTool(ns, ["dns", "10.42.0.1", other[0]]);
          ok((r2.addrs as string[]).includes(other[1]), JSON.stringify(r2));
        }
      });
      await withNetns({ hostsFile }, async (ns, served) => {
        const r = await guestTool(ns, ["dns", "10.42.0.1", "ALIAS.example"]);
        deepStrictEqual(r, { rcode: 0, addrs: ["10.9.8.7"] });
        ok((await served.stack.settledCounters()).dnsQueries >= 1); // the client resends while unanswered
      });
    } finally {
      await Deno.remove(hostsFile);
    }
  },
);

hostTest(
  "net L3: --publish from host 127.0.0.1 into a server in the namespace",
  [...NEEDS],
  async () => {
    await withNetns({
      publish: [{ hostIp: "127.0.0.1", hostPort: 0, guestPort: 8080, proto: "tcp" }],
    }, async (ns, served) => {
      const server = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          ns,
          Deno.execPath(),
          "run",
          "-A",
          "--no-check",
          GUEST_TOOL,
          "serve-tcp",
          "8080",
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      try {
        const reader = server.stdout.getReader();
        const first = await reader.read();
        ok(dec.decode(first.value).includes("listening"));
        reader.releaseLock();
        server.stdout.cancel().catch(() => {});
        const addr = served.stack.publishedAddrs[0];
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: addr.port });
        const msg = new Uint8Array(200_000).map((_, i) => i % 251);
        const writing = (async () => {
          let o = 0;
          while (o < msg.length) o += await conn.write(msg.subarray(o));
          await conn.closeWrite();
        })();
        const back = new Uint8Array(msg.length);
        let got = 0;
        while (got < back.length) {
          const n = await conn.read(back.subarray(got));
          if (n === null) break;
          got += n;
        }
        await writing;
        conn.close();
        strictEqual(got, msg.length);
        deepStrictEqual(back, msg);
        strictEqual((await served.stack.settledCounters()).publishAccepted, 1);
      } finally {
        server.kill("SIGKILL");
        await server.status;
      }
    });
  },
);

hostTest("net L3: --publish /udp forwards datagrams both ways", [...NEEDS], async () => {
  // A free port for the UDP rule (published UDP listeners report no address).
  const probe = dgram.createSocket("udp4");
  const hostPort = await new Promise<number>((res) =>
    probe.bind(0, "127.0.0.1", () => res(probe.address().port))
  );
  probe.close();
  await withNetns({
    publish: [{ hostIp: "127.0.0.1", hostPort, guestPort: 5353, proto: "udp" }],
  }, async (ns) => {
    const server = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        ns,
        Deno.execPath(),
        "run",
        "-A",
        "--no-check",
        GUEST_TOOL,
        "serve-udp",
        "5353",
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      const reader = server.stdout.getReader();
      ok(dec.decode((await reader.read()).value).includes("listening"));
      reader.releaseLock();
      server.stdout.cancel().catch(() => {});
      const client = dgram.createSocket("udp4");
      const got = new Promise<string>((res) =>
        client.on("message", (m: Uint8Array) => res(dec.decode(m)))
      );
      client.bind(0, "127.0.0.1");
      // Retry: the first datagram may race the server's ARP resolution.
      const timer = setInterval(
        () => client.send(new TextEncoder().encode("via publish"), hostPort, "127.0.0.1"),
        200,
      );
      try {
        strictEqual(await got, "via publish");
      } finally {
        clearInterval(timer);
        client.close();
      }
    } finally {
      server.kill("SIGKILL");
      await server.status;
    }
  });
});

hostTest("net L3: 100 concurrent connections all complete", [...NEEDS], async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const c of l) {
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
  })().catch(() => {});
  try {
    await withNetns({ hostLoopback: true }, async (ns, served) => {
      const r = await guestTool(ns, ["conns", "10.42.0.1", String(l.addr.port), "100", "20000"]);
      deepStrictEqual(r, { ok: 100, errors: [] });
      ok((await served.stack.settledCounters()).tcpOpened >= 100);
    });
  } finally {
    l.close();
    await serving;
  }
});

hostTest("net L3: host loopback is unreachable without host-loopback", [...NEEDS], async () => {
  let accepted = 0;
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const c of l) {
      accepted++;
      c.close();
    }
  })().catch(() => {});
  try {
    await withNetns({}, async (ns, served) => {
      const r = await inNs(ns, ["curl", "-sS", `http://10.42.0.1:${l.addr.port}/`]);
      strictEqual(r.code, 7, r.stderr); // curl: could not connect (the stack answered RST)
      strictEqual(accepted, 0);
      ok((await served.stack.settledCounters()).tcpRefused >= 1);
    });
  } finally {
    l.close();
    await serving;
  }
});

hostTest(
  "net L3: skiff net tap --net=host-loopback serves curl, exits 0 on SIGTERM",
  [...NEEDS],
  async () => {
    const srv = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response("from the host\n"),
    );
    const ns = nsName();
    await ipCmd(["netns", "add", ns]);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", MAIN, "net", "tap", "--netns", ns, "--net=host-loopback"],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const killer = setTimeout(() => child.kill("SIGKILL"), HANG_MS); // only catches a hang
    try {
      const reader = child.stderr.getReader();
      let err = "";
      while (!err.includes("Ctrl-C")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`skiff net tap exited early: ${err}`);
        err += dec.decode(value);
      }
      const r = await inNs(ns, ["curl", "-sS", `http://10.42.0.1:${srv.addr.port}/`]);
      strictEqual(r.stdout, "from the host\n", r.stderr);
      child.kill("SIGTERM");
      reader.releaseLock();
      child.stderr.cancel().catch(() => {});
      strictEqual((await child.status).code, 0);
      const links = await inNs(ns, ["ip", "-o", "link"]);
      ok(!links.stdout.includes("skiff"), links.stdout);
    } finally {
      clearTimeout(killer);
      try {
        child.kill("SIGKILL");
      } catch {
        // exited
      }
      await child.status;
      await srv.shutdown();
      await ipCmd(["netns", "del", ns]);
    }
  },
);
