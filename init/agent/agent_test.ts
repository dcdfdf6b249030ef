// L3 native: the guest agent (init/agent/program.ts, native variant) as PID 1
// of private mount and PID namespaces, driven by AgentClient over AF_UNIX.
import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { startNativeAgent } from "./testing.ts";
import { AgentStepError } from "./errors.ts";
import { AGENT_PORT } from "./protocol.ts";
import { ReplyReader } from "./reply_reader.ts";
import { encodeExec, encodePoweroff, frameRequest } from "./wire.ts";
import { overlayRootMounts } from "./mounts.ts";

const NEEDS = ["unshare", "root"] as const;

hostTest(
  "agent (native): several commands in one agent, status, env, cwd, stdin",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const r1 = await a.exec(
      ["sh", "-c", 'echo "out $0 $1 $FOO"; echo err >&2; exit 3', "x", "y z"],
      {
        env: { FOO: "bar baz", PATH: "/usr/bin:/bin" },
      },
    );
    strictEqual(r1.code, 3, r1.stderrText);
    strictEqual(r1.signal, null);
    strictEqual(r1.success, false);
    strictEqual(r1.stdoutText, "out x y z bar baz\n");
    strictEqual(r1.stderrText, "err\n");
    const r2 = await a.exec(["pwd"], { cwd: "/usr" });
    deepStrictEqual([r2.code, r2.stdoutText], [0, "/usr\n"]);
    const r3 = await a.exec(["cat"], { stdin: "from the host\n" });
    deepStrictEqual([r3.code, r3.stdoutText], [0, "from the host\n"]);
    const r4 = await a.exec(["skiff-no-such-command", "x"]);
    strictEqual(r4.code, 127);
    match(r4.stderrText, /skiff: skiff-no-such-command: command not found/);
    const r5 = await a.exec(["true"], { cwd: "/no/such/dir" });
    strictEqual(r5.code, 126);
    match(r5.stderrText, /error chdir \/no\/such\/dir: ENOENT/);
    // The agent is PID 1 of its namespace; commands run in their own sessions.
    // (The namespace's own /proc is the one the agent mounted under its prefix.)
    const r6 = await a.exec([
      "sh",
      "-c",
      `read -r pid comm state ppid pgrp sid rest < /proc/self/stat; echo $pid $pgrp $sid; cat ${agent.dir}/root/proc/1/comm`,
    ]);
    const [pid, pgrp, sid] = r6.stdoutText.split("\n")[0].split(" ").map(Number);
    ok(pid > 0 && pgrp === pid && sid === pid, r6.stdoutText);
    match(r6.stdoutText, /\nagent\n$/);
    await rejects(a.exec(["true"], { cwd: "relative" }), /absolute/);
  },
);

/** Processes (host pid, comm) in the agent's PID namespace, seen from the host's /proc. */
async function nsProcesses(hostPid: number): Promise<{ pid: number; comm: string }[]> {
  const ns = await Deno.readLink(`/proc/${hostPid}/ns/pid`).catch(() => null);
  if (ns === null) return [];
  const out: { pid: number; comm: string }[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const link = await Deno.readLink(`/proc/${e.name}/ns/pid`).catch(() => null);
    if (link !== ns) continue;
    const comm = await Deno.readTextFile(`/proc/${e.name}/comm`).catch(() => "?\n");
    out.push({ pid: Number(e.name), comm: comm.trim() });
  }
  return out;
}

