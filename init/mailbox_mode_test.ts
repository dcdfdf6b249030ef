// L3 native: the mailbox-mode init (boot setup + mailbox loop) runs as a
// normal process in private mount and UTS namespaces (root), its mailbox
// backed by a file the test maps too; the host-side Mailbox waits for READY
// and sends command records, whose output shows the setup's effects.
import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../tests/requirements.ts";
import { RegionMemory } from "../hv/memory.ts";
import {
  close,
  ftruncate,
  MAP,
  mmap,
  munmap,
  O as HO,
  open,
  PROT,
  viewAt,
} from "../kvm_ffi/libc.ts";
import { Mailbox, MB_IMAGE_SIZE, MB_STATE } from "../devices/mailbox/mod.ts";
import { compileElf } from "./codegen/mod.ts";
import { encodeRecord, type RecordSpec } from "./record.ts";
import { defaultInitConfig } from "./config.ts";
import { bootProgram } from "./boot_program.ts";
import {
  BOOT_RECORD_COMMAND,
  bootInitConfig,
  bootSetup,
  MAILBOX_INIT_PATH,
  mailboxBootProgram,
  mailboxInitramfs,
} from "./mailbox_mode.ts";
import { initramfsEntries } from "./initramfs.ts";
import { HANG_MS, hangBound } from "../tests/waits.ts";

const DATA_SIZE = 64 << 10;
/** Bound on each mailbox wait, only to catch a hang. */
const DEADLINE = { timeoutMs: HANG_MS };
const PORTS = { stdin: "p.in", stdout: "p.out", stderr: "p.err", status: "p.status" };

function spec(dir: string, argv: string[], extra: Partial<RecordSpec> = {}): RecordSpec {
  return {
    rootTag: null,
    hostname: "skiff-mbmode",
    shares: [],
    modules: [],
    ports: PORTS,
    argv,
    env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    cwd: dir,
    path: "/usr/sbin:/usr/bin:/sbin:/bin",
    net: null,
    ...extra,
  };
}

