import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { assertKernel, testKernel } from "../hv/qemu/testing.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const kernel = await testKernel();

async function run(cmd: string, args: string[]) {
  const p = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  return {
    code: p.code,
    out: new TextDecoder().decode(p.stdout),
    err: new TextDecoder().decode(p.stderr),
  };
}
const skiff = (...args: string[]) => run(Deno.execPath(), ["run", "-A", MAIN, ...args]);

Deno.test("skiff init build --out writes a static x86-64 ELF; bad usage exits 125", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-initcli-" });
  try {
    const r = await skiff("init", "build", "--out", `${dir}/init`);
    strictEqual(r.code, 0, r.err);
    const elf = await Deno.readFile(`${dir}/init`);
    deepStrictEqual([...elf.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
    strictEqual(elf[4], 2, "ELFCLASS64");
    strictEqual(new DataView(elf.buffer).getUint16(16, true), 2, "ET_EXEC");
    strictEqual(new DataView(elf.buffer).getUint16(18, true), 62, "EM_X86_64");
    ok(((await Deno.stat(`${dir}/init`)).mode! & 0o111) !== 0, "executable");
    // file(1)'s view of the same ELF: init/initramfs_test.ts ("init ELF").
    const bad = await skiff("init", "build");
    strictEqual(bad.code, 125);
    match(bad.err, /--out FILE is required/);
    strictEqual((await skiff("init", "nope")).code, 125);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

hostTest(
  "skiff initramfs build --out FILE -- CMD --help: the record gets CMD; cpio lists init and virtio_mmio.ko",
  [
    "kernel",
    "cpio",
  ],
  async () => {
    assertKernel(kernel);
    const dir = await Deno.makeTempDir({ prefix: "skiff-initcli-" });
    try {
      const out = `${dir}/initrd.gz`;
      // --help after -- is the guest command's (the record holds it), not a request for help.
      const r = await skiff(
        "initramfs",
        "build",
        "--out",
        out,
        "--",
        "ls",
        "--skiff-arg",
        "--help",
      );
      strictEqual(r.code, 0, r.err);
      strictEqual(r.out, "", "no help printed");
      const raw = await run("sh", ["-c", `gzip -dc '${out}' | grep -a -c -- --skiff-arg`]);
      strictEqual(raw.out.trim(), "1", "the command record holds the arguments");
      const list = await run("sh", ["-c", `gzip -dc '${out}' | cpio -t --quiet`]);
      strictEqual(list.code, 0, list.err);
      const names = list.out.trim().split("\n");
      ok(names.includes("init"), names.join(" "));
      ok(names.some((n) => n.endsWith("virtio_mmio.ko")), names.join(" "));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
