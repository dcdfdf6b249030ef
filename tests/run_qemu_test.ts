/**
 * L3q: `skiff run` end to end on the qemu engine — the Debian kernel under
 * QEMU TCG, skiff's initramfs and init, the host root served by skiff's FUSE
 * server over vhost-user, and the workload's streams on named ports. Each
 * run is a real `skiff` process with a private TMPDIR that must be empty
 * afterwards, and a deadline that kills it.
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { hostTest } from "./requirements.ts";
import { GUEST_HANG_MS } from "./waits.ts";
import { runSkiff, type SkiffRun } from "./skiff_process.ts";
import { assertKernel, testKernel } from "../hv/qemu/testing.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const kernel = await testKernel();

/** Runs `skiff run --engine qemu ARGS` with `stdin` (a private TMPDIR; a bound that catches a hang). */
function skiffRun(args: string[], stdin = "", deadlineMs = GUEST_HANG_MS): Promise<SkiffRun> {
  return runSkiff(["run", "--engine", "qemu", ...args], { stdin, deadlineMs });
}

const needs = ["qemu", "kernel"] as const;

hostTest("skiff run (qemu): exit codes of true, false, exit 7, a signal, a missing command", [
  ...needs,
], async () => {
  assertKernel(kernel);
  strictEqual((await skiffRun(["--", "/bin/true"])).code, 0);
  strictEqual((await skiffRun(["--", "/bin/false"])).code, 1);
  strictEqual((await skiffRun(["--", "sh", "-c", "exit 7"])).code, 7);
  strictEqual((await skiffRun(["--", "sh", "-c", "kill -TERM $$"])).code, 128 + 15);
  const missing = await skiffRun(["--", "no-such-command-xyz"]);
  strictEqual(missing.code, 127);
  match(missing.stderr, /no-such-command-xyz/);
});

hostTest("skiff run (qemu) --verbose: a timeline from QEMU's start to the VM's stop, in order", [
  ...needs,
], async () => {
  assertKernel(kernel);
  for (const extra of [[], ["--no-snapshot"]]) {
    const r = await skiffRun([...extra, "--verbose", "--", "sh", "-c", "exit 4"]);
    strictEqual(r.code, 4, r.stderr);
    const lines = [...r.stderr.matchAll(/^skiff: timeline \+(\d+) ms: (.*)$/gm)];
    const events = lines.map((m) => m[2].replace(/ \(pid \d+\)$/, ""));
    const ready = extra.length ? /^guest READY$/ : /^(snapshot restored \(paused\)|guest READY)$/;
    strictEqual(events.length, 8, r.stderr);
    deepStrictEqual(events.filter((_, i) => i !== 3), [
      "qemu engine starting",
      "QEMU spawned",
      "QMP up",
      "session ready (devices plugged, agent set up)",
      "command started",
      "command exited (code 4)",
      "VM stopped",
    ]);
    match(events[3], ready);
    const ms = lines.map((m) => Number(m[1]));
    deepStrictEqual(ms, [...ms].sort((a, b) => a - b), "times only grow");
  }
});

