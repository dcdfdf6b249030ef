// L3 native: the generated init runs as a normal process on this host, its
// mailbox register page and data region backed by one file that the test
// maps MAP_SHARED too (as /dev/mem in a guest: registers at one offset, data
// at the offset DATA_BASE names). The test drives it with the real host-side
// Mailbox API.
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
import { Mailbox, MB_IMAGE_SIZE, MB_REG, MB_STATE } from "../devices/mailbox/mod.ts";
import { compileElf, compilePayload, PAYLOAD_ARG } from "./codegen/mod.ts";
import { exit, mkdirP, O, seq, str, SYS, sys } from "./ir/mod.ts";
import { decodeRecord, encodeRecord, type RecordSpec } from "./record.ts";
import { MAILBOX_DATA_VA, mailboxProgram } from "./mailbox_loop.ts";
import { HANG_MS, hangBound } from "../tests/waits.ts";

const DATA_SIZE = 64 << 10;
/** Bound on each mailbox wait, only to catch a hang. */
const DEADLINE = { timeoutMs: HANG_MS };

function record(dir: string, argv: string[], extra: Partial<RecordSpec> = {}): Uint8Array {
  return encodeRecord({
    rootTag: null,
    hostname: "skiff",
    shares: [],
    modules: [],
    ports: { stdin: "in", stdout: "out", stderr: "err", status: "status" },
    argv,
    env: ["FOO=bar"],
    cwd: dir,
    path: "/usr/bin:/bin",
    net: null,
    ...extra,
  });
}

/** A file-backed mailbox and the init ELF serving it, run as a child process. */
async function withNativeInit(
  fn: (mb: Mailbox, dir: string, child: Deno.ChildProcess) => Promise<void>,
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-mailbox-" });
  const file = join(dir, "mailbox");
  const size = 4096 + DATA_SIZE;
  const fd = open(file, HO.RDWR | HO.CREAT, 0o600);
  ftruncate(fd, size);
  const ptr = mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
  close(fd);
  let child: Deno.ChildProcess | null = null;
  let stderr = "";
  try {
    const view = viewAt(ptr, size);
    const mb = new Mailbox({
      registers: view.subarray(0, MB_IMAGE_SIZE),
      dataBase: 4096,
      dataSize: DATA_SIZE,
      pollMs: 1,
    });
    mb.useMemory(new RegionMemory([{ guestAddr: 0, size, bytes: view }]));
    for (const p of ["in", "out", "err"]) await Deno.writeTextFile(join(dir, p), "");
    const exe = join(dir, "init");
    const prog = mailboxProgram({
      regsPath: file,
      regsOffset: 0,
      idleSleepMs: 1,
      ports: { dir },
    });
    await Deno.writeFile(exe, compileElf(prog).bytes, { mode: 0o755 });
    child = new Deno.Command(exe, { stdout: "piped", stderr: "piped", stdin: "null" }).spawn();
    const errText = new Response(child.stderr).text().then((t) => stderr = t);
    const exited = child.status.then((s) => {
      mb.fail(new Error(`init exited early with ${s.code}: ${stderr}`));
      return s;
    });
    await fn(mb, dir, child);
    const status = await hangBound(exited, () => "init did not exit");
    await errText;
    strictEqual(status.code, 0, stderr);
    await child.stdout.cancel();
    child = null;
    return stderr;
  } finally {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      await child.stdout.cancel().catch(() => {});
    }
    munmap(ptr, size);
    await Deno.remove(dir, { recursive: true });
  }
}