/** Resolves once `cond()` holds, checking every few ms; rejects after a generous bound (hangs only). */
async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 30_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** `p`, or a failure naming `what` after a generous bound (a hang, not a timing). */
async function within<T>(p: Promise<T>, what: string, ms = 30_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function text(s: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(s).text();
}

hostTest(
  "agent (native): three concurrent spawns keep their interleaved output apart",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const script = (id: string) =>
      `i=0; while [ $i -lt 200 ]; do echo "${id} out $i"; echo "${id} err $i" >&2; i=$((i+1)); done`;
    await using a = await agent.client.spawn(["sh", "-c", script("A")]);
    await using b = await agent.client.spawn(["sh", "-c", script("B")]);
    await using c = await agent.client.spawn(["sh", "-c", script("C")]);
    const all = await Promise.all(
      [a, b, c].flatMap((p) => [text(p.stdout), text(p.stderr), p.status]),
    );
    ["A", "B", "C"].forEach((id, i) => {
      const [out, err, st] = all.slice(3 * i, 3 * i + 3) as [string, string, { code: number }];
      strictEqual(st.code, 0);
      const lines = (kind: string) =>
        Array.from({ length: 200 }, (_, n) => `${id} ${kind} ${n}\n`).join("");
      strictEqual(out, lines("out"));
      strictEqual(err, lines("err"));
    });
    ok(new Set([a.pid, b.pid, c.pid]).size === 3);
  },
);

hostTest(
  "agent (native): 32 MiB through cat, byte-exact, with a slow reader and bounded in-flight data",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const size = 32 << 20;
    const data = new Uint8Array(size);
    for (let off = 0; off < size; off += 65536) {
      crypto.getRandomValues(data.subarray(off, Math.min(size, off + 65536)));
    }
    await using cat = await agent.client.spawn(["cat"], { stdin: "piped" });
    let written = 0;
    let read = 0;
    let maxAhead = 0;
    const writer = (async () => {
      const w = cat.stdin.getWriter();
      for (let off = 0; off < size; off += 100_000) {
        const chunk = data.subarray(off, Math.min(size, off + 100_000));
        await w.write(chunk);
        written += chunk.length;
        maxAhead = Math.max(maxAhead, written - read);
      }
      await w.close();
    })();
    const got = new Uint8Array(size);
    const reader = cat.stdout.getReader();
    let chunks = 0;
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      got.set(r.value, read);
      read += r.value.length;
      // Slow: a macrotask between reads, and a longer pause now and then.
      await new Promise((res) => setTimeout(res, ++chunks % 64 === 0 ? 20 : 0));
    }
    await writer;
    strictEqual((await cat.status).code, 0);
    strictEqual(read, size);
    const digest = async (b: Uint8Array<ArrayBuffer>) =>
      Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", b))).join(",");
    strictEqual(await digest(got), await digest(data));
    // Without flow control the writer would finish at once (32 MiB ahead).
    ok(maxAhead < 8 << 20, `writer ran ${maxAhead} bytes ahead of the reader`);
  },
);

hostTest(
  "agent (native): an early close of stdout ends `yes` (SIGPIPE or EPIPE/ECONNRESET)",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    await using yes = await agent.client.spawn(["yes"]);
    const reader = yes.stdout.getReader();
    const first = await reader.read();
    ok(!first.done && new TextDecoder().decode(first.value).startsWith("y\n"));
    await reader.cancel();
    // Closing a unix socket with unread data gives the writer ECONNRESET (net/unix/af_unix.c
    // unix_release_sock), otherwise EPIPE and SIGPIPE: either way `yes` ends, on its own.
    const st = await within(yes.status, "yes to end");
    ok(st.signal === 13 || (st.signal === null && st.code === 1), JSON.stringify(st));
  },
);

hostTest("agent (native): stdin EOF, empty stdin, /dev/null stdin", NEEDS, async () => {
  await using agent = await startNativeAgent();
  {
    await using cat = await agent.client.spawn(["cat"], { stdin: "piped" });
    const w = cat.stdin.getWriter();
    await w.write(new TextEncoder().encode("abc"));
    const out = text(cat.stdout);
    await w.close();
    strictEqual(await out, "abc");
    strictEqual((await cat.status).code, 0);
  }
  {
    await using cat = await agent.client.spawn(["cat"], { stdin: "piped" });
    await cat.stdin.close();
    strictEqual(await text(cat.stdout), "");
    strictEqual((await cat.status).code, 0);
  }
  {
    await using cat = await agent.client.spawn(["cat"]);
    strictEqual(await text(cat.stdout), "");
    strictEqual((await cat.status).code, 0);
  }
  const r = await agent.client.exec(["sh", "-c", "wc -c"], { stdin: new Uint8Array(0) });
  strictEqual(r.stdoutText.trim(), "0");
});

