/**
 * L1: the guest agent protocol over skiff's virtio-vsock device on /dev/kvm,
 * with the stand-in kernel (testdata/standin/: a user-mode vsock driver and
 * agent with built-in commands and an in-RAM file table) as the guest, and
 * `AgentClient` on the host side exactly as against the real agent. Proves
 * the VMM half of the kvm engine's agent path where Linux cannot run (DESIGN.md,
 * "This workplace's KVM"): the vsock device under the MMIO transport with a
 * real driver on a real vCPU, interrupts, credit flow control with a slow
 * reader, many connections at once, and snapshots of a VM with the agent
 * (restored twice, and in a new process).
 *
 * The machine is the kvm engine's builder plus the vsock device in slot 1
 * (testdata/standin/machine.ts) until the engine boots the agent itself.
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
import { DEFAULT_BUFFER_SIZE } from "../../devices/virtio/vsock/device.ts";

const enc = new TextEncoder();
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

hostTest("stand-in agent L1: several commands in one VM, exit codes, stderr, errors", [
  "kvm",
], async () => {
  await withKernel(async (_dir, kernel) => {
    await using s = await boot(kernel);
    const c = s.client;
    await bounded(
      s,
      (async () => {
        await c.setup({ hostname: "standin" });
        const echo = await c.exec(["echo", "hello", "world"]);
        deepStrictEqual([echo.code, echo.stdoutText, echo.stderrText], [0, "hello world\n", ""]);
        const err = await c.exec(["echo-err", "to", "stderr"]);
        deepStrictEqual([err.code, err.stdoutText, err.stderrText], [0, "", "to stderr\n"]);
        deepStrictEqual((await c.exec(["exit", "7"])).code, 7);
        deepStrictEqual((await c.exec(["true"])).success, true);
        deepStrictEqual((await c.exec(["false"])).code, 1);
        const missing = await c.exec(["no-such-command", "x"]);
        deepStrictEqual(
          [missing.code, missing.stderrText],
          [127, "skiff: no-such-command: command not found\n"],
        );
        // stderr merged into stdout: one stream, one connection.
        const merged = await c.exec(["echo-err", "merged"], { stderr: "stdout" });
        deepStrictEqual([merged.stdoutText, merged.stderrText], ["merged\n", ""]);
        // stdin as bytes, through cat.
        const cat = await c.exec(["cat"], { stdin: "through stdin" });
        strictEqual(cat.stdoutText, "through stdin");
        // Many in a row: connection slots are recycled.
        for (let i = 0; i < 40; i++) {
          strictEqual((await c.exec(["echo", String(i)])).stdoutText, `${i}\n`);
        }
        await rejects(
          c.kill(4242, "SIGTERM"),
          (e) => e instanceof AgentStepError && e.step === "kill" && e.errno === "ESRCH",
        );
      })(),
    );
    deepStrictEqual(s.machine.errors, []);
    ok(s.machine.log().startsWith(STANDIN_BOOT_LINE), s.machine.log());
  });
});

hostTest("stand-in agent L1: three concurrent spawns, interleaved output kept apart", [
  "kvm",
], async () => {
  await withKernel(async (_dir, kernel) => {
    await using s = await boot(kernel);
    const c = s.client;
    await bounded(
      s,
      (async () => {
        // Three cats fed in turns: every stream carries its own bytes only, in order.
        const cats = await Promise.all(
          ["a", "b", "c"].map(() => c.spawn(["cat"], { stdin: "piped" })),
        );
        const pids = new Set(cats.map((k) => k.pid));
        strictEqual(pids.size, 3);
        const outs = cats.map((k) => new Response(k.stdout).text());
        const writers = cats.map((k) => k.stdin.getWriter());
        for (let i = 0; i < 200; i++) {
          await Promise.all(writers.map((w, j) => w.write(enc.encode(`${"abc"[j]}${i};`))));
        }
        await Promise.all(writers.map((w) => w.close()));
        const texts = await Promise.all(outs);
        texts.forEach((t, j) => {
          const want = Array.from({ length: 200 }, (_, i) => `${"abc"[j]}${i};`).join("");
          strictEqual(t, want);
        });
        for (const k of cats) {
          deepStrictEqual(await k.status, { code: 0, signal: null, success: true });
        }
        for (const k of cats) {
          await k[Symbol.asyncDispose]();
        }

        // Three writers of their own: one line per turn each, stdout and stderr apart.
        const runs = await Promise.all(
          ["x", "y", "z"].map((p) => c.exec(["lines", p, "300"])),
        );
        runs.forEach((r, j) => {
          const p = "xyz"[j];
          strictEqual(r.code, 0);
          strictEqual(
            r.stdoutText,
            Array.from({ length: 300 }, (_, i) => `${p} out ${i}\n`).join(""),
          );
          strictEqual(
            r.stderrText,
            Array.from({ length: 300 }, (_, i) => `${p} err ${i}\n`).join(""),
          );
        });
      })(),
    );
    deepStrictEqual(s.machine.errors, []);
  });
});

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

hostTest("stand-in agent L1: signals reach spawned commands (SIGTERM → signal 15, code 143)", [
  "kvm",
], async () => {
  await withKernel(async (_dir, kernel) => {
    await using s = await boot(kernel);
    const c = s.client;
    await bounded(
      s,
      (async () => {
        // A signal frame on the control connection.
        await using a = await c.spawn(["wait-signal"]);
        await a.kill("SIGCHLD"); // default action: ignore
        await a.kill("SIGTERM");
        deepStrictEqual(await a.status, { code: 143, signal: 15, success: false });
        // KILL by pid on its own connection.
        await using b = await c.spawn(["wait-signal"]);
        await c.kill(b.pid, "SIGINT");
        deepStrictEqual(await b.status, { code: 130, signal: 2, success: false });
        await rejects(c.kill(b.pid, "SIGTERM"), /ESRCH/);
        // Dropping the child (control EOF): the supervisor's SIGKILL.
        const d = await c.spawn(["wait-signal"]);
        await d[Symbol.asyncDispose]();
        deepStrictEqual(await d.status, { code: 137, signal: 9, success: false });
        // Aborting exec kills the command.
        const ac = new AbortController();
        const running = c.exec(["wait-signal"], { signal: ac.signal });
        ac.abort(new Error("stop it"));
        await rejects(running, /stop it/);
        // The agent still serves.
        strictEqual((await c.exec(["echo", "still", "here"])).stdoutText, "still here\n");
      })(),
    );
    deepStrictEqual(s.machine.errors, []);
  });
});

hostTest("stand-in agent L1: writeFile/readFile round trips (empty, 1 byte, 64 MiB, mode bits)", [
  "kvm",
], async () => {
  await withKernel(async (_dir, kernel) => {
    await using s = await boot(kernel, 192);
    const c = s.client;
    await bounded(
      s,
      (async () => {
        await c.writeFile("/empty", new Uint8Array(0));
        deepStrictEqual(await c.readFile("/empty"), new Uint8Array(0));
        await c.writeFile("/one", Uint8Array.of(0xa5));
        deepStrictEqual(await c.readFile("/one"), Uint8Array.of(0xa5));
        const big = random(64 << 20);
        await c.writeFile("/big", big);
        const back = await c.readFile("/big");
        strictEqual(back.length, big.length);
        strictEqual(await sha256(back), await sha256(big));
        // Mode bits applied exactly (set-id and sticky included), seen by a command.
        await c.writeFile("/suid", "x", { mode: 0o4755 });
        await c.writeFile("/private", "y", { mode: 0o600 });
        strictEqual((await c.exec(["mode", "/suid"])).stdoutText, "4755\n");
        strictEqual((await c.exec(["mode", "/private"])).stdoutText, "600\n");
        // Rewriting truncates; a stream is taken as it comes.
        await c.writeFile("/one", "rewritten", { mode: 0o640 });
        strictEqual(dec.decode(await c.readFile("/one")), "rewritten");
        strictEqual((await c.exec(["mode", "/one"])).stdoutText, "640\n");
        await c.writeFile("/stream", ReadableStream.from([enc.encode("a"), enc.encode("bc")]));
        strictEqual(dec.decode(await c.readFile("/stream")), "abc");
        await rejects(
          c.readFile("/nope"),
          (e) => e instanceof AgentStepError && e.step === "open /nope" && e.errno === "ENOENT",
        );
        strictEqual((await c.exec(["mode", "/nope"])).code, 1);
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