hostTest("mailbox loop (native): ready, payloads, command records, shutdown", [], async () => {
  await withNativeInit(async (mb, dir) => {
    await mb.ready(DEADLINE);
    strictEqual(mb.registers.state, MB_STATE.READY);

    // A payload returning 42, and one returning its argument (rdi).
    strictEqual(
      await mb.runPayload(compilePayload({ body: seq(exit(42)) }).bytes, 0n, DEADLINE),
      42n,
    );
    const echo = compilePayload({ body: seq(exit(PAYLOAD_ARG)) }).bytes;
    strictEqual(await mb.runPayload(echo, 7n, DEADLINE), 7n);
    strictEqual(await mb.runPayload(echo, -5n, DEADLINE), -5n);

    // A checked syscall that fails: the payload returns -errno.
    const enoent = compilePayload({
      body: seq(sys(SYS.open, [str("/nonexistent/skiff"), O.RDONLY, 0], { step: "open" }), exit(1)),
    }).bytes;
    strictEqual(await mb.runPayload(enoent, 0n, DEADLINE), -2n);
    strictEqual(
      await mb.runPayload(
        compilePayload({ body: seq(mkdirP("/proc/skiff-nope/x"), exit(0)) }).bytes,
      ),
      -2n,
    );

    // Output through the data region, at the init's fixed mapping.
    const writer = compilePayload({
      body: seq(
        { op: "store", addr: MAILBOX_DATA_VA, offset: 0x8000, size: 8, src: 0x1122334455667788n },
        exit(0),
      ),
    }).bytes;
    strictEqual(await mb.runPayload(writer, 0n, DEADLINE), 0n);
    deepStrictEqual(
      mb.readData(0x8000, 8),
      new Uint8Array([0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]),
    );

    // A command record: argv, env, cwd and the stdio "ports" (files here).
    const sh = ["sh", "-c", 'echo "out $FOO $(pwd)"; echo err >&2; exit 3'];
    strictEqual(await mb.runCommand(record(dir, sh), DEADLINE), 3);
    strictEqual(await Deno.readTextFile(join(dir, "out")), `out bar ${dir}\n`);
    strictEqual(await Deno.readTextFile(join(dir, "err")), "err\n");
    strictEqual(
      await mb.runCommand(
        encodeRecord(decodeRecord(record(dir, ["/bin/sh", "-c", "exit 0"]))),
        DEADLINE,
      ),
      0,
    );
    strictEqual(await mb.runCommand(record(dir, ["sh", "-c", "kill -KILL $$"]), DEADLINE), 137);
    strictEqual(await mb.runCommand(record(dir, ["skiff-no-such-command"]), DEADLINE), 127);
    // Failures are results, never the end of the init.
    strictEqual(
      await mb.runCommand(
        record(dir, ["true"], {
          ports: { stdin: "nope", stdout: "out", stderr: "out", status: "s" },
        }),
        DEADLINE,
      ),
      -2,
    );
    strictEqual(await mb.runCommand(new Uint8Array(300).fill(0x41), DEADLINE), -22);
    const bad = record(dir, ["true"]);
    new DataView(bad.buffer).setUint32(12, bad.length + 8, true); // SIZE beyond the input
    strictEqual(await mb.runCommand(bad, DEADLINE), -22);
    // Still serving after all that.
    strictEqual(await mb.runPayload(echo, 99n, DEADLINE), 99n);
    strictEqual(mb.registers.u32(MB_REG.DONE_SEQ), 14);
    await mb.shutdown(DEADLINE);
  });
});

hostTest(
  "mailbox loop (native): a register image without the magic is a named setup failure",
  [],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-mailbox-" });
    try {
      const file = join(dir, "mailbox");
      await Deno.writeFile(file, new Uint8Array(8192));
      const exe = join(dir, "init");
      await Deno.writeFile(
        exe,
        compileElf(mailboxProgram({ regsPath: file, regsOffset: 0 })).bytes,
        {
          mode: 0o755,
        },
      );
      const out = await new Deno.Command(exe, { stdout: "piped", stderr: "piped" }).output();
      strictEqual(out.code, 1);
      match(
        new TextDecoder().decode(out.stderr),
        /skiff-init: mailbox magic failed: ENODEV \(errno 19\)/,
      );
      const missing = compileElf(mailboxProgram({ regsPath: join(dir, "nope"), regsOffset: 0 }));
      await Deno.writeFile(exe, missing.bytes, { mode: 0o755 });
      const out2 = await new Deno.Command(exe, { stdout: "piped", stderr: "piped" }).output();
      match(new TextDecoder().decode(out2.stderr), /open mailbox .*nope failed: ENOENT/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest(
  "mailbox loop: payload and loop code disassemble cleanly (objdump)",
  ["objdump"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-mailbox-" });
    try {
      const dis = async (bytes: Uint8Array, vma: number) => {
        const bin = join(dir, `code-${vma}.bin`);
        await Deno.writeFile(bin, bytes);
        const out = await new Deno.Command("objdump", {
          args: [
            "-D",
            "-b",
            "binary",
            "-m",
            "i386:x86-64",
            "-M",
            "intel",
            `--adjust-vma=${vma}`,
            bin,
          ],
          stdout: "piped",
        }).output();
        return new TextDecoder().decode(out.stdout);
      };
      const p = compilePayload({
        body: seq(sys(SYS.open, [str("/x"), O.RDONLY, 0], { step: "open" }), exit(PAYLOAD_ARG)),
      });
      const text = await dis(p.bytes.slice(0, p.codeSize), 0);
      ok(!text.includes("(bad)"), text);
      // Position independent: data is reached rip-relative, never by an absolute address.
      match(text, /\[rip\+0x[0-9a-f]+\]/);
      ok(!/movabs/.test(text), "a payload must not embed absolute addresses");
      match(text, /syscall/);
      match(text, /\bret\b/);
      const elf = compileElf(mailboxProgram({ regsPath: "/dev/mem" }));
      const loop = await dis(elf.bytes.slice(0x1000, 0x1000 + elf.codeSize), 0x401000);
      ok(!loop.includes("(bad)"));
      match(loop, /call\s+r11/, "the payload is called indirectly");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