hostTest(
  "agent (native): signals — SIGTERM gives 15/143, a group signal, KILL requests",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    {
      await using p = await agent.client.spawn(["sleep", "1000"]);
      await p.kill("SIGTERM");
      deepStrictEqual(await p.status, { code: 143, signal: 15, success: false });
      await rejects(p.kill(), /already ended/);
    }
    {
      // A shell and its child: the group gets it, so the shell's `wait` does not outlive sleep.
      await using p = await agent.client.spawn(["sh", "-c", "sleep 1000 & wait; echo never"]);
      await until(
        "the shell's child",
        async () => (await nsProcesses(agent.hostPid)).some((x) => x.comm === "sleep"),
      );
      await p.kill("SIGKILL", { group: true });
      deepStrictEqual(await p.status, { code: 137, signal: 9, success: false });
      strictEqual(await text(p.stdout), "");
      await until(
        "no sleep left",
        async () => !(await nsProcesses(agent.hostPid)).some((x) => x.comm === "sleep"),
      );
    }
    {
      await using p = await agent.client.spawn(["sleep", "1000"]);
      await agent.client.kill(p.pid, "SIGINT");
      deepStrictEqual(await p.status, { code: 130, signal: 2, success: false });
      const e = await agent.client.kill(p.pid, 15).then(() => null, (e) => e);
      ok(e instanceof AgentStepError && e.step === "kill" && e.errno === "ESRCH", String(e));
    }
    await rejects(agent.client.kill(1, 9), /bad pid 1/);
  },
);

hostTest(
  "agent (native): writeFile/readFile round trips — empty, 1 byte, 64 MiB, modes, owners",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const d = `${agent.dir}/files`;
    await Deno.mkdir(d);
    for (const [name, size] of [["empty", 0], ["one", 1], ["big", 64 << 20]] as const) {
      const data = new Uint8Array(size);
      for (let off = 0; off < size; off += 65536) {
        crypto.getRandomValues(data.subarray(off, Math.min(size, off + 65536)));
      }
      await a.writeFile(`${d}/${name}`, data);
      const back = await a.readFile(`${d}/${name}`);
      strictEqual(back.length, size);
      ok(back.every((x, i) => x === data[i]), `${name} differs`);
      // The host sees the same bytes (same file system).
      strictEqual((await Deno.stat(`${d}/${name}`)).size, size);
    }
    // Modes exactly, whatever the umask; set-id bits survive the chown.
    for (const mode of [0o600, 0o741, 0o4755, 0o2750, 0o1777, 0o000]) {
      await a.writeFile(`${d}/m`, "x", { mode, uid: 1234, gid: 5678 });
      const st = await Deno.stat(`${d}/m`);
      strictEqual(st.mode! & 0o7777, mode, `mode ${mode.toString(8)}`);
      deepStrictEqual([st.uid, st.gid], [1234, 5678]);
    }
    // Truncation: a shorter write replaces a longer file.
    await a.writeFile(`${d}/t`, "a long first version");
    await a.writeFile(`${d}/t`, "short");
    strictEqual(await Deno.readTextFile(`${d}/t`), "short");
    // `replace` unlinks a symlink instead of writing through it.
    await Deno.writeTextFile(`${d}/target`, "keep");
    await Deno.symlink(`${d}/target`, `${d}/link`);
    await a.writeFile(`${d}/link`, "new", { replace: true });
    strictEqual(await Deno.readTextFile(`${d}/target`), "keep");
    strictEqual(await Deno.readTextFile(`${d}/link`), "new");
    ok(!(await Deno.lstat(`${d}/link`)).isSymlink);
    // A stream as the source.
    await a.writeFile(
      `${d}/s`,
      ReadableStream.from(["ab", "cd"].map((s) => new TextEncoder().encode(s))),
    );
    strictEqual(await Deno.readTextFile(`${d}/s`), "abcd");
    // Errors name the step and the path.
    const e1 = await a.readFile(`${d}/missing`).then(() => null, (e) => e);
    ok(
      e1 instanceof AgentStepError && e1.step === `open ${d}/missing` && e1.errno === "ENOENT",
      String(e1),
    );
    const e2 = await a.readFile(d).then(() => null, (e) => e);
    ok(e2 instanceof AgentStepError && e2.errno === "EISDIR", String(e2));
    const e3 = await a.writeFile(`${d}/no/dir/f`, new Uint8Array(3 << 20)).then(
      () => null,
      (e) => e,
    );
    ok(
      e3 instanceof AgentStepError && e3.step === `open ${d}/no/dir/f` && e3.errno === "ENOENT",
      String(e3),
    );
    // /proc files have no size: read until EOF.
    match(new TextDecoder().decode(await a.readFile("/proc/self/status")), /^Name:/);
    const st = await a.stats();
    ok(
      st.memoryTotalBytes > 0 && st.memoryUsedBytes > 0 &&
        st.memoryUsedBytes <= st.memoryTotalBytes,
    );
    ok(st.cpuTimeMs > 0 && st.processes > 0, JSON.stringify(st));
    // A root directory to chroot into.
    await Deno.mkdir(`${d}/r/etc`, { recursive: true });
    await a.writeFile("/etc/x", "in the root", { root: `${d}/r` });
    strictEqual(await Deno.readTextFile(`${d}/r/etc/x`), "in the root");
    strictEqual(
      new TextDecoder().decode(await a.readFile("/etc/x", { root: `${d}/r` })),
      "in the root",
    );
  },
);

