/**
 * `deno task compile` and `deno task bundle`, checked end to end in
 * temporary directories (nothing is written into the checkout):
 *
 * - `deno compile` of main.ts with every runtime module `--include`d
 *   (tests/bundle.ts `compileArgs`) must give an executable whose `--help`
 *   lists the subcommands. It needs its `denort` base binary (`DENORT_BIN`,
 *   or a download from dl.deno.land); without one — as on this workplace,
 *   which reaches only package registries (DESIGN.md) — the test is ignored
 *   with that reason (requirement `denort`).
 * - The bundle (`skiff.js` and its runtime modules, copied away from the
 *   sources beside the `skiff` launcher) must print its help, run
 *   `run -- true` and `run -- sh -c 'exit 3'` with their exit codes on the
 *   qemu engine, and run the kvm engine, whose vCPU Worker and Worker-side
 *   devices are loaded by URL, with a stand-in kernel.
 */

import { match, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { hostTest, probeRequirements } from "./requirements.ts";
import { buildBundle, compileArgs, MAIN_BUNDLE } from "./bundle.ts";
import { bundledName, RUNTIME_MODULES } from "../hv/module_url.ts";
import { standInElf } from "../hv/kvm/testdata/elf.ts";
import { Assembler } from "../init/asm/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const deno = Deno.execPath();
/**
 * Bound on each build or run, only to catch a hang (a download that never
 * ends, a guest that never stops): a run takes seconds, a build a minute.
 */
const STEP_MS = 10 * 60_000;
/** Subcommands `--help` must list. */
const COMMANDS = ["setup", "run", "boot", "fuse", "snapshot", "kernel"];

await probeRequirements(["denort"]);

interface Out {
  code: number;
  out: string;
  err: string;
}

async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Promise<Out> {
  const o = await new Deno.Command(cmd, {
    args,
    cwd: opts.cwd ?? ROOT,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(STEP_MS),
  }).output();
  const dec = new TextDecoder();
  if (o.signal) throw new Error(`${cmd} ${args.join(" ")} was killed (${o.signal})`);
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

function assertHelp(what: string, r: Out): void {
  strictEqual(r.code, 0, `${what} --help failed:\n${r.err}`);
  for (const c of COMMANDS) {
    ok(new RegExp(`^\\s+${c}\\s`, "m").test(r.out), `${what} --help lacks ${c}:\n${r.out}`);
  }
}

hostTest(
  "compile: deno compile (every runtime module included) gives an executable whose --help lists the commands",
  ["denort"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-compile-" });
    try {
      const exe = join(dir, "skiff");
      const args = compileArgs(exe);
      for (const m of RUNTIME_MODULES) ok(args.includes(m), `--include ${m} missing`);
      const c = await run(deno, args);
      strictEqual(c.code, 0, `deno compile failed:\n${c.err}`);
      assertHelp("compiled skiff", await run(exe, ["--help"]));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** A copy of skiff as it ships without its sources; disposing it removes it. */
interface Shipped extends AsyncDisposable {
  dir: string;
  /** Runs the copy's launcher (with this test's Deno) in its directory. */
  skiff(args: string[]): Promise<Out>;
}

/** The `skiff` launcher and `dist/` (the bundle) in a fresh temporary directory. */
async function shippedCopy(): Promise<Shipped> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-bundle-" });
  const dispose = () => Deno.remove(dir, { recursive: true });
  try {
    const files = await buildBundle(join(dir, "dist"));
    strictEqual(files[0], MAIN_BUNDLE);
    strictEqual(files.length, 1 + RUNTIME_MODULES.length);
    for (const m of RUNTIME_MODULES) ok(files.includes(bundledName(m)), m);
    await Deno.copyFile(join(ROOT, "skiff"), join(dir, "skiff"));
    await Deno.chmod(join(dir, "skiff"), 0o755);
  } catch (e) {
    await dispose();
    throw e;
  }
  return {
    dir,
    skiff: (args) => run(join(dir, "skiff"), args, { cwd: dir, env: { SKIFF_DENO: deno } }),
    [Symbol.asyncDispose]: dispose,
  };
}

Deno.test("bundle: skiff.js alone (no sources around it) prints help listing the commands", async () => {
  await using copy = await shippedCopy();
  const js = join(copy.dir, "dist", MAIN_BUNDLE);
  assertHelp("bundled skiff.js", await run(deno, ["run", "-A", "--no-config", js, "--help"]));
  assertHelp("launcher with dist/", await copy.skiff(["--help"]));
});

hostTest(
  "bundle: run -- true and run -- sh -c 'exit 3' through the bundle (qemu engine) exit 0 and 3",
  ["qemu", "kernel"],
  async () => {
    await using copy = await shippedCopy();
    const t = await copy.skiff(["run", "--engine", "qemu", "--", "true"]);
    strictEqual(t.code, 0, t.err);
    const three = await copy.skiff(["run", "--engine", "qemu", "--", "sh", "-c", "exit 3"]);
    strictEqual(three.code, 3, three.err);
  },
);

hostTest(
  "bundle: the kvm engine's vCPU Worker and its device modules load from the bundle",
  ["kvm"],
  async () => {
    await using copy = await shippedCopy();
    // A stand-in kernel that runs until an instruction it cannot (ud2, or
    // cmpxchg16b where guest code is emulated): the VM ran, so the vCPU Worker
    // and every device module loaded from the bundle, and the stop is the
    // one explained line.
    const kernel = join(copy.dir, "vmlinux");
    const a = new Assembler();
    a.mov("eax", 0x6000);
    a.emit([0x48, 0x0f, 0xc7, 0x08]); // cmpxchg16b [rax]
    a.ud2();
    await Deno.writeFile(kernel, standInElf(a.assemble({ origin: 16 << 20 }).bytes));
    const r = await copy.skiff([
      "run",
      "--engine",
      "kvm",
      "--no-snapshot",
      "--kernel",
      kernel,
      "--memory",
      "64",
      "--",
      "true",
    ]);
    strictEqual(r.code, 125, r.err);
    match(r.err, /^skiff run: guest stopped: /m);
    ok(!/Module not found|worker failed/i.test(r.err), r.err);
  },
);

Deno.test("bundle: a missing dist/ and main.ts is one line from the launcher, exit 125", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-launcher-" });
  try {
    await Deno.copyFile(join(ROOT, "skiff"), join(dir, "skiff"));
    await Deno.chmod(join(dir, "skiff"), 0o755);
    const r = await run(join(dir, "skiff"), ["--help"], { cwd: dir, env: { SKIFF_DENO: deno } });
    strictEqual(r.code, 125);
    match(r.err, /^skiff: neither .*main\.ts nor .*dist\/skiff\.js \(deno task bundle\) exists\n$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
