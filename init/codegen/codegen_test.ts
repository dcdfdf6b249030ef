import { match, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { buf, exit, log, mkdirP, seq, spawn, v, writeFile } from "../ir/mod.ts";
import { compileElf } from "./mod.ts";

async function run(cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

function program(dir: string) {
  const status = v("status");
  const num = buf("num", 32);
  const print = seq(
    { op: "call", routine: "utoa", args: [num, status] },
    log(1, "status="),
    log(1, num),
    log(1, "\n"),
  );
  return {
    body: seq(
      mkdirP(`${dir}/a/b/c`),
      writeFile(`${dir}/a/file`, "content\n"),
      spawn({
        argv: ["sh", "-c", 'echo "$0 $1 FOO=$FOO"; pwd; exit 3', "x", "y z"],
        envp: ["FOO=bar baz"],
        path: "/usr/bin:/bin",
        cwd: `${dir}/a/b`,
        status,
      }),
      print,
      spawn({ argv: ["sh", "-c", "kill -TERM $$"], envp: [], path: "/usr/bin:/bin", status }),
      print,
      spawn({ argv: ["skiff-no-such-command"], envp: [], path: "/usr/bin:/bin", status }),
      print,
      mkdirP(`${dir}/missing-parent-file/a/file/x`),
      exit(0),
    ),
  };
}

hostTest("codegen: a static ELF runs natively with the effects asked for", [], async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { bytes } = compileElf(program(dir));
    const exe = `${dir}/prog`;
    await Deno.writeFile(exe, bytes, { mode: 0o755 });
    await Deno.mkdir(`${dir}/missing-parent-file/a`, { recursive: true });
    await Deno.writeTextFile(`${dir}/missing-parent-file/a/file`, "not a directory");
    const r = await run(exe, []);
    strictEqual(r.code, 1, r.stderr);
    strictEqual(
      r.stdout,
      `x y z FOO=bar baz\n${dir}/a/b\nstatus=3\nstatus=143\nstatus=127\n`,
    );
    match(r.stderr, /skiff: skiff-no-such-command: command not found/);
    match(r.stderr, /skiff-init: mkdir .*\/a\/file\/x failed: ENOTDIR \(errno 20\)/);
    ok((await Deno.stat(`${dir}/a/b/c`)).isDirectory);
    strictEqual(await Deno.readTextFile(`${dir}/a/file`), "content\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

hostTest("codegen: ELF headers and code agree with file(1)/objdump", ["objdump"], async () => {
  const dir = await Deno.makeTempDir();
  try {
    const c = compileElf(program(dir));
    const exe = `${dir}/prog`;
    await Deno.writeFile(exe, c.bytes, { mode: 0o755 });
    const hdr = await run("objdump", ["-p", exe]);
    match(hdr.stdout, /LOAD off\s+0x0+ vaddr 0x0+400000 .*\n.*flags r-x/);
    match(hdr.stdout, /LOAD off\s+0x0+2000 vaddr 0x0+402000 .*\n.*flags rw-/);
    // Disassemble the text segment: every byte decodes, the entry starts an instruction.
    const text = c.bytes.slice(0x1000, 0x1000 + c.codeSize);
    const bin = `${dir}/text.bin`;
    await Deno.writeFile(bin, text);
    const dis = await run("objdump", [
      "-D",
      "-b",
      "binary",
      "-m",
      "i386:x86-64",
      "-M",
      "intel",
      "--adjust-vma=0x401000",
      bin,
    ]);
    ok(!dis.stdout.includes("(bad)"), "objdump found undecodable bytes");
    match(dis.stdout, /\n\s+401000:\t/);
    match(dis.stdout, /syscall/);
    const f = await run("file", [exe]).catch(() => null);
    if (f && f.code === 0) {
      match(f.stdout, /ELF 64-bit LSB executable, x86-64/);
      match(f.stdout, /statically linked/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