/** Resolves once a process of the agent's namespace sleeps in nanosleep(2) (a retry loop waiting). */
function someoneRetrying(hostPid: number): Promise<void> {
  return until("the agent retrying", async () => {
    for (const p of await nsProcesses(hostPid)) {
      const s = await Deno.readTextFile(`/proc/${p.pid}/syscall`).catch(() => "");
      if (s.startsWith("35 ")) return true; // nanosleep (arch/x86/entry/syscalls/syscall_64.tbl)
    }
    return false;
  });
}

hostTest(
  "agent (native): setup — tmpfs, bind, read-only bind, overlay, a mount that appears late, errors",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const d = `${agent.dir}/m`;
    await Deno.mkdir(`${d}/src`, { recursive: true });
    await Deno.writeTextFile(`${d}/src/f`, "bound");
    await Deno.mkdir(`${d}/lower`);
    await Deno.writeTextFile(`${d}/lower/l`, "lower");
    const MS_RDONLY = 1, MS_REMOUNT = 32, MS_BIND = 4096;
    const late = a.setup({
      mounts: [
        { source: "tmpfs", target: `${d}/t/deep`, fsType: "tmpfs", data: "size=1m,mode=0700" },
        { source: `${d}/src`, target: `${d}/b`, flags: MS_BIND },
        { source: `${d}/src`, target: `${d}/ro`, flags: MS_BIND },
        { target: `${d}/ro`, flags: MS_REMOUNT | MS_BIND | MS_RDONLY },
        { source: "tmpfs", target: `${d}/rw`, fsType: "tmpfs" },
        { target: `${d}/rw/upper`, mkdirOnly: true },
        { target: `${d}/rw/work`, mkdirOnly: true },
        {
          source: "overlay",
          target: `${d}/merged`,
          fsType: "overlay",
          data: `lowerdir=${d}/lower,upperdir=${d}/rw/upper,workdir=${d}/rw/work`,
        },
        { source: `${d}/late`, target: `${d}/w`, flags: MS_BIND, waitMs: 60_000 },
      ],
    });
    late.catch(() => {}); // awaited below
    // The last source does not exist yet: the agent retries; then it appears.
    await someoneRetrying(agent.hostPid);
    await Deno.mkdir(`${d}/late`);
    await Deno.writeTextFile(`${d}/late/x`, "late");
    await late;
    const info = new TextDecoder().decode(await a.readFile("/proc/self/mountinfo"));
    const at = (p: string) => info.split("\n").find((l) => l.split(" ")[4] === p) ?? "";
    match(at(`${d}/t/deep`), / - tmpfs tmpfs .*size=1024k,mode=700/);
    match(at(`${d}/rw`), / - tmpfs /);
    match(at(`${d}/merged`), / - overlay overlay /);
    match(at(`${d}/ro`), /^\S+ \S+ \S+ \S+ \S+ ro[, ]/);
    const r = await a.exec([
      "sh",
      "-c",
      `cat ${d}/b/f ${d}/merged/l ${d}/w/x; echo up > ${d}/merged/u; cat ${d}/rw/upper/u; echo no > ${d}/ro/f`,
    ]);
    strictEqual(r.stdoutText, "boundlowerlateup\n");
    match(r.stderrText, /Read-only file system/);
    // None of it is visible outside the agent's mount namespace.
    strictEqual(await Deno.stat(`${d}/merged/l`).then(() => true, () => false), false);
    // Errors: the failing step names the target; a wait has a bound.
    const e1 = await a.setup({ mounts: [{ source: "x", target: `${d}/bad`, fsType: "nosuchfs" }] })
      .then(() => null, (e) => e);
    ok(
      e1 instanceof AgentStepError && e1.step === `mount ${d}/bad` && e1.errno === "ENODEV",
      String(e1),
    );
    const e2 = await a.setup({
      mounts: [{ source: `${d}/never`, target: `${d}/w2`, flags: MS_BIND, waitMs: 100 }],
    }).then(() => null, (e) => e);
    ok(
      e2 instanceof AgentStepError && e2.step === `mount ${d}/w2` && e2.errno === "ENOENT",
      String(e2),
    );
    // EINVAL is retried too (virtio-fs's "tag not found"); real bad options fail after the wait.
    const e3 = await a.setup({
      mounts: [{
        source: "tmpfs",
        target: `${d}/w3`,
        fsType: "tmpfs",
        data: "nosuch=1",
        waitMs: 60,
      }],
    }).then(() => null, (e) => e);
    ok(
      e3 instanceof AgentStepError && e3.step === `mount ${d}/w3` && e3.errno === "EINVAL",
      String(e3),
    );
    await rejects(a.setup({ mounts: [{ target: "relative" }] }), /absolute/);
  },
);