hostTest("skiff run (qemu): uname, stdout and stderr apart, stdin piped through", [
  ...needs,
], async () => {
  assertKernel(kernel);
  const uname = await skiffRun(["--", "uname", "-a"]);
  strictEqual(uname.code, 0, uname.stderr);
  match(uname.stdout, new RegExp(`^Linux skiff ${kernel.version.replaceAll(".", "\\.")} `));
  const streams = await skiffRun(["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
  deepStrictEqual([streams.code, streams.stdout, streams.stderr], [3, "out\n", "err\n"]);
  const cat = await skiffRun(["--", "cat"], "hi\nthere\n");
  deepStrictEqual([cat.code, cat.stdout], [0, "hi\nthere\n"]);
  // The session's /etc/hosts (written with the SETUP): the host name resolves.
  const hosts = await skiffRun(["--", "sh", "-c", "stat -c %a /etc/hosts; getent hosts skiff"]);
  deepStrictEqual([hosts.code, hosts.stdout], [0, "644\n127.0.1.1       skiff\n"], hosts.stderr);
});

hostTest("skiff run (qemu): arguments after CMD are CMD's (run ls --help runs ls --help)", [
  ...needs,
], async () => {
  assertKernel(kernel);
  for (const args of [["ls", "--help"], ["--memory", "256", "ls", "-l", "--help"]]) {
    const r = await skiffRun(args);
    strictEqual(r.code, 0, r.stderr);
    match(r.stdout, /^Usage: ls \[OPTION\]/, `skiff run ${args.join(" ")}`);
    ok(!r.stdout.includes("skiff"), r.stdout);
  }
});

hostTest(
  "skiff run (qemu): --volume writes reach the host; the root is read-only on the host side",
  [
    ...needs,
  ],
  async () => {
    assertKernel(kernel);
    const vol = await Deno.makeTempDir({ prefix: "skiff-vol-" });
    try {
      await Deno.writeTextFile(`${vol}/in.txt`, "from host\n");
      const marker = `/etc/skiff-overlay-test-${Date.now()}`;
      const r = await skiffRun([
        "--volume",
        `${vol}:/data`,
        "--env",
        "GREETING=hello",
        "--workdir",
        "/data",
        "--",
        "sh",
        "-c",
        `cat in.txt; echo "$GREETING $(pwd)" > out.txt; echo x > ${marker} && cat ${marker}; ` +
        // The root share hides /home and /root.
        "test -e /home || test -e /root || echo hidden",
      ]);
      strictEqual(r.code, 0, r.stderr);
      strictEqual(r.stdout, "from host\nx\nhidden\n");
      strictEqual(await Deno.readTextFile(`${vol}/out.txt`), "hello /data\n");
      let onHost = true;
      try {
        await Deno.stat(marker);
      } catch {
        onHost = false;
      }
      strictEqual(onHost, false, "a write to the guest's root overlay must not reach the host");
      const ro = await skiffRun(["--volume", `${vol}:/data:ro`, "--", "touch", "/data/new"]);
      ok(ro.code !== 0);
      match(ro.stderr, /Read-only file system/);
    } finally {
      await Deno.remove(vol, { recursive: true });
    }
  },
);

hostTest("skiff run (qemu): --timeout stops the VM with exit 124 and cleans up", [
  ...needs,
], async () => {
  assertKernel(kernel);
  const r = await skiffRun(["--timeout", "10", "--", "sleep", "600"]);
  strictEqual(r.code, 124, r.stderr);
  match(r.stderr, /timed out after 10 s/);
});

hostTest("skiff run: a missing volume is an error before boot", [], async () => {
  const r = await skiffRun(["--volume", "/no/such/dir:/x", "--", "true"]);
  strictEqual(r.code, 125);
  match(r.stderr, /host path \/no\/such\/dir does not exist/);
});

hostTest("skiff boot (qemu): an interactive shell on the console; its exit code is boot's", [
  ...needs,
], async () => {
  assertKernel(kernel);
  const tmp = await Deno.makeTempDir({ prefix: "skiff-boottest-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "boot", "--engine", "qemu"],
      env: { TMPDIR: tmp },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), GUEST_HANG_MS); // only catches a hang
    const reader = child.stdout.getReader();
    const td = new TextDecoder();
    let out = "";
    // Type only once the prompt is there: the shell flushes earlier input when it sets up the tty.
    while (!out.includes("# ")) {
      const r = await reader.read();
      if (r.done) break;
      out += td.decode(r.value);
    }
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("echo $((6*7)); tty; exit 5\n"));
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      out += td.decode(r.value);
    }
    const status = await child.status;
    clearTimeout(timer);
    await writer.close().catch(() => {});
    strictEqual(status.code, 5, out);
    match(out, /\r?\n42\r?\n\/dev\/ttyS0\r?\n/);
    deepStrictEqual([...Deno.readDirSync(tmp)].map((e) => e.name), []);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

hostTest("skiff run (qemu) --net: host loopback only with --net=host-loopback, byte-exact", [
  ...needs,
], async () => {
  assertKernel(kernel);
  const body = new Uint8Array(2 << 20);
  for (let i = 0; i < body.length; i += 65536) crypto.getRandomValues(body.subarray(i, i + 65536));
  const digest = async (b: Uint8Array<ArrayBuffer>) =>
    Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", b)))
      .map((x) => x.toString(16).padStart(2, "0")).join("");
  const srv = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(body),
  );
  try {
    const url = `http://10.42.0.1:${srv.addr.port}/`;
    const r = await skiffRun([
      "--net=host-loopback",
      "--",
      "sh",
      "-c",
      `curl -sf ${url} | sha256sum; cat /etc/resolv.conf`,
    ]);
    strictEqual(r.code, 0, r.stderr);
    strictEqual(r.stdout.split(" ")[0], await digest(body));
    match(r.stdout, /\nnameserver 10\.42\.0\.1\n$/);
    const denied = await skiffRun(["--net", "--", "curl", "-sf", "-m", "5", url]);
    strictEqual(denied.code, 7, `curl must fail to connect: ${denied.stderr}`);
  } finally {
    await srv.shutdown();
  }
});

hostTest("skiff run (qemu) --publish: a host port reaches a server in the guest", [
  ...needs,
  "python3",
], async () => {
  assertKernel(kernel);
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const tmp = await Deno.makeTempDir({ prefix: "skiff-pubtest-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "run",
        "--engine",
        "qemu",
        "--net",
        "--publish",
        `${port}:8080`,
        "--",
        "sh",
        "-c",
        "echo published-ok > /tmp/index.html; cd /tmp && exec python3 -m http.server 8080",
      ],
      env: { TMPDIR: tmp },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let got = "";
    // Until the guest's server answers (bounded only to catch a hang).
    const deadline = Date.now() + GUEST_HANG_MS;
    while (Date.now() < deadline && !got) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/index.html`);
        got = res.ok ? await res.text() : (await res.body?.cancel(), "");
      } catch {
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    child.kill("SIGTERM");
    const status = await child.output();
    strictEqual(got, "published-ok\n", new TextDecoder().decode(status.stderr));
    strictEqual(status.code, 143);
    deepStrictEqual([...Deno.readDirSync(tmp)].map((e) => e.name), []);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/**
 * `skiff run --engine qemu -- sh -c 'echo started; exec sleep 600'` in a
 * session of its own (setsid: its pid is its process group's id), with
 * TMPDIR `tmp`; resolves once the command has started.
 */
async function startSleeper(tmp: string) {
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "run", "-A", MAIN, "run", "--engine", "qemu", "--"]
      .concat(["sh", "-c", "echo started; exec sleep 600"]),
    env: { TMPDIR: tmp },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), GUEST_HANG_MS); // only catches a hang
  const reader = child.stdout.getReader();
  let out = "";
  while (!out.includes("started")) {
    const r = await reader.read();
    if (r.done) break;
    out += new TextDecoder().decode(r.value);
  }
  reader.releaseLock();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream());
  const ended = Promise.all([
    child.status,
    Array.fromAsync(stderr).then((parts) => parts.join("")),
    child.stdout.cancel(),
  ]).then(([status, text]) => {
    clearTimeout(timer);
    return { status, stderr: text };
  });
  return { pid: child.pid, ended };
}

/** Whether a live (not zombie) process's command line contains `text`. */
function processWith(text: string): boolean {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (cmdline.includes(text) && stat[stat.lastIndexOf(")") + 2] !== "Z") return true;
    } catch {
      // it ended meanwhile
    }
  }
  return false;
}

hostTest(
  "skiff run (qemu): Ctrl-C to the process group, SIGHUP and SIGKILL while the command runs",
  [...needs, "setsid"],
  async () => {
    assertKernel(kernel);
    const tmp = await Deno.makeTempDir({ prefix: "skiff-sigtest-" });
    try {
      // A terminal's Ctrl-C signals the whole group: skiff and its QEMU.
      for (
        const [sig, target, code] of [["SIGINT", "group", 130], ["SIGHUP", "skiff", 129]] as const
      ) {
        const run = await startSleeper(tmp);
        Deno.kill(target === "group" ? -run.pid : run.pid, sig);
        const { status, stderr } = await run.ended;
        strictEqual(status.code, code, stderr);
        strictEqual(stderr, `skiff run: stopped by ${sig}; the VM was stopped\n`);
        deepStrictEqual(
          [...Deno.readDirSync(tmp)].map((e) => e.name),
          [],
          `leftovers after ${sig}`,
        );
      }
      // SIGKILL leaves skiff no say: QEMU dies with it (its parent-death
      // signal), and the next start sweeps what it left in TMPDIR.
      const run = await startSleeper(tmp);
      Deno.kill(run.pid, "SIGKILL");
      strictEqual((await run.ended).status.signal, "SIGKILL");
      const ramOf = `skiff-ram-${run.pid}n`; // skiff-ram-<pid>n<pid namespace>-…
      while (processWith(ramOf)) await new Promise((r) => setTimeout(r, 50)); // the test's bound catches a hang
      const r = await runSkiff(["run", "--engine", "qemu", "--", "true"], { tmpdir: tmp });
      strictEqual(r.code, 0, r.stderr);
      deepStrictEqual([...Deno.readDirSync(tmp)].map((e) => e.name), []);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

hostTest("skiff boot (qemu): input that ends (not a terminal) ends the shell, as Ctrl-D would", [
  ...needs,
], async () => {
  assertKernel(kernel);
  for (const input of ["", "echo $((6*7))\n"]) {
    const r = await runSkiff(["boot", "--engine", "qemu"], { stdin: input });
    strictEqual(r.code, 0, r.stderr);
    if (input) match(r.stdout, /42\r?\n/); // the input itself has no "42"
  }
});
