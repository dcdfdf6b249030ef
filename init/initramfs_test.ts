import { deepStrictEqual, match, ok, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { gzip, withParents, writeCpio } from "./cpio.ts";
import { buildInitElf, buildInitramfs, initramfsEntries, initramfsParts } from "./initramfs.ts";
import { defaultInitConfig } from "./config.ts";
import { decodeRecord } from "./record.ts";
import { assertKernel, testKernel } from "../hv/qemu/testing.ts";

const kernel = await testKernel();

async function run(cmd: string, args: string[], stdin?: Uint8Array) {
  const p = new Deno.Command(cmd, {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const w = p.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await p.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("cpio: newc layout — header fields, 4-byte padding, trailer", () => {
  const a = writeCpio([{ kind: "file", path: "/ab", data: new Uint8Array([1, 2, 3]) }]);
  const text = new TextDecoder("latin1").decode(a);
  strictEqual(text.slice(0, 6), "070701");
  strictEqual(text.slice(6 + 8, 6 + 16), "000081a4"); // mode: regular 0644
  strictEqual(text.slice(6 + 6 * 8, 6 + 7 * 8), "00000003"); // filesize
  strictEqual(text.slice(6 + 11 * 8, 6 + 12 * 8), "00000003"); // namesize "ab\0"
  // 110-byte header + "ab\0" = 113 → padded to 116, then 3 data bytes → 120.
  strictEqual(text.slice(110, 113), "ab\0");
  deepStrictEqual([...a.subarray(116, 119)], [1, 2, 3]);
  strictEqual(text.slice(120, 126), "070701");
  ok(text.includes("TRAILER!!!\0"));
  strictEqual(a.length % 4, 0);
  throws(() => writeCpio([{ kind: "dir", path: "a/../b" }]), /bad archive path/);
  throws(() => writeCpio([{ kind: "dir", path: "a" }, { kind: "dir", path: "/a/" }]), /duplicate/);
  deepStrictEqual(
    withParents([{ kind: "file", path: "x/y/z", data: new Uint8Array() }]).map((e) => e.path),
    ["x", "x/y", "x/y/z"],
  );
});

hostTest("cpio: GNU cpio lists and extracts what skiff wrote (gzip'd)", ["cpio"], async () => {
  const archive = await gzip(writeCpio(withParents([
    { kind: "dir", path: "etc", mode: 0o700 },
    { kind: "file", path: "etc/hello", data: new TextEncoder().encode("hi\n"), mode: 0o640 },
    { kind: "file", path: "bin/tool", data: new Uint8Array(5), mode: 0o755 },
    { kind: "file", path: "empty", data: new Uint8Array() },
    { kind: "symlink", path: "bin/link", target: "tool" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1 },
  ])));
  const zcat = await run("sh", ["-c", "gzip -dc | cpio -itv --quiet"], archive);
  strictEqual(zcat.code, 0, zcat.stderr);
  const lines = zcat.stdout.trim().split("\n");
  const find = (name: string) =>
    lines.find((l) => l.endsWith(` ${name}`) || l.includes(` ${name} ->`));
  match(find("etc")!, /^drwx------ /);
  match(find("etc/hello")!, /^-rw-r----- .* 3 /);
  match(find("bin/tool")!, /^-rwxr-xr-x /);
  match(find("bin/link")!, /^lrwxrwxrwx .* bin\/link -> tool$/);
  match(find("dev/console")!, /^crw------- .* 5,\s+1 /);
  ok(find("empty"));
  // Extract (no device nodes as a normal check: skip dev/) and compare contents.
  const dir = await Deno.makeTempDir({ prefix: "skiff-cpio-" });
  try {
    const x = await run(
      "sh",
      ["-c", `cd '${dir}' && gzip -dc | cpio -idm --quiet --no-absolute-filenames 'etc/*' 'bin/*'`],
      archive,
    );
    strictEqual(x.code, 0, x.stderr);
    strictEqual(await Deno.readTextFile(`${dir}/etc/hello`), "hi\n");
    strictEqual(await Deno.readLink(`${dir}/bin/link`), "tool");
    strictEqual((await Deno.stat(`${dir}/bin/tool`)).mode! & 0o777, 0o755);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

hostTest("initramfs: init, modules in modules.dep order, record; cpio -t lists them", [
  "kernel",
  "cpio",
], async () => {
  assertKernel(kernel);
  const config = defaultInitConfig(["echo", "hi"]);
  config.net = { address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1", dns: "10.42.0.1" };
  const entries = await initramfsEntries({
    kernel,
    config,
    extraFiles: [{ path: "/etc/extra.conf", data: new TextEncoder().encode("x=1\n") }],
  });
  const record = entries.find((e) => e.path === "/skiff/record");
  ok(record && record.kind === "file");
  const spec = decodeRecord(record.data);
  deepStrictEqual(spec.argv, ["echo", "hi"]);
  const mods = spec.modules.map((m) => m.slice(m.lastIndexOf("/") + 1));
  // Dependencies first: virtio_ring and virtio before virtio_mmio; fuse before virtiofs.
  ok(mods.indexOf("virtio.ko") < mods.indexOf("virtio_mmio.ko"), mods.join(" "));
  ok(mods.indexOf("fuse.ko") < mods.indexOf("virtiofs.ko"), mods.join(" "));
  ok(mods.indexOf("failover.ko") < mods.indexOf("virtio_net.ko"), mods.join(" "));
  for (const m of spec.modules) ok(entries.some((e) => `/${e.path.replace(/^\//, "")}` === m), m);

  const gz = await buildInitramfs({ kernel, config });
  // The whole file: cpio -t lists the first archive (the fixed part).
  const list = await run("sh", ["-c", "gzip -dc | cpio -t --quiet"], gz);
  strictEqual(list.code, 0, list.stderr);
  const names = list.stdout.trim().split("\n");
  ok(names.includes("init"));
  ok(names.includes("dev/console"));
  ok(names.some((n) => n.endsWith("/virtio_mmio.ko")), names.join(" "));
  ok(names.some((n) => n.endsWith("/virtio_net.ko")), "net modules when net is on");
  // The per-run part is the second gzip member with its own cpio archive.
  const parts = await initramfsParts({
    kernel,
    config,
    extraFiles: [{ path: "/etc/extra.conf", data: new TextEncoder().encode("x=1\n") }],
  });
  const tail = await run("sh", ["-c", "gzip -dc | cpio -t --quiet"], parts.tail);
  deepStrictEqual(tail.stdout.trim().split("\n"), ["skiff/record", "etc/extra.conf"]);
  const whole = await buildInitramfs({ kernel, config: { ...config, hostname: "other" } });
  deepStrictEqual(whole.subarray(0, parts.base.length), parts.base, "the fixed part is reused");
  deepStrictEqual(await buildInitramfs({ kernel, config }), gz);
});

hostTest("init ELF: file(1) and objdump agree it is a static x86-64 executable", [
  "objdump",
  "file",
], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-initelf-" });
  try {
    const exe = `${dir}/init`;
    const elf = buildInitElf();
    await Deno.writeFile(exe, elf, { mode: 0o755 });
    const hdr = await run("objdump", ["-f", "-p", exe]);
    match(hdr.stdout, /file format elf64-x86-64/);
    match(hdr.stdout, /start address 0x0*401000/);
    ok(!/INTERP|DYNAMIC/.test(hdr.stdout), "no interpreter, no dynamic section");
    const textSize = Number(
      /LOAD off\s+0x0+ vaddr 0x0+400000 .*\n\s+filesz (0x[0-9a-f]+)/.exec(
        hdr.stdout,
      )![1],
    );
    const bin = `${dir}/text.bin`;
    await Deno.writeFile(bin, elf.slice(0x1000, textSize));
    const dis = await run("objdump", [
      "-D",
      "-b",
      "binary",
      "-m",
      "i386:x86-64",
      "--adjust-vma=0x401000",
      bin,
    ]);
    ok(!dis.stdout.includes("(bad)"), "objdump found undecodable bytes");
    // The init's system calls: mount, finit_module, fork, wait4, reboot among them.
    const syscalls = dis.stdout.match(/\tsyscall/g)?.length ?? 0;
    ok(syscalls > 40, `only ${syscalls} syscall instructions`);
    for (const nr of [165, 313, 57, 61, 169]) {
      ok(
        new RegExp(`mov\\s+\\$0x${nr.toString(16)},%eax\\n.*syscall`).test(dis.stdout),
        `no syscall ${nr}`,
      );
    }
    const f = await run("file", [exe]);
    match(f.stdout, /ELF 64-bit LSB executable, x86-64/);
    match(f.stdout, /statically linked/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
