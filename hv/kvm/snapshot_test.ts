/**
 * L1: the kvm engine's snapshot cache on /dev/kvm, with the stand-in agent
 * kernel (testdata/standin/: prints `skiff-standin: boot` on a cold boot
 * only, then READY, then serves the agent protocol over vsock). Proves what
 * the cache promises around `KvmEngine.boot`: `--no-snapshot` neither reads
 * nor writes it; a miss captures at READY; a hit restores (no boot line) and
 * leaves the entry unchanged; a corrupt entry or device record is one
 * warning line, deleted, a cold boot and a new capture; `--cpus` is in the
 * key and every vCPU and device record is captured and restored in a new
 * process. Then the same through `skiff run --engine kvm` (main.ts): exit
 * codes, `--verbose`'s hit/miss line, `--no-snapshot`, no HOME, a guest
 * that stops before READY, `--timeout`. The agent's calls themselves are
 * agent_kvm_test.ts.
 */

import { deepStrictEqual, match, notDeepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { HANG_MS, hangBound } from "../../tests/waits.ts";
import { SnapshotCache } from "../../snapshot/cache.ts";
import { encodeManifest, MEMORY_FILE, STATE_FILE } from "../../snapshot/format.ts";
import { readSnapshot } from "../../snapshot/store.ts";
import { KVM_MP_STATE } from "../../kvm_ffi/kvm_sys.ts";
import { Assembler } from "../../init/asm/mod.ts";
import { isEmulatedKvm } from "./emulated.ts";
import { agentKernelElf, STANDIN_BOOT_LINE } from "./testdata/standin/agent_kernel.ts";
import { type Bench, runInNewProcess, withBench } from "./testdata/standin/bench.ts";
import { STANDIN_LOAD, standInElf } from "./testdata/elf.ts";

/** `work`, bounded only to turn a hang into a failure. */
function bounded<T>(work: Promise<T>): Promise<T> {
  return hangBound(work, () => "the stand-in agent did not answer");
}

/** Boots with the cache (64 MiB, as runInNewProcess), checks the command path, stops. */
async function bootOnce(b: Bench, o: { cpus?: number; snapshot?: boolean } = {}) {
  await using vm = await b.boot({ memoryMiB: 64, snapshot: o.snapshot ?? true, cpus: o.cpus });
  strictEqual((await bounded(vm.exec(["echo", "up"]))).stdoutText, "up\n");
  await bounded(vm.writeFile("/written", "by this VM"));
  return { ...vm.origin, bootLine: b.consoles.at(-1)!.includes(STANDIN_BOOT_LINE) };
}

/** Modification time and bytes of a file, to prove nothing rewrote it. */
async function fingerprint(path: string): Promise<[number | undefined, string]> {
  const bytes = await Deno.readFile(path);
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [(await Deno.stat(path)).mtime?.getTime(), Array.from(h, (x) => x.toString(16)).join("")];
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

hostTest(
  "kvm engine + snapshot cache: --no-snapshot, miss captures, hit leaves the entry unchanged, corrupt entry",
  ["kvm"],
  async () => {
    await withBench(async (b) => {
      // 1. --no-snapshot on an empty cache: a cold boot, nothing created.
      const off = await bootOnce(b, { snapshot: false });
      deepStrictEqual([off.from, off.captured, off.key, off.bootLine], ["boot", false, null, true]);
      strictEqual(await exists(join(b.dir, "cache")), false, "--no-snapshot created the cache");

      // 2. Miss: boot to READY, capture, then the session in the same VM.
      const miss = await bootOnce(b);
      deepStrictEqual([miss.from, miss.captured, miss.bootLine], ["boot", true, true]);
      const cache = new SnapshotCache(b.cacheDir, { warn: () => {} });
      const entries = cache.list();
      strictEqual(entries.length, 1);
      deepStrictEqual(
        [entries[0].key, entries[0].problem, entries[0].source?.engine],
        [miss.key, undefined, "kvm"],
      );
      const state = join(entries[0].dir, STATE_FILE);
      const memory = join(entries[0].dir, MEMORY_FILE);
      const before = [await fingerprint(state), await fingerprint(memory)];

      // 3. Hit: restored, never booted; what the restored VM wrote is not in the entry.
      for (let i = 0; i < 2; i++) {
        const hit = await bootOnce(b);
        deepStrictEqual([hit.from, hit.captured, hit.key, hit.bootLine], [
          "snapshot",
          false,
          miss.key,
          false,
        ]);
      }
      deepStrictEqual([await fingerprint(state), await fingerprint(memory)], before);

      // 4. --no-snapshot with an entry there: not used, not touched.
      const off2 = await bootOnce(b, { snapshot: false });
      deepStrictEqual([off2.from, off2.key, off2.bootLine], ["boot", null, true]);
      deepStrictEqual([await fingerprint(state), await fingerprint(memory)], before);
      deepStrictEqual([...b.warnings], []);

      // 5. A corrupt entry: one warning line, deleted, a cold boot, captured again.
      const bytes = await Deno.readFile(state);
      bytes[Math.floor(bytes.length / 2)] ^= 0x55;
      await Deno.writeFile(state, bytes);
      const bad = await bootOnce(b);
      strictEqual(b.warnings.length, 1, JSON.stringify(b.warnings));
      ok(!b.warnings[0].includes("\n"));
      match(b.warnings[0], /deleted it, booting without the snapshot$/);
      deepStrictEqual([bad.from, bad.captured, bad.key, bad.bootLine], [
        "boot",
        true,
        miss.key,
        true,
      ]);
      const after = cache.list();
      strictEqual(after.length, 1);
      strictEqual(after[0].problem, undefined);
      notDeepStrictEqual(await Deno.readFile(state), bytes);
      const again = await bootOnce(b);
      deepStrictEqual([again.from, again.bootLine], ["snapshot", false]);
      strictEqual(b.warnings.length, 1);
    });
  },
);

hostTest(
  "kvm engine --cpus 2: the AP waits for SIPI; every vCPU and each device record captured, restored in a new process",
  ["kvm"],
  async () => {
    await withBench(async (b) => {
      const miss = await bootOnce(b, { cpus: 2 });
      deepStrictEqual([miss.from, miss.captured], ["boot", true]);
      const [entry] = new SnapshotCache(b.cacheDir).list();
      const m = readSnapshot(entry.dir).manifest;
      strictEqual(m.vcpus.length, 2);
      // vCPU 1 was never started by the stand-in: still waiting for INIT/SIPI. vCPU 0 runs its
      // event loop, or halts in it (the loop's idle HLT) when the capture came then.
      const mp = (v: Record<string, unknown>) =>
        new DataView((v.mp_state as Uint8Array).slice().buffer).getUint32(0, true);
      ok(
        ([KVM_MP_STATE.RUNNABLE, KVM_MP_STATE.HALTED] as number[]).includes(mp(m.vcpus[0])),
        `vCPU 0 mp_state ${mp(m.vcpus[0])}`,
      );
      strictEqual(mp(m.vcpus[1]), KVM_MP_STATE.UNINITIALIZED);
      const kinds = Object.fromEntries(
        Object.entries(m.devices).map(([id, r]) => [id, (r as { kind: string }).kind]),
      );
      deepStrictEqual(kinds, {
        "uart0": "uart",
        "i8042": "i8042",
        "acpi-sleep": "acpi-sleep",
        "virtio-vsock": "virtio-vsock",
        "virtio-fs": "virtio-fs",
        "virtio-net": "virtio-net",
      });
      // A hit in a new process: restored (no boot line), the agent answers.
      deepStrictEqual(await runInNewProcess(b, { cpus: 2 }), {
        origin: ["snapshot", false, entry.key],
        echo: "new process\n",
        file: "written in a new process",
        bootLine: false,
        warnings: [],
      });
      // --cpus is part of the key: one vCPU does not use the 2-vCPU snapshot.
      const one = await bootOnce(b, { cpus: 1 });
      deepStrictEqual([one.from, one.captured, one.bootLine], ["boot", true, true]);
      ok(one.key !== entry.key);
      deepStrictEqual([...b.warnings], []);
    });
  },
);

hostTest(
  "kvm engine: a corrupt device record is one warning naming the device, then a cold boot",
  ["kvm"],
  async () => {
    await withBench(async (b) => {
      await bootOnce(b);
      const [entry] = new SnapshotCache(b.cacheDir).list();
      const snap = readSnapshot(entry.dir);
      const devices = snap.manifest.devices as Record<string, { state: Record<string, unknown> }>;
      devices.i8042.state.ctr = "open";
      await Deno.writeTextFile(join(entry.dir, STATE_FILE), encodeManifest(snap.manifest));
      const r = await bootOnce(b);
      strictEqual(b.warnings.length, 1, JSON.stringify(b.warnings));
      match(b.warnings[0], /device i8042: state: \$\.ctr: expected an integer/);
      deepStrictEqual([r.from, r.captured, r.bootLine], ["boot", true, true]);
    });
  },
);

/** Where Deno keeps its module cache (kept when the environment is cleared). */
function denoDir(): string {
  const d = Deno.env.get("DENO_DIR");
  if (d) return d;
  const out = new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
    .outputSync();
  return JSON.parse(new TextDecoder().decode(out.stdout)).denoDir;
}

/** Runs `skiff run ARGS…` (main.ts) with its own cache home and working directory. */
async function cli(
  dir: string,
  args: string[],
  noHome = false,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname, "run", ...args],
    cwd: dir,
    // noHome: neither XDG_CACHE_HOME nor HOME, so there is no cache directory.
    env: noHome
      ? { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", DENO_DIR: denoDir() }
      : { XDG_CACHE_HOME: join(dir, "xdg") },
    clearEnv: noHome,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => p.kill("SIGKILL"), HANG_MS); // only catches a hang
  const r = await p.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** A kernel at 16 MiB that runs `emit` (after nothing else). */
async function tinyKernel(path: string, emit: (a: Assembler) => void): Promise<string> {
  const a = new Assembler();
  emit(a);
  await Deno.writeFile(path, standInElf(a.assemble({ origin: STANDIN_LOAD }).bytes));
  return path;
}

hostTest(
  "skiff run --engine kvm (stand-in agent): exit codes through the cache, --verbose hit/miss, --no-snapshot, no HOME",
  ["kvm"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-cli-" });
    try {
      const kernel = join(dir, "vmlinux");
      await Deno.writeFile(kernel, agentKernelElf());
      const snaps = new SnapshotCache(join(dir, "xdg", "skiff", "snapshots"));
      const base = ["--engine", "kvm", "--kernel", kernel, "--memory", "64"];
      const ready = /^skiff: kvm: snapshot (hit|miss); ready after \d+ ms$/m;

      // Miss: the command's exit code; --verbose says miss and shows the cold boot's console.
      const miss = await cli(dir, [...base, "--verbose", "--", "exit", "3"]);
      strictEqual(miss.code, 3, miss.stderr);
      strictEqual(miss.stderr.match(ready)?.[1], "miss", miss.stderr);
      ok(miss.stderr.includes(STANDIN_BOOT_LINE), miss.stderr);
      strictEqual(snaps.list().length, 1, "the first run captured a snapshot");
      const state = join(snaps.list()[0].dir, STATE_FILE);
      const captured = await fingerprint(state);

      // Hit: restored, the command's output on stdout.
      const hit = await cli(dir, [...base, "--verbose", "--", "echo", "hi"]);
      deepStrictEqual([hit.code, hit.stdout], [0, "hi\n"], hit.stderr);
      strictEqual(hit.stderr.match(ready)?.[1], "hit", hit.stderr);
      ok(!hit.stderr.includes(STANDIN_BOOT_LINE), hit.stderr);
      const quiet = await cli(dir, [...base, "--", "echo", "quiet"]);
      deepStrictEqual([quiet.code, quiet.stdout], [0, "quiet\n"], quiet.stderr);
      ok(!ready.test(quiet.stderr) && !quiet.stderr.includes(STANDIN_BOOT_LINE), quiet.stderr);

      // --no-snapshot: a cold boot; the entry is neither used nor rewritten.
      const off = await cli(dir, [...base, "--no-snapshot", "--verbose", "--", "exit", "5"]);
      strictEqual(off.code, 5, off.stderr);
      ok(off.stderr.includes(STANDIN_BOOT_LINE), off.stderr);
      strictEqual(snaps.list().length, 1);
      deepStrictEqual(await fingerprint(state), captured);

      // No cache directory at all (no HOME): one warning line, and the run still works.
      const homeless = await cli(dir, [...base, "--", "exit", "6"], true);
      strictEqual(homeless.code, 6, homeless.stderr);
      const warnings = homeless.stderr.split("\n").filter((l) => l.includes("snapshot cache"));
      strictEqual(warnings.length, 1, homeless.stderr);
      match(warnings[0], /^skiff: snapshot cache unavailable, booting without it: .*HOME/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest(
  "skiff run --engine kvm: a guest that stops before READY is one line, exit 125, no entry; --timeout is 124",
  ["kvm"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-cli-" });
    try {
      const snaps = new SnapshotCache(join(dir, "xdg", "skiff", "snapshots"));
      // A kernel that stops on an instruction the emulator lacks: one line, exit 125, no entry.
      const stop = await tinyKernel(join(dir, "vmlinux-stop"), (a) => {
        a.mov("eax", 0x6000);
        a.emit([0x48, 0x0f, 0xc7, 0x08]); // cmpxchg16b [rax]
        a.ud2();
      });
      const r = await cli(dir, [
        "--engine",
        "kvm",
        "--kernel",
        stop,
        "--memory",
        "64",
        "--",
        "true",
      ]);
      strictEqual(r.code, 125, r.stderr);
      const errLines = r.stderr.trim().split("\n").filter((l) => l.startsWith("skiff run:"));
      strictEqual(errLines.length, 1, r.stderr);
      match(errLines[0], /^skiff run: guest stopped: /);
      if (isEmulatedKvm()) {
        match(errLines[0], /emulated/);
        match(errLines[0], /KVM_EXIT_INTERNAL_ERROR/);
      }
      strictEqual(snaps.list().length, 0);

      // A kernel that spins before READY: --timeout stops it, exit 124, no entry.
      const spin = await tinyKernel(join(dir, "vmlinux-spin"), (a) => {
        a.label("spin");
        a.jmp("spin");
      });
      const t = await cli(dir, [
        "--engine",
        "kvm",
        "--kernel",
        spin,
        "--memory",
        "64",
        "--timeout",
        "1",
        "--",
        "true",
      ]);
      strictEqual(t.code, 124, t.stderr);
      match(t.stderr, /^skiff run: timed out after 1 s/m);
      strictEqual(snaps.list().length, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
