// L3: the boot program's native variant, run as a normal process in private
// mount, UTS and network namespaces (root), with its effects checked.
import { match, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { compileElf } from "./codegen/mod.ts";
import { bootProgram } from "./boot_program.ts";
import { encodeRecord, type RecordSpec } from "./record.ts";
import { parseStatusLine } from "./config.ts";
import { HANG_MS } from "../tests/waits.ts";

const NEEDS = ["root", "unshare"] as const;
const PORTS = { stdin: "p.in", stdout: "p.out", stderr: "p.err", status: "p.status" };

interface Run {
  status: string;
  stdout: string;
  stderr: string;
  /** The init's own stderr (its error messages). */
  initStderr: string;
  code: number;
}

/** Runs the native init with `spec` (tmp dir given to `make`), with a hard deadline. */
async function runNative(
  make: (dir: string) => Partial<RecordSpec>,
  stdin = "",
  embed = false,
): Promise<Run & { dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-init-native-" });
  const ports = `${dir}/ports`;
  await Deno.mkdir(ports);
  await Deno.mkdir(`${dir}/cwd`);
  for (
    const [name, text] of [[PORTS.stdin, stdin], [PORTS.stdout, ""], [PORTS.stderr, ""], [
      PORTS.status,
      "",
    ]]
  ) await Deno.writeTextFile(`${ports}/${name}`, text);
  const spec: RecordSpec = {
    rootTag: null,
    hostname: "skiff-native",
    shares: [],
    modules: [],
    ports: PORTS,
    argv: ["true"],
    env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    cwd: `${dir}/cwd`,
    path: "/usr/sbin:/usr/bin:/sbin:/bin",
    net: null,
    ...make(dir),
  };
  const record = encodeRecord(spec);
  if (!embed) await Deno.writeFile(`${dir}/record`, record);
  const elf = compileElf(bootProgram({
    record: embed ? { bytes: record } : { path: `${dir}/record` },
    native: { fsRoot: `${dir}/root`, portDir: ports },
  })).bytes;
  await Deno.writeFile(`${dir}/init`, elf, { mode: 0o755 });
  const child = new Deno.Command("unshare", {
    args: [
      "--mount",
      "--uts",
      "--net",
      "--propagation",
      "private",
      "sh",
      "-c",
      'ip link add eth0 type veth peer name eth1 && ip link set eth1 up && exec "$0"',
      `${dir}/init`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), HANG_MS); // only catches a hang
  const out = await child.output();
  clearTimeout(timer);
  const read = (n: string) => Deno.readTextFile(`${ports}/${n}`);
  return {
    dir,
    code: out.code,
    initStderr: new TextDecoder().decode(out.stderr),
    status: await read(PORTS.status),
    stdout: await read(PORTS.stdout),
    stderr: await read(PORTS.stderr),
  };
}

hostTest("boot program (native): mounts, record, command with argv/env/cwd/stdio, exit status", [
  ...NEEDS,
], async () => {
  const r = await runNative((dir) => ({
    shares: [
      { tag: "share-a", guestPath: `${dir}/shares/a/b`, readOnly: true, fsType: "tmpfs" },
      { tag: "share-b", guestPath: `${dir}/shares/rw`, readOnly: false, fsType: "tmpfs" },
    ],
    argv: [
      "sh",
      "-c",
      [
        'echo "stdin: $(cat)"',
        'echo "args: $0 $1 FOO=$FOO"',
        'echo "cwd: $(pwd)"',
        'echo "host: $(hostname)"',
        "cat /proc/self/mountinfo",
        "ip -4 -o addr show eth0",
        "ip route",
        `cat ${dir}/root/etc/resolv.conf ${dir}/root/etc/hosts`,
        "echo to-stderr >&2",
        "exit 3",
      ].join("\n"),
      "zero",
      "one two",
    ],
    env: ["FOO=bar baz", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    net: {
      address: "10.42.0.2",
      prefixLength: 24,
      gateway: "10.42.0.1",
      resolvConf: "nameserver 10.42.0.1\n",
      hosts: "127.0.0.1 localhost\n",
    },
  }), "from the host\n");
  try {
    const ctx = `init stderr: ${r.initStderr}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
    strictEqual(r.status, "exit 3\n", ctx);
    strictEqual(r.code, 0, ctx);
    strictEqual(r.stderr, "to-stderr\n");
    match(r.stdout, /^stdin: from the host\n/);
    match(r.stdout, /\nargs: zero one two FOO=bar baz\n/);
    ok(r.stdout.includes(`\ncwd: ${r.dir}/cwd\n`), ctx);
    match(r.stdout, /\nhost: skiff-native\n/);
    const mounts = r.stdout.split("\n").filter((l) => / - \S+ /.test(l));
    const mountAt = (p: string) => mounts.find((l) => l.split(" ")[4] === p);
    for (
      const [p, type] of [
        ["/dev", "devtmpfs"],
        ["/proc", "proc"],
        ["/sys", "sysfs"],
        ["/dev/pts", "devpts"],
        ["/dev/shm", "tmpfs"],
        ["/tmp", "tmpfs"],
        ["/run", "tmpfs"],
      ]
    ) {
      const line = mountAt(`${r.dir}/root${p}`);
      ok(line, `no mount at ${p}: ${ctx}`);
      ok(line.includes(` - ${type} `), line);
    }
    const a = mountAt(`${r.dir}/shares/a/b`);
    ok(a && / - tmpfs share-a /.test(a) && / ro[, ]/.test(a), `share a: ${a}`);
    const b = mountAt(`${r.dir}/shares/rw`);
    ok(b && / - tmpfs share-b /.test(b) && / rw[, ]/.test(b), `share b: ${b}`);
    match(r.stdout, /eth0\s+inet 10\.42\.0\.2\/24/);
    match(r.stdout, /default via 10\.42\.0\.1 dev eth0/);
    match(r.stdout, /nameserver 10\.42\.0\.1\n127\.0\.0\.1 localhost\n/);
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});

hostTest("boot program (native): signal and not-found statuses", [...NEEDS], async () => {
  const sig = await runNative(() => ({ argv: ["sh", "-c", "kill -TERM $$"] }));
  const nf = await runNative(() => ({ argv: ["skiff-no-such-command", "x"] }));
  try {
    strictEqual(sig.status, "signal 15\n", sig.initStderr);
    strictEqual(nf.status, "exit 127\n", nf.initStderr);
    match(nf.stderr, /skiff: skiff-no-such-command: command not found/);
  } finally {
    await Deno.remove(sig.dir, { recursive: true });
    await Deno.remove(nf.dir, { recursive: true });
  }
});

hostTest("boot program (native): the command runs as the record's user", [...NEEDS], async () => {
  const r = await runNative(() => ({
    argv: ["sh", "-c", "id -u; id -g; id -G"],
    user: { uid: 1000, gid: 1001, groups: [1001, 2000] },
  }));
  try {
    strictEqual(r.status, "exit 0\n", r.initStderr + r.stderr);
    strictEqual(r.stdout, "1000\n1001\n1001 2000\n");
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});

hostTest("boot program (native): a failing mount is reported with its errno", [
  ...NEEDS,
], async () => {
  const r = await runNative((dir) => ({
    shares: [{ tag: "bad", guestPath: `${dir}/shares/x`, readOnly: false, fsType: "nosuchfs" }],
    argv: ["sh", "-c", "echo must-not-run"],
  }));
  try {
    strictEqual(r.status, `error mount share bad at ${r.dir}/shares/x: ENODEV\n`, r.initStderr);
    const st = parseStatusLine(r.status);
    strictEqual(st.kind, "error");
    strictEqual(r.code, 1);
    strictEqual(r.stdout, "");
    ok((await Deno.stat(`${r.dir}/shares/x`)).isDirectory, "the mount point was made");
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});

hostTest("boot program (native): a bad record is reported before anything runs", [
  ...NEEDS,
], async () => {
  const r = await runNative(() => ({}));
  try {
    // Corrupt the record and run again with the same init.
    const rec = await Deno.readFile(`${r.dir}/record`);
    rec[0] ^= 0xff;
    await Deno.writeFile(`${r.dir}/record`, rec);
    const out = await new Deno.Command("unshare", {
      args: ["--mount", "--propagation", "private", `${r.dir}/init`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    strictEqual(out.code, 1);
    match(new TextDecoder().decode(out.stderr), /error relocate record: EINVAL/);
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});

hostTest("boot program (native): a record built into the executable", [...NEEDS], async () => {
  const r = await runNative(
    () => ({ argv: ["sh", "-c", 'echo "$0 $1"; exit 7', "a", "b"] }),
    "",
    true,
  );
  try {
    strictEqual(await Deno.stat(`${r.dir}/record`).catch(() => null), null, "no record file");
    strictEqual(r.status, "exit 7\n", r.initStderr);
    strictEqual(r.stdout, "a b\n");
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});

hostTest("boot program (native): a truncated record is refused", [...NEEDS], async () => {
  const r = await runNative(() => ({}));
  try {
    const rec = await Deno.readFile(`${r.dir}/record`);
    await Deno.writeFile(`${r.dir}/record`, rec.subarray(0, rec.length - 8));
    const out = await new Deno.Command("unshare", {
      args: ["--mount", "--propagation", "private", `${r.dir}/init`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    strictEqual(out.code, 1);
    match(new TextDecoder().decode(out.stderr), /error read record: EINVAL/);
  } finally {
    await Deno.remove(r.dir, { recursive: true });
  }
});