hostTest(
  "agent (native): setup — host name, and an interface that appears late",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent({ isolateNet: true });
    const a = agent.client;
    const net = a.setup({
      hostname: "skiff-agent-test",
      net: { interface: "eth0", address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1" },
    });
    net.catch(() => {}); // awaited below
    await someoneRetrying(agent.hostPid);
    const add = await new Deno.Command("nsenter", {
      args: [
        ...["-t", String(agent.hostPid), "-n"],
        ...["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
      ],
    }).output();
    strictEqual(add.code, 0, new TextDecoder().decode(add.stderr));
    await net;
    const r = await a.exec(["sh", "-c", "hostname; ip -4 -o addr show eth0; ip route"]);
    match(r.stdoutText, /^skiff-agent-test\n/);
    match(r.stdoutText, /eth0\s+inet 10\.42\.0\.2\/24/);
    match(r.stdoutText, /default via 10\.42\.0\.1 dev eth0/);
    const e = await a.setup({
      net: { interface: "eth9", address: "10.0.0.2", prefixLength: 8, waitMs: 60 },
    })
      .then(() => null, (e) => e);
    ok(
      e instanceof AgentStepError && e.step === "find interface eth9" && e.errno === "ENODEV",
      String(e),
    );
  },
);

hostTest(
  "agent (native): a dropped control connection kills the command's process group",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const t = agent.transport;
    // By hand, to close the control connection outright (not a half-close).
    const out = await t.listen();
    const control = await t.connect(AGENT_PORT);
    const w = control.writable.getWriter();
    await w.write(frameRequest(
      "EXEC",
      encodeExec({
        argv: ["sh", "-c", "sleep 1000 & echo started; wait"],
        env: ["PATH=/usr/bin:/bin"],
        cwd: "/",
        root: "",
        path: "/usr/bin:/bin",
        uid: null,
        gid: null,
        ports: { stdin: 0, stdout: out.port, stderr: out.port },
      }),
    ));
    w.releaseLock();
    const replies = new ReplyReader(control.readable);
    const stdout = await out.accept();
    out.close();
    const pid = await replies.reply();
    strictEqual(pid?.kind, "pid");
    const reader = new ReplyReader(stdout.readable);
    strictEqual(await reader.line(), "started");
    const comms = async () => (await nsProcesses(agent.hostPid)).map((p) => p.comm).sort();
    // (The background child is `sh` until it has exec'd sleep.)
    await until(
      "sh and sleep running",
      async () => (await comms()).filter((c) => c === "sleep" || c === "sh").join() === "sh,sleep",
    );
    control.close();
    // Killed: its stdout ends, and neither the shell nor its child is left.
    strictEqual(await reader.line(), null);
    stdout.close();
    await until(
      "sh and sleep gone",
      async () => !(await comms()).some((c) => c === "sleep" || c === "sh"),
    );
    // The agent serves on.
    strictEqual((await agent.client.exec(["echo", "still here"])).stdoutText, "still here\n");
  },
);