Deno.test("mailbox mode: the setup is the boot program's body up to its one-shot tail", () => {
  const full = bootProgram().body.ops;
  const { setup } = bootSetup();
  ok(setup.ops.length > 20 && setup.ops.length < full.length);
  // Labels are unique per build; compare the operations' kinds.
  deepStrictEqual(setup.ops.map((o) => o.op), full.slice(0, setup.ops.length).map((o) => o.op));
  // The cut is where the port section starts; the setup never opens the status port.
  deepStrictEqual(full[setup.ops.length], {
    op: "set",
    dst: { kind: "var", name: "rec_ok" },
    src: 2,
  });
  const names = JSON.stringify(setup.ops);
  ok(!names.includes("open port status"));
  ok(names.includes("mount root overlay"));
  // The whole program compiles to a static ELF.
  const elf = compileElf(mailboxBootProgram()).bytes;
  deepStrictEqual([...elf.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
});

Deno.test("mailbox mode: the initramfs does not depend on the command", async () => {
  const kernel = { version: "6.1.0-test", modulesDir: null } as unknown as Parameters<
    typeof mailboxInitramfs
  >[0];
  const a = await mailboxInitramfs(kernel, {
    ...defaultInitConfig(["echo", "a"]),
    rootTag: "root",
  });
  const b = await mailboxInitramfs(kernel, {
    ...defaultInitConfig(["sh", "-c", "exit 3"]),
    rootTag: "root",
  });
  deepStrictEqual(a, b);
  const c = await mailboxInitramfs(kernel, { ...defaultInitConfig(["echo", "a"]), rootTag: null });
  ok(a.length !== c.length || a.some((x, i) => x !== c[i]), "the boot config does change it");
  const entries = await initramfsEntries({
    kernel,
    config: bootInitConfig(defaultInitConfig(["x"])),
    extraFiles: [],
  });
  ok(entries.some((e) => e.path === "init"));
  strictEqual(
    bootInitConfig(defaultInitConfig(["x"])).command.argv[0],
    BOOT_RECORD_COMMAND.argv[0],
  );
  ok(MAILBOX_INIT_PATH.startsWith("/skiff/"));
});

hostTest("mailbox mode (native): boot setup, READY, then command records", [
  "root",
  "unshare",
], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-mbmode-" });
  const ports = join(dir, "ports");
  await Deno.mkdir(ports);
  for (const p of Object.values(PORTS)) await Deno.writeTextFile(join(ports, p), "");
  const file = join(dir, "mailbox");
  const size = 4096 + DATA_SIZE;
  const fd = open(file, HO.RDWR | HO.CREAT, 0o600);
  ftruncate(fd, size);
  const ptr = mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
  close(fd);
  let child: Deno.ChildProcess | null = null;
  try {
    const view = viewAt(ptr, size);
    using mb = new Mailbox({
      registers: view.subarray(0, MB_IMAGE_SIZE),
      dataBase: 4096,
      dataSize: DATA_SIZE,
      pollMs: 1,
    });
    mb.useMemory(new RegionMemory([{ guestAddr: 0, size, bytes: view }]));
    // The boot record: host name and a tmpfs "share"; its command is never run.
    const bootRecord = encodeRecord(
      spec(dir, [...BOOT_RECORD_COMMAND.argv], {
        shares: [{ tag: "share-a", guestPath: `${dir}/share`, readOnly: false, fsType: "tmpfs" }],
      }),
    );
    await Deno.writeFile(join(dir, "record"), bootRecord);
    const elf = compileElf(mailboxBootProgram({
      boot: {
        record: { path: join(dir, "record") },
        native: { fsRoot: join(dir, "root"), portDir: ports },
      },
      loop: { regsPath: file, regsOffset: 0, idleSleepMs: 1, ports: { dir: ports } },
    })).bytes;
    await Deno.writeFile(join(dir, "init"), elf, { mode: 0o755 });
    child = new Deno.Command("unshare", {
      args: ["--mount", "--uts", "--propagation", "private", join(dir, "init")],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let initErr = "";
    const errText = new Response(child.stderr).text().then((t) => (initErr = t));
    void child.status.then((s) =>
      mb.fail(new Error(`init exited early with ${s.code}: ${initErr}`))
    );
    await mb.ready(DEADLINE);
    strictEqual(mb.registers.state, MB_STATE.READY);
    // Nothing ran yet: the boot record's command is a placeholder.
    strictEqual(await Deno.readTextFile(join(ports, PORTS.stdout)), "");
    const script = [
      'echo "host: $(hostname)"',
      "cat /proc/self/mountinfo",
      `echo hi > ${dir}/share/f && cat ${dir}/share/f`,
      "echo err >&2",
      "exit 7",
    ].join("\n");
    strictEqual(await mb.runCommand(encodeRecord(spec(dir, ["sh", "-c", script])), DEADLINE), 7);
    const out = await Deno.readTextFile(join(ports, PORTS.stdout));
    match(out, /^host: skiff-mbmode\n/);
    const mountAt = (p: string) =>
      out.split("\n").find((l) => / - \S+ /.test(l) && l.split(" ")[4] === p);
    for (const [p, type] of [["/proc", "proc"], ["/tmp", "tmpfs"], ["/share", "tmpfs"]]) {
      const l = mountAt(`${dir}${p === "/share" ? "" : "/root"}${p}`);
      ok(l && l.includes(` - ${type} `), `${p} mounted as ${type}:\n${out}`);
    }
    ok(out.endsWith("hi\n"), out);
    strictEqual(await Deno.readTextFile(join(ports, PORTS.stderr)), "err\n");
    // A second command in the same init.
    strictEqual(await mb.runCommand(encodeRecord(spec(dir, ["sh", "-c", "exit 0"])), DEADLINE), 0);
    await mb.shutdown(DEADLINE);
    const st = await hangBound(child.status, () => "init did not exit");
    await errText;
    strictEqual(st.code, 0, initErr);
    await child.stdout.cancel();
    child = null;
  } finally {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
    }
    munmap(ptr, size);
    await Deno.remove(dir, { recursive: true });
  }
});
