// L0: the agent protocol's host-side bytes (layouts against protocol.ts,
// limits, reply parsing), the stats parser, and the compiled agent (objdump).
import { deepStrictEqual, match, ok, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { RECORD_MAGIC } from "../codegen/mod.ts";
import { compileElf } from "../codegen/mod.ts";
import { REC } from "../record.ts";
import { parseStats, signalNumber } from "./client.ts";
import { AgentProtocolError, AgentRequestError } from "./errors.ts";
import { agentProgram } from "./program.ts";
import {
  EXEC,
  KILL,
  KIND,
  LIMITS,
  MOUNT,
  MOUNT_OP,
  NO_ID,
  REQ_HDR,
  REQUEST_MAGIC,
  SETUP,
  SETUP_FILE,
  SETUP_FLAGS,
  WRITE_FILE,
  WRITE_FLAGS,
} from "./protocol.ts";
import {
  encodeBootRecord,
  encodeExec,
  encodeKill,
  encodeReadFile,
  encodeSetup,
  encodeSignalFrame,
  encodeWriteFile,
  frameRequest,
  parseReply,
} from "./wire.ts";

/** A reader of a payload as the agent sees it after `relocate`: pointer slots hold offsets. */
function reader(b: Uint8Array) {
  const d = new DataView(b.buffer, b.byteOffset, b.byteLength);
  strictEqual(d.getBigUint64(REC.MAGIC, true), RECORD_MAGIC);
  strictEqual(d.getUint32(REC.VERSION, true), 1);
  strictEqual(d.getUint32(REC.SIZE, true), b.length);
  strictEqual(b.length % 8, 0);
  const slots = new Set<number>();
  const n = d.getUint32(REC.NRELOCS, true);
  const table = d.getUint32(REC.RELOCS, true);
  for (let i = 0; i < n; i++) {
    const s = d.getUint32(table + 4 * i, true);
    ok(s + 8 <= b.length, `slot ${s} inside`);
    slots.add(s);
  }
  const ptr = (at: number): number | null => {
    const x = Number(d.getBigUint64(at, true));
    if (x === 0) return null;
    ok(slots.has(at), `pointer at ${at} is in the relocation table`);
    ok(x < b.length);
    return x;
  };
  const str = (at: number): string | null => {
    const p = ptr(at);
    if (p === null) return null;
    return new TextDecoder().decode(b.subarray(p, b.indexOf(0, p)));
  };
  const strv = (at: number): string[] => {
    const out: string[] = [];
    for (let p = ptr(at)!; d.getBigUint64(p, true) !== 0n; p += 8) out.push(str(p)!);
    return out;
  };
  return { d, ptr, str, strv, u32: (at: number) => d.getUint32(at, true) };
}

Deno.test("agent wire: EXEC payload layout", () => {
  const b = encodeExec({
    argv: ["sh", "-c", "echo ü"],
    env: ["A=1", "PATH=/bin"],
    cwd: "/work",
    root: "/mnt/root",
    path: "/bin",
    uid: 1000,
    gid: null,
    ports: { stdin: 0, stdout: 1025, stderr: 1025 },
  });
  const r = reader(b);
  deepStrictEqual(r.strv(EXEC.ARGV), ["sh", "-c", "echo ü"]);
  deepStrictEqual(r.strv(EXEC.ENVP), ["A=1", "PATH=/bin"]);
  strictEqual(r.str(EXEC.CWD), "/work");
  strictEqual(r.str(EXEC.ROOT), "/mnt/root");
  strictEqual(r.str(EXEC.PATH), "/bin");
  deepStrictEqual([r.u32(EXEC.UID), r.u32(EXEC.GID)], [1000, NO_ID]);
  deepStrictEqual([r.u32(EXEC.STDIN), r.u32(EXEC.STDOUT), r.u32(EXEC.STDERR)], [0, 1025, 1025]);
  ok(b.length >= EXEC.SIZE);
  strictEqual(r.ptr(EXEC.GROUPS), null, "no supplementary groups: a NULL list");
  strictEqual(r.d.getBigUint64(EXEC.NGROUPS, true), 0n);
  const spec = {
    argv: ["id"],
    env: [],
    cwd: "/",
    root: "",
    path: "",
    uid: 1000,
    gid: 100,
    ports: { stdin: 0, stdout: 0, stderr: 0 },
  };
  const g = reader(encodeExec({ ...spec, groups: [27, 100, 4242] }));
  const list = g.ptr(EXEC.GROUPS)!;
  strictEqual(list % 8, 0);
  strictEqual(g.d.getBigUint64(EXEC.NGROUPS, true), 3n);
  deepStrictEqual([g.u32(list), g.u32(list + 4), g.u32(list + 8)], [27, 100, 4242]);
  throws(() => encodeExec({ ...spec, gid: null, groups: [1] }), /groups need a gid/);
  throws(() => encodeExec({ ...spec, groups: Array(257).fill(1) }), /257 groups/);
  // An empty root is an empty string (the agent's own root), not a NULL.
  strictEqual(
    reader(encodeExec({
      argv: ["x"],
      env: [],
      cwd: "/",
      root: "",
      path: "",
      uid: null,
      gid: null,
      ports: { stdin: 0, stdout: 0, stderr: 0 },
    })).str(EXEC.ROOT),
    "",
  );
});

Deno.test("agent wire: SETUP payload layout", () => {
  const b = encodeSetup({
    hostname: "box",
    mounts: [
      { source: "root", target: "/mnt/lower", fsType: "virtiofs", flags: 1, waitMs: 5000 },
      { target: "/mnt/rw/upper", mkdirOnly: true },
      { source: "/a", target: "/b", flags: 4096, data: "x=y" },
    ],
    net: { address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1" },
  });
  const r = reader(b);
  strictEqual(Number(r.d.getBigUint64(SETUP.FLAGS, true)), SETUP_FLAGS.HOSTNAME | SETUP_FLAGS.NET);
  strictEqual(r.str(SETUP.HOSTNAME), "box");
  strictEqual(Number(r.d.getBigUint64(SETUP.NMOUNTS, true)), 3);
  const t = r.ptr(SETUP.MOUNTS)!;
  strictEqual(t % 8, 0);
  const entry = (i: number) => {
    const at = t + MOUNT.SIZE * i;
    return {
      source: r.str(at + MOUNT.SOURCE),
      target: r.str(at + MOUNT.TARGET),
      fsType: r.str(at + MOUNT.FSTYPE),
      flags: Number(r.d.getBigUint64(at + MOUNT.FLAGS, true)),
      data: r.str(at + MOUNT.DATA),
      op: r.u32(at + MOUNT.OP),
      wait: r.u32(at + MOUNT.WAIT_MS),
    };
  };
  deepStrictEqual(entry(0), {
    source: "root",
    target: "/mnt/lower",
    fsType: "virtiofs",
    flags: 1,
    data: null,
    op: MOUNT_OP.WAIT,
    wait: 5000,
  });
  deepStrictEqual(entry(1), {
    source: null,
    target: "/mnt/rw/upper",
    fsType: null,
    flags: 0,
    data: null,
    op: MOUNT_OP.MKDIR_ONLY,
    wait: 0,
  });
  strictEqual(entry(2).data, "x=y");
  // Network byte order in memory.
  deepStrictEqual([...new Uint8Array(b.buffer, b.byteOffset + SETUP.NET_ADDRESS, 4)], [
    10,
    42,
    0,
    2,
  ]);
  deepStrictEqual([...new Uint8Array(b.buffer, b.byteOffset + SETUP.NET_NETMASK, 4)], [
    255,
    255,
    255,
    0,
  ]);
  strictEqual(r.str(SETUP.NET_IFNAME), "eth0");
  strictEqual(r.u32(SETUP.NET_WAIT_MS), 10_000);
  // The clock: seconds and nanoseconds of the host's wall clock, flagged.
  const clocked = reader(encodeSetup({ clockMs: 1_764_650_000_123 }));
  strictEqual(Number(clocked.d.getBigUint64(SETUP.FLAGS, true)), SETUP_FLAGS.CLOCK);
  strictEqual(clocked.d.getBigUint64(SETUP.CLOCK_SEC, true), 1_764_650_000n);
  strictEqual(clocked.d.getBigUint64(SETUP.CLOCK_NSEC, true), 123_000_000n);
  throws(() => encodeSetup({ clockMs: -5 }), /bad clock time/);
  // Nothing asked: no flags, no table entries.
  const empty = reader(encodeSetup({}));
  strictEqual(Number(empty.d.getBigUint64(SETUP.FLAGS, true)), 0);
  strictEqual(Number(empty.d.getBigUint64(SETUP.NMOUNTS, true)), 0);
  strictEqual(Number(empty.d.getBigUint64(SETUP.NFILES, true)), 0);
  strictEqual(empty.ptr(SETUP.FILES_ROOT), null);
});

Deno.test("agent wire: SETUP files — root, table, bytes with their length, mode, REPLACE", () => {
  const b = encodeSetup({
    filesRoot: "/run/skiff/root",
    files: [
      { path: "/etc/hosts", content: "127.0.0.1\tlocalhost ü\n", mode: 0o644, replace: true },
      { path: "/x", content: new Uint8Array([0, 1, 0]), mode: 0o4755 },
      { path: "/empty", content: "", mode: 0o600 },
    ],
  });
  const r = reader(b);
  strictEqual(r.str(SETUP.FILES_ROOT), "/run/skiff/root");
  strictEqual(Number(r.d.getBigUint64(SETUP.NFILES, true)), 3);
  const t = r.ptr(SETUP.FILES)!;
  strictEqual(t % 8, 0);
  const entry = (i: number) => {
    const at = t + SETUP_FILE.SIZE * i;
    const data = r.ptr(at + SETUP_FILE.DATA)!;
    const len = Number(r.d.getBigUint64(at + SETUP_FILE.LENGTH, true));
    return {
      path: r.str(at + SETUP_FILE.PATH),
      bytes: [...b.subarray(data, data + len)],
      mode: r.u32(at + SETUP_FILE.MODE),
      flags: r.u32(at + SETUP_FILE.FLAGS),
    };
  };
  deepStrictEqual(entry(0), {
    path: "/etc/hosts",
    bytes: [...new TextEncoder().encode("127.0.0.1\tlocalhost ü\n")],
    mode: 0o644,
    flags: WRITE_FLAGS.REPLACE,
  });
  deepStrictEqual(entry(1), { path: "/x", bytes: [0, 1, 0], mode: 0o4755, flags: 0 });
  deepStrictEqual(entry(2), { path: "/empty", bytes: [], mode: 0o600, flags: 0 });
  // Files without a root: the agent's own root, an empty string.
  strictEqual(
    reader(encodeSetup({ files: [{ path: "/f", content: "x", mode: 0o644 }] })).str(
      SETUP.FILES_ROOT,
    ),
    "",
  );
  throws(
    () => encodeSetup({ files: [{ path: "etc/hosts", content: "", mode: 0o644 }] }),
    /absolute/,
  );
  throws(() => encodeSetup({ files: [{ path: "/f", content: "", mode: 0o10000 }] }), /mode of \/f/);
  throws(
    () => encodeSetup({ filesRoot: "rel", files: [{ path: "/f", content: "", mode: 0 }] }),
    /files root/,
  );
});

Deno.test("agent wire: SETUP files after some mount entries — the count, its bounds, no chroot before later mounts", () => {
  const mounts = [{ target: "/a", mkdirOnly: true }, { target: "/b", mkdirOnly: true }];
  const files = [{ path: "/a/f", content: "x", mode: 0o644 }];
  const at = (spec: Parameters<typeof encodeSetup>[0]) =>
    Number(reader(encodeSetup(spec)).d.getBigUint64(SETUP.FILES_AT, true));
  // By default after every entry.
  strictEqual(at({ mounts, files }), 2);
  strictEqual(at({}), 0);
  strictEqual(at({ mounts, files, filesAfterMount: 1 }), 1);
  strictEqual(at({ mounts, files, filesAfterMount: 0 }), 0);
  throws(
    () => encodeSetup({ mounts, files, filesAfterMount: 3 }),
    /filesAfterMount 3 is not 0\.\.2/,
  );
  throws(() => encodeSetup({ mounts, files, filesAfterMount: -1 }), /filesAfterMount -1/);
  throws(() => encodeSetup({ mounts, files, filesAfterMount: 0.5 }), /filesAfterMount 0.5/);
  throws(
    () => encodeSetup({ mounts, files, filesRoot: "/r", filesAfterMount: 1 }),
    /needs an empty filesRoot/,
  );
  strictEqual(at({ mounts, files, filesRoot: "/r", filesAfterMount: 2 }), 2);
});

Deno.test("agent wire: header, KILL, files, signal frames, boot record", () => {
  const p = encodeKill(42, 15, true);
  const f = frameRequest("KILL", p);
  const h = new DataView(f.buffer);
  strictEqual(h.getUint32(REQ_HDR.MAGIC, true), REQUEST_MAGIC);
  strictEqual(new TextDecoder().decode(f.subarray(0, 4)), "SKAG");
  strictEqual(h.getUint16(REQ_HDR.VERSION, true), 1);
  strictEqual(h.getUint16(REQ_HDR.KIND, true), KIND.KILL);
  strictEqual(h.getUint32(REQ_HDR.LENGTH, true), p.length);
  strictEqual(h.getUint32(REQ_HDR.RESERVED, true), 0);
  deepStrictEqual(f.subarray(REQ_HDR.SIZE), p);
  const k = reader(p);
  deepStrictEqual(
    [k.u32(KILL.PID), k.u32(KILL.SIGNAL), Number(k.d.getBigUint64(KILL.FLAGS, true))],
    [
      42,
      15,
      1,
    ],
  );
  const w = reader(encodeWriteFile({
    path: "/etc/hosts",
    root: "/mnt/root",
    mode: 0o4755,
    uid: null,
    gid: 7,
    replace: true,
  }));
  strictEqual(w.str(WRITE_FILE.PATH), "/etc/hosts");
  deepStrictEqual(
    [w.u32(WRITE_FILE.MODE), w.u32(WRITE_FILE.UID), w.u32(WRITE_FILE.GID), w.u32(WRITE_FILE.FLAGS)],
    [0o4755, NO_ID, 7, WRITE_FLAGS.REPLACE],
  );
  reader(encodeReadFile({ path: "/proc/stat", root: "" }));
  deepStrictEqual([...encodeSignalFrame(9, true)], [9, 0, 0, 0, 1, 0, 0, 0]);
  deepStrictEqual(reader(encodeBootRecord(["/lib/a.ko", "/lib/b.ko"])).strv(24), [
    "/lib/a.ko",
    "/lib/b.ko",
  ]);
});

Deno.test("agent wire: limits and bad values are refused before sending", () => {
  const exec = (o: Partial<Parameters<typeof encodeExec>[0]>) =>
    encodeExec({
      argv: ["x"],
      env: [],
      cwd: "/",
      root: "",
      path: "",
      uid: null,
      gid: null,
      ports: { stdin: 0, stdout: 0, stderr: 0 },
      ...o,
    });
  const refused = (fn: () => unknown, re: RegExp) =>
    throws(fn, (e) => e instanceof AgentRequestError && re.test(e.message));
  refused(() => exec({ argv: [] }), /argv is empty/);
  refused(() => exec({ argv: [""] }), /argv is empty/);
  refused(() => exec({ env: ["NOEQUALS"] }), /without '='/);
  refused(() => exec({ cwd: "rel" }), /absolute/);
  refused(() => exec({ cwd: "/" + "a".repeat(LIMITS.MAX_PATH) }), /4096 bytes; the limit is 4095/);
  refused(() => exec({ argv: ["a\0b"] }), /NUL/);
  refused(() => exec({ uid: -1 }), /uid/);
  refused(() => exec({ uid: NO_ID }), /uid/);
  refused(() => exec({ ports: { stdin: 2 ** 32, stdout: 0, stderr: 0 } }), /stdin port/);
  // Arguments over the payload limit, all together.
  refused(() => exec({ argv: ["x", ...Array(300).fill("y".repeat(4000))] }), /limit is 1048576/);
  exec({ argv: ["x", ...Array(200).fill("y".repeat(4000))] });
  refused(() => encodeSetup({ hostname: "h".repeat(65) }), /host name/);
  refused(() => encodeSetup({ hostname: "" }), /host name/);
  refused(
    () => encodeSetup({ net: { interface: "x".repeat(16), address: "1.2.3.4", prefixLength: 8 } }),
    /interface/,
  );
  refused(() => encodeSetup({ net: { address: "1.2.3", prefixLength: 8 } }), /IPv4/);
  refused(() => encodeSetup({ net: { address: "1.2.3.4", prefixLength: 33 } }), /prefix/);
  refused(
    () => encodeSetup({ mounts: [{ target: "/x", waitMs: LIMITS.MAX_WAIT_MS + 1 }] }),
    /wait/,
  );
  refused(() => encodeKill(1, 9, false), /bad pid 1/);
  refused(() => encodeKill(2 ** 31, 9, false), /bad pid/);
  refused(() => encodeKill(5, 0, false), /signal/);
  refused(() => encodeKill(5, 65, false), /signal/);
  refused(
    () =>
      encodeWriteFile({
        path: "/x",
        root: "",
        mode: 0o10000,
        uid: null,
        gid: null,
        replace: false,
      }),
    /mode/,
  );
});

Deno.test("agent wire: reply lines", () => {
  deepStrictEqual(parseReply("ok"), { kind: "ok", value: null });
  deepStrictEqual(parseReply("ok 67108864"), { kind: "ok", value: 67108864 });
  deepStrictEqual(parseReply("pid 4"), { kind: "pid", pid: 4 });
  deepStrictEqual(parseReply("exit 255"), { kind: "exit", code: 255 });
  deepStrictEqual(parseReply("signal 15"), { kind: "signal", signal: 15 });
  deepStrictEqual(parseReply("error mount /a b: c: ENOENT"), {
    kind: "error",
    step: "mount /a b: c",
    errno: "ENOENT",
  });
  deepStrictEqual(parseReply("error x: errno-200"), {
    kind: "error",
    step: "x",
    errno: "errno-200",
  });
  for (const junk of ["", "OK", "ok x", "exit 256", "exit -1", "pid", "error : ", "signal 1 2"]) {
    throws(() => parseReply(junk), AgentProtocolError, junk);
  }
});

Deno.test("agent client: stats from /proc text, signal names", () => {
  const st = parseStats(
    "MemTotal:         250000 kB\nMemFree:          100000 kB\nMemAvailable:     200000 kB\n",
    "cpu  100 5 50 9000 7 1 2 3 0 0\ncpu0 100 5 50 9000 7 1 2 3 0 0\nintr 1\n",
    "0.00 0.01 0.05 1/57 123\n",
  );
  deepStrictEqual(st, {
    memoryTotalBytes: 250000 * 1024,
    memoryUsedBytes: 50000 * 1024,
    cpuTimeMs: (100 + 5 + 50 + 1 + 2 + 3) * 10,
    processes: 57,
  });
  throws(() => parseStats("", "cpu 1\n", "0 0 0 1/2 3\n"), /MemTotal/);
  strictEqual(signalNumber("SIGTERM"), 15);
  strictEqual(signalNumber("SIGKILL"), 9);
  strictEqual(signalNumber(34), 34);
  throws(() => signalNumber("SIGEMT"), /does not exist on Linux/);
});

hostTest("agent program: both variants compile and disassemble cleanly (objdump)", [
  "objdump",
], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-dis-" });
  try {
    for (
      const [name, prog] of [
        ["vm", agentProgram()],
        ["native", agentProgram({ native: { dir: "/tmp/x" } })],
      ] as const
    ) {
      // The ELF has no section headers: disassemble its code part as raw bytes.
      const elf = compileElf(prog);
      const path = `${dir}/${name}.bin`;
      await Deno.writeFile(path, elf.bytes.slice(0x1000, 0x1000 + elf.codeSize));
      const out = await new Deno.Command("objdump", {
        args: [
          "-D",
          "-b",
          "binary",
          "-m",
          "i386:x86-64",
          "-M",
          "intel",
          "--adjust-vma=0x401000",
          path,
        ],
        stdout: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      strictEqual(out.code, 0);
      ok(!text.includes("(bad)"), `${name}: undecodable bytes`);
      match(text, /syscall/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("agent program: the native variant refuses a socket path sockaddr_un cannot hold", () => {
  throws(
    () => agentProgram({ native: { dir: "/" + "d".repeat(120) } }),
    /too long for sockaddr_un/,
  );
});