hostTest(
  "agent (native): dispose and abort kill a running command; status says SIGKILL",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    let status: Promise<unknown>;
    {
      await using p = await agent.client.spawn(["sleep", "1000"]);
      status = p.status;
    }
    deepStrictEqual(await status, { code: 137, signal: 9, success: false });
    const ac = new AbortController();
    const run = agent.client.exec(["sleep", "1000"], { signal: ac.signal });
    await until(
      "sleep running",
      async () => (await nsProcesses(agent.hostPid)).some((x) => x.comm === "sleep"),
    );
    ac.abort(new Error("stop it"));
    await rejects(run, /stop it/);
    await until(
      "sleep gone",
      async () => !(await nsProcesses(agent.hostPid)).some((x) => x.comm === "sleep"),
    );
    // An aborted signal before the call: nothing starts.
    await rejects(
      agent.client.exec(["true"], { signal: AbortSignal.abort(new Error("early")) }),
      /early/,
    );
  },
);

hostTest(
  "agent (native): a silent client never blocks the agent; bad requests get named errors",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const t = agent.transport;
    const silent = await t.connect(AGENT_PORT); // sends nothing, ever
    strictEqual((await agent.client.exec(["echo", "served"])).stdoutText, "served\n");
    const raw = async (bytes: Uint8Array) => {
      const c = await t.connect(AGENT_PORT);
      const w = c.writable.getWriter();
      await w.write(bytes);
      await w.close();
      const line = await new ReplyReader(c.readable).line();
      c.close();
      return line;
    };
    const good = frameRequest("POWEROFF", encodePoweroff());
    const bad = (edit: (d: DataView) => void) => {
      const b = good.slice();
      edit(new DataView(b.buffer));
      return b;
    };
    strictEqual(
      await raw(bad((d) => d.setUint32(0, 0x12345678, true))),
      "error request magic: EPROTO",
    );
    strictEqual(
      await raw(bad((d) => d.setUint16(4, 2, true))),
      "error request version: EPROTONOSUPPORT",
    );
    strictEqual(await raw(bad((d) => d.setUint16(6, 99, true))), "error request kind: EINVAL");
    strictEqual(await raw(bad((d) => d.setUint32(8, (1 << 20) + 1, true))), "error request: E2BIG");
    strictEqual(await raw(bad((d) => d.setUint32(8, 100, true))), "error request payload: EPROTO");
    strictEqual(await raw(good.subarray(0, 10)), "error request header: EPROTO");
    // A relocation slot outside the payload: one entry, read from the size field (24) — 24 + 8 > 24.
    strictEqual(
      await raw(bad((d) => {
        d.setUint32(16 + 16, 1, true);
        d.setUint32(16 + 20, 12, true);
      })),
      "error relocate request: EINVAL",
    );
    const wrongKindSize = frameRequest("EXEC", encodePoweroff());
    strictEqual(await raw(wrongKindSize), "error request payload: EINVAL");
    silent.close();
    // And it still serves.
    strictEqual((await agent.client.exec(["echo", "ok"])).stdoutText, "ok\n");
  },
);

