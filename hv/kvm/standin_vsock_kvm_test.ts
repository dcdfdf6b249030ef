/**
 * L1: the guest agent protocol over skiff's virtio-vsock device on /dev/kvm
 * at the device level, with the stand-in kernel (testdata/standin/: a
 * user-mode vsock driver and agent with built-in commands and an in-RAM file
 * table) as the guest and `AgentClient` on the host side — what the kvm
 * engine's `RunningVm` does not expose (agent_kvm_test.ts goes through the
 * engine): host buffers and the guest's credit under a slow reader, the
 * agent's answers to malformed requests and refused streams, KILL by pid,
 * the TRANSPORT_RESET a restored guest sees, a snapshot carrying the guest's
 * files into a new process, POWEROFF.
 *
 * The machine is the kvm engine's builder plus the vsock device in slot 1
 * (testdata/standin/machine.ts), with the device's host side in reach.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { HANG_MS, hangBound, until } from "../../tests/waits.ts";
import { agentKernelElf, STANDIN_BOOT_LINE } from "./testdata/standin/agent_kernel.ts";
import {
  buildStandin,
  captureStandin,
  restoreStandin,
  type StandinSession,
  startSession,
} from "./testdata/standin/machine.ts";
import { AgentStepError } from "../../init/agent/errors.ts";
import { encodeExec, encodeKill, encodePoweroff, frameRequest } from "../../init/agent/wire.ts";
import { AGENT_PORT, REQUEST_MAGIC } from "../../init/agent/protocol.ts";
import { DEFAULT_BUFFER_SIZE } from "../../devices/virtio/vsock/device.ts";

const dec = new TextDecoder();

/** Runs `fn` with the stand-in kernel written to a temporary directory. */
async function withKernel(fn: (dir: string, kernel: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-standin-" });
  try {
    const kernel = join(dir, "vmlinux");
    await Deno.writeFile(kernel, agentKernelElf());
    await fn(dir, kernel);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A cold-booted stand-in, past READY. */
async function boot(kernel: string, memoryMiB = 128): Promise<StandinSession> {
  return await startSession(await buildStandin(kernel, { memoryMiB }), {
    cold: true,
    signal: AbortSignal.timeout(HANG_MS),
  });
}

/** `work`, bounded only to turn a hang into a failure with the guest's console. */
function bounded<T>(s: StandinSession, work: Promise<T>): Promise<T> {
  return hangBound(work, () => `stand-in hung; console:\n${s.machine.log()}`);
}

async function sha256(b: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", b.slice()));
  return Array.from(h, (x) => x.toString(16).padStart(2, "0")).join("");
}

function random(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
  return b;
}

hostTest(
  "stand-in agent L1: 32 MiB through cat byte-exact with a slow reader, host memory bounded",
  [
    "kvm",
  ],
  async () => {
    await withKernel(async (_dir, kernel) => {
      await using s = await boot(kernel);
      const total = 32 << 20;
      const data = random(total);
      await bounded(
        s,
        (async () => {
          const before = s.transport.listened.length;
          await using child = await s.client.spawn(["cat"], { stdin: "piped" });
          // Listeners are made for stdin, stdout, stderr in that order.
          const outPort = s.transport.listened[before + 1];
          const out = s.transport.streams.find((x) => x.localPort === outPort)!;
          ok(out, "the stdout stream");
          let peakBuffered = 0;
          let stalls = 0;
          const writing = (async () => {
            const w = child.stdin.getWriter();
            for (let off = 0; off < total; off += 1 << 20) {
              await w.write(data.subarray(off, off + (1 << 20)));
            }
            await w.close();
          })();
          const got = new Uint8Array(total);
          let at = 0;
          const reader = child.stdout.getReader();
          for (;;) {
            // Slow for the first 8 MiB: read only once the guest has used all the credit it was given.
            if (at < 8 << 20) {
              await until(
                () => out.stats.guestCredit === 0 || out.stats.received === total,
                "the guest to fill its credit",
              );
              if (out.stats.guestCredit === 0) stalls++;
            }
            peakBuffered = Math.max(peakBuffered, out.stats.buffered);
            const r = await reader.read();
            if (r.done) break;
            got.set(r.value, at);
            at += r.value.length;
          }
          await writing;
          strictEqual(at, total);
          strictEqual(await sha256(got), await sha256(data));
          deepStrictEqual(await child.status, { code: 0, signal: null, success: true });
          ok(
            peakBuffered <= DEFAULT_BUFFER_SIZE,
            `host buffered ${peakBuffered} bytes for the reader`,
          );
          ok(stalls >= 8, `the guest was held back by the reader's credit ${stalls} times`);
        })(),
      );
      deepStrictEqual(s.machine.errors, []);
      strictEqual(s.machine.vsock.counters.creditViolations, 0);
    });
  },
);

hostTest("stand-in agent L1: KILL by pid, and the agent's answers to bad requests", [
  "kvm",
], async () => {
  await withKernel(async (_dir, kernel) => {
    await using s = await boot(kernel);
    const c = s.client;
    /** Sends `bytes` on a new connection to the agent, half-closes, returns all it answered. */
    const raw = async (bytes: Uint8Array) => {
      const conn = await s.machine.vsock.connect(AGENT_PORT);
      const w = conn.writable.getWriter();
      // The agent may answer and close before it read everything (as it does for E2BIG).
      const sent = (async () => {
        if (bytes.length > 0) await w.write(bytes);
        await w.close();
      })().catch(() => {});
      const text = await new Response(conn.readable).text();
      await sent;
      conn.close();
      return text;
    };
    const header = (magic: number, version: number, kind: number, length: number) => {
      const h = new Uint8Array(16);
      const v = new DataView(h.buffer);
      v.setUint32(0, magic, true);
      v.setUint16(4, version, true);
      v.setUint16(6, kind, true);
      v.setUint32(8, length, true);
      return h;
    };
    const join2 = (a: Uint8Array, b: Uint8Array) => {
      const o = new Uint8Array(a.length + b.length);
      o.set(a);
      o.set(b, a.length);
      return o;
    };
    await bounded(
      s,
      (async () => {
        // KILL on its own connection: a running command, then none.
        await using p = await c.spawn(["wait-signal"]);
        await c.kill(p.pid, "SIGINT");
        deepStrictEqual(await p.status, { code: 130, signal: 2, success: false });
        await rejects(
          c.kill(p.pid, "SIGTERM"),
          (e) => e instanceof AgentStepError && e.step === "kill" && e.errno === "ESRCH",
        );
        // Request-level errors, as AGENT.md lists them.
        const ok = frameRequest("POWEROFF", encodePoweroff()).subarray(16);
        strictEqual(await raw(new Uint8Array(0)), "", "no bytes: closed without a reply");
        strictEqual(await raw(Uint8Array.of(1, 2, 3)), "error request header: EPROTO\n");
        strictEqual(await raw(header(0x1234, 1, 6, 0)), "error request magic: EPROTO\n");
        strictEqual(
          await raw(header(REQUEST_MAGIC, 2, 6, 0)),
          "error request version: EPROTONOSUPPORT\n",
        );
        strictEqual(await raw(header(REQUEST_MAGIC, 1, 6, 2 << 20)), "error request: E2BIG\n");
        strictEqual(
          await raw(header(REQUEST_MAGIC, 1, 6, ok.length + 8)),
          "error request payload: EPROTO\n",
          "the connection ended inside the payload",
        );
        strictEqual(
          await raw(join2(header(REQUEST_MAGIC, 1, 9, ok.length), ok)),
          "error request kind: EINVAL\n",
        );
        const bad = ok.slice();
        new DataView(bad.buffer).setUint32(12, bad.length + 8, true); // its own size field
        strictEqual(
          await raw(join2(header(REQUEST_MAGIC, 1, 6, bad.length), bad)),
          "error request payload: EINVAL\n",
        );
        const exec = encodeExec({
          argv: ["echo", "x"],
          env: [],
          cwd: "/",
          root: "",
          path: "/bin",
          uid: null,
          gid: null,
          ports: { stdin: 0, stdout: 7, stderr: 0 },
        });
        const badReloc = exec.slice();
        const dv = new DataView(badReloc.buffer);
        dv.setUint32(dv.getUint32(20, true), badReloc.length, true); // a slot past the end
        strictEqual(
          await raw(join2(header(REQUEST_MAGIC, 1, 2, badReloc.length), badReloc)),
          "error relocate request: EINVAL\n",
        );
        const kill1 = encodeKill(2, 15, false);
        new DataView(kill1.buffer).setUint32(24, 1, true); // pid 1: never (the client refuses it too)
        strictEqual(
          await raw(join2(header(REQUEST_MAGIC, 1, 3, kill1.length), kill1)),
          "error kill: EINVAL\n",
        );
        // EXEC whose stdout port nobody listens on: the host refuses the guest's connection.
        strictEqual(
          await raw(join2(header(REQUEST_MAGIC, 1, 2, exec.length), exec)),
          "error connect stdout: ECONNREFUSED\n",
        );
        // And the agent goes on serving.
        strictEqual((await c.exec(["echo", "still", "here"])).stdoutText, "still here\n");
      })(),
    );
    deepStrictEqual(s.machine.errors, []);
  });
});

/** Boots, waits for READY, pauses and captures into `snap`; then the original VM is dropped. */
async function captureAtReady(kernel: string, snap: string): Promise<void> {
  const m = await buildStandin(kernel, { memoryMiB: 64 });
  await using s = await startSession(m, { cold: true, signal: AbortSignal.timeout(HANG_MS) });
  await s.machine.vm.pause();
  const r = await captureStandin(s.machine, snap);
  strictEqual(r, "published");
}

async function restore(snap: string): Promise<StandinSession> {
  return await startSession(await restoreStandin(snap, { memoryMiB: 64 }), {
    cold: false,
    signal: AbortSignal.timeout(HANG_MS),
  });
}

hostTest("stand-in agent L1: a snapshot at READY restored twice, the restores diverging", [
  "kvm",
], async () => {
  await withKernel(async (dir, kernel) => {
    const snap = join(dir, "snap");
    await captureAtReady(kernel, snap);
    await using a = await restore(snap);
    await using b = await restore(snap);
    await bounded(
      a,
      (async () => {
        // Both run at once, each with its own memory (copy-on-write of the same file).
        await Promise.all([
          a.client.writeFile("/who", "restore A"),
          b.client.writeFile("/who", "restore B"),
        ]);
        await a.client.writeFile("/only-a", "a");
        await b.client.writeFile("/only-b", "b", { mode: 0o700 });
        strictEqual(dec.decode(await a.client.readFile("/who")), "restore A");
        strictEqual(dec.decode(await b.client.readFile("/who")), "restore B");
        await rejects(b.client.readFile("/only-a"), /ENOENT/);
        await rejects(a.client.readFile("/only-b"), /ENOENT/);
        strictEqual((await b.client.exec(["mode", "/only-b"])).stdoutText, "700\n");
        const [ea, eb] = await Promise.all([
          a.client.exec(["echo", "from", "A"]),
          b.client.exec(["echo", "from", "B"]),
        ]);
        deepStrictEqual([ea.stdoutText, eb.stdoutText], ["from A\n", "from B\n"]);
      })(),
    );
    // Restored, never booted: no boot line on their consoles.
    for (const s of [a, b]) {
      ok(!s.machine.log().includes(STANDIN_BOOT_LINE), s.machine.log());
      deepStrictEqual(s.machine.errors, []);
      strictEqual(s.machine.vsock.counters.transportResets, 1);
    }
  });
});

const RESTORE_HELPER = new URL("./testdata/standin/restore_run.ts", import.meta.url).pathname;

hostTest("stand-in agent L1: a restore in a new process; a snapshot carries the guest's files", [
  "kvm",
], async () => {
  await withKernel(async (dir, kernel) => {
    // A snapshot taken after a file was written: the file table and bytes are guest RAM.
    const snap = join(dir, "snap");
    {
      await using s = await startSession(await buildStandin(kernel, { memoryMiB: 64 }), {
        cold: true,
        signal: AbortSignal.timeout(HANG_MS),
      });
      await bounded(s, s.client.writeFile("/carried", "in the snapshot", { mode: 0o751 }));
      await s.machine.vm.pause();
      strictEqual(await captureStandin(s.machine, snap), "published");
    }
    const out = join(dir, "out.json");
    const p = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", RESTORE_HELPER, snap, out],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => p.kill("SIGKILL"), HANG_MS); // only catches a hang
    const r = await p.output();
    clearTimeout(timer);
    strictEqual(r.code, 0, dec.decode(r.stderr));
    const got = JSON.parse(await Deno.readTextFile(out));
    deepStrictEqual(got, {
      carried: "in the snapshot",
      mode: "751\n",
      echo: "new process\n",
      roundTrip: "written after the restore",
      bootLine: false,
      errors: [],
    });
  });
});

hostTest(
  "stand-in agent L1: POWEROFF ends the VM through the ACPI sleep port",
  ["kvm"],
  async () => {
    await withKernel(async (_dir, kernel) => {
      await using s = await boot(kernel, 64);
      await bounded(s, s.client.poweroff());
      const stop = await bounded(s, s.stopped);
      deepStrictEqual([stop.kind, stop.source], ["poweroff", "acpi-sleep"]);
      match(s.machine.log(), /skiff-agent: READY 1/);
    });
  },
);