hostTest(
  "agent (native): power off ends the namespace and leaves nothing behind",
  NEEDS,
  async () => {
    const agent = await startNativeAgent();
    const { dir, hostPid } = agent;
    await using p = await agent.client.spawn(["sh", "-c", "sleep 1000 & sleep 1000"]);
    ok((await nsProcesses(hostPid)).length >= 3);
    await agent.client.poweroff();
    const st = await agent.exited;
    // reboot(2) in a PID namespace ends its init with SIGINT (kernel/pid_namespace.c).
    strictEqual(st.signal, "SIGINT");
    deepStrictEqual(await nsProcesses(hostPid), []);
    // Its command's streams end with it.
    strictEqual(await text(p.stdout), "");
    await rejects(p.status, /without a reply|closed/);
    await agent[Symbol.asyncDispose]();
    strictEqual(await Deno.stat(dir).then(() => true, () => false), false);
  },
);

hostTest(
  "agent (native): overlayRootMounts — commands chroot into a writable overlay root",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const at = `${agent.dir}/mnt/root`;
    // The host's root file system (no submounts) stands in for the virtio-fs root.
    await a.setup({
      mounts: overlayRootMounts({
        lower: { source: "/", flags: 4096 /* MS_BIND */ },
        at,
        layers: `${agent.dir}/mnt/layers`,
      }),
    });
    const r = await a.exec([
      "sh",
      "-c",
      "echo hi > /skiff-agent-new; cat /skiff-agent-new; cat /proc/self/comm; test -c /dev/null && echo dev; " +
      "stat -f -c %T /tmp /run; touch /usr/skiff-agent-x && echo upper",
    ], { root: at, cwd: "/usr" });
    strictEqual(r.stdoutText, "hi\ncat\ndev\ntmpfs\ntmpfs\nupper\n", r.stderrText);
    // Written into the tmpfs upper layer, not the host.
    strictEqual(await Deno.stat("/skiff-agent-new").then(() => true, () => false), false);
    strictEqual(await Deno.stat("/usr/skiff-agent-x").then(() => true, () => false), false);
    const m = overlayRootMounts({ lower: { tag: "root" } });
    deepStrictEqual(m[0], {
      source: "root",
      target: "/mnt/layers/lower",
      fsType: "virtiofs",
      flags: 1,
      waitMs: 10_000,
    });
    strictEqual(m[4].target, "/mnt/root");
  },
);

hostTest(
  "agent (native): a command runs as the uid, gid and supplementary groups asked for",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const r = await agent.client.exec(["sh", "-c", "id -u; id -g; id -G"], {
      uid: 1234,
      gid: 100,
      groups: [27, 4242],
    });
    strictEqual(r.code, 0, r.stderrText);
    strictEqual(r.stdoutText, "1234\n100\n100 27 4242\n");
    // With a gid and no groups the command keeps none of root's.
    const none = await agent.client.exec(["id", "-G"], { uid: 1234, gid: 100 });
    strictEqual(none.stdoutText, "100\n");
  },
);

hostTest(
  "agent (native): setup — UMOUNT detaches a mount with what is under it; an unmounted target is fine",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const d = `${agent.dir}/u`;
    const MS_BIND = 4096;
    await Deno.mkdir(`${d}/src`, { recursive: true });
    await a.setup({
      mounts: [
        { source: "tmpfs", target: `${d}/t`, fsType: "tmpfs" },
        { source: `${d}/src`, target: `${d}/t/inner`, flags: MS_BIND },
      ],
    });
    strictEqual(
      (await a.exec(["sh", "-c", `echo x > ${d}/t/file; ls ${d}/t`])).stdoutText,
      "file\ninner\n",
    );
    await a.setup({
      mounts: [{ target: `${d}/t`, umount: true }, { target: `${d}/never`, umount: true }],
    });
    strictEqual(
      (await a.exec(["ls", "-A", `${d}/t`])).stdoutText,
      "",
      "the tmpfs and its bind are gone",
    );
    const mounts = (await a.exec(["cat", "/proc/self/mountinfo"])).stdoutText;
    ok(!mounts.includes(`${d}/t`), mounts);
  },
);

hostTest(
  "agent (native): setup — files written last, inside their root, as WRITE_FILE writes them",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const root = `${agent.dir}/froot`;
    await Deno.mkdir(`${root}/etc`, { recursive: true });
    // Names the host's / does not have: were the chroot missing, nothing of the host's is hit.
    // A symlink that REPLACE must replace, not write through (it points out of the root).
    await Deno.writeTextFile(`${agent.dir}/outside`, "untouched");
    await Deno.symlink(`../../outside`, `${root}/etc/skiff-resolv.conf`);
    await a.setup({
      // The files go into a tmpfs this same SETUP mounts: they come after the mounts.
      mounts: [{ source: "tmpfs", target: `${root}/run`, fsType: "tmpfs" }],
      filesRoot: root,
      files: [
        {
          path: "/etc/skiff-resolv.conf",
          content: "nameserver 10.42.0.1\n",
          mode: 0o644,
          replace: true,
        },
        { path: "/run/skiff-hosts", content: "127.0.0.1\tlocalhost\n", mode: 0o4755 },
        { path: "/etc/skiff-empty", content: new Uint8Array(0), mode: 0o600 },
      ],
    });
    const r = await a.exec([
      "sh",
      "-c",
      `cd ${root}; cat etc/skiff-resolv.conf run/skiff-hosts; stat -c '%a %s %F' etc/skiff-resolv.conf run/skiff-hosts etc/skiff-empty`,
    ]);
    strictEqual(
      r.stdoutText,
      "nameserver 10.42.0.1\n127.0.0.1\tlocalhost\n" +
        "644 21 regular file\n4755 20 regular file\n600 0 regular empty file\n",
      r.stderrText,
    );
    strictEqual(await Deno.readTextFile(`${agent.dir}/outside`), "untouched");
    // The tmpfs is the agent's: the file is not on the host's side of it.
    strictEqual(await Deno.stat(`${root}/run/skiff-hosts`).then(() => true, () => false), false);
    // A failing file names its step and path; the ones before it are written.
    const e = await a.setup({
      filesRoot: root,
      files: [
        { path: "/etc/skiff-first", content: "1", mode: 0o644 },
        { path: "/nodir/f", content: "x", mode: 0o644 },
      ],
    }).then(() => null, (e) => e);
    ok(
      e instanceof AgentStepError && e.step === "open /nodir/f" && e.errno === "ENOENT",
      String(e),
    );
    strictEqual(await Deno.readTextFile(`${root}/etc/skiff-first`), "1");
  },
);

hostTest(
  "agent (native): setup — files written after the first filesAfterMount mount entries",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const m = `${agent.dir}/under`;
    await Deno.mkdir(m);
    const tmpfs = { source: "tmpfs", target: m, fsType: "tmpfs" };
    const file = (name: string) => ({ path: `${m}/${name}`, content: name, mode: 0o644 });
    // Before the tmpfs: the file lands in the directory the tmpfs then covers
    // (the agent's mounts are its own; the host sees the directory itself).
    await a.setup({ mounts: [tmpfs], files: [file("before")], filesAfterMount: 0 });
    strictEqual(await Deno.readTextFile(`${m}/before`), "before");
    const inside = await a.exec(["ls", m]);
    strictEqual(inside.stdoutText, "", inside.stderrText);
    // After it (the default): into the agent's tmpfs, not the host's directory.
    await a.setup({ mounts: [tmpfs], files: [file("after")] });
    strictEqual(await Deno.stat(`${m}/after`).then(() => true, () => false), false);
    strictEqual((await a.exec(["cat", `${m}/after`])).stdoutText, "after");
  },
);
