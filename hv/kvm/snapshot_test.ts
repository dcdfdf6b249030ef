/**
 * L1: `KvmEngine.run` in mailbox mode with the snapshot cache, on /dev/kvm,
 * with a stand-in kernel that plays the mailbox-mode init
 * (testdata/mailbox_kernel.ts: prints `boot` on a cold boot, rings READY,
 * serves COMMAND records). Each run is its own process
 * (testdata/kvm_snapshot_run.ts), so a hit restores a snapshot written by
 * another process. Proves: miss → boot → capture → command served in the
 * same VM; hit → restore (no `boot`) → command served; `--no-snapshot`
 * touches no cache; a corrupt entry → one warning line, deleted, cold boot,
 * re-captured.
 */

import { deepStrictEqual, match, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { SnapshotCache } from "../../snapshot/cache.ts";
import { encodeManifest, STATE_FILE } from "../../snapshot/format.ts";
import { readSnapshot } from "../../snapshot/store.ts";
import { KVM_MP_STATE } from "../../kvm_ffi/kvm_sys.ts";
import { mailboxKernelCode, standInElf } from "./testdata/mailbox_kernel.ts";
import { Assembler } from "../../init/asm/mod.ts";
import { isEmulatedKvm } from "./emulated.ts";
import { HANG_MS } from "../../tests/waits.ts";

const HELPER = new URL("./testdata/kvm_snapshot_run.ts", import.meta.url).pathname;

interface RunResult {
  status?: { kind: string; code: number };
  error?: string;
  outcomes: { from: string; captured: boolean; key: string | null }[];
  warnings: string[];
  log: string;
}

async function run(
  dir: string,
  kernel: string,
  cache: string,
  snapshot: "on" | "off",
  arg0: string,
  cpus = 1,
): Promise<RunResult> {
  const out = join(dir, `run-${crypto.randomUUID()}.json`);
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HELPER, kernel, cache, snapshot, arg0, String(cpus), out],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => p.kill("SIGKILL"), HANG_MS); // only catches a hang
  const r = await p.output();
  clearTimeout(timer);
  const err = new TextDecoder().decode(r.stderr);
  strictEqual(r.code, 0, `helper failed (${r.code}):\n${err}`);
  return JSON.parse(await Deno.readTextFile(out));
}

/** Where Deno keeps its module cache (kept when the environment is cleared). */
function denoDir(): string {
  const d = Deno.env.get("DENO_DIR");
  if (d) return d;
  const out = new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
    .outputSync();
  return JSON.parse(new TextDecoder().decode(out.stdout)).denoDir;
}

const lines = (log: string) => log.split("\n").filter(Boolean);

hostTest(
  "kvm engine + snapshot cache: miss captures, hit restores in a new process, --no-snapshot, corrupt entry",
  [
    "kvm",
  ],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-snap-" });
    try {
      const kernel = join(dir, "vmlinux");
      await Deno.writeFile(kernel, standInElf(mailboxKernelCode()));
      const cacheDir = join(dir, "cache", "snapshots");
      const cache = new SnapshotCache(cacheDir, { warn: () => {} });

      // 1. Miss: boot (the stand-in prints "boot"), READY, capture, then the command in the same VM.
      const miss = await run(dir, kernel, cacheDir, "on", "3");
      deepStrictEqual(miss.status, { kind: "exited", code: 3 }, JSON.stringify(miss));
      strictEqual(miss.outcomes.length, 1);
      strictEqual(miss.outcomes[0].from, "boot");
      strictEqual(miss.outcomes[0].captured, true);
      deepStrictEqual(lines(miss.log), ["boot", "cmd 3"]);
      deepStrictEqual(miss.warnings, []);
      const entries = cache.list();
      strictEqual(entries.length, 1);
      strictEqual(entries[0].key, miss.outcomes[0].key);
      strictEqual(entries[0].problem, undefined);
      strictEqual(entries[0].source?.engine, "kvm");

      // 2. Hit, in a new process, with a different command: restored, never booted.
      const hit = await run(dir, kernel, cacheDir, "on", "5");
      deepStrictEqual(hit.status, { kind: "exited", code: 5 }, JSON.stringify(hit));
      deepStrictEqual(
        hit.outcomes.map((o) => [o.from, o.captured, o.key]),
        [["snapshot", false, miss.outcomes[0].key]],
      );
      deepStrictEqual(lines(hit.log), ["cmd 5"]);
      // And again: the snapshot is unchanged by a restored run's writes.
      const state = join(entries[0].dir, STATE_FILE);
      const before = await Deno.readFile(state);
      const mtime = (await Deno.stat(state)).mtime?.getTime();
      deepStrictEqual((await run(dir, kernel, cacheDir, "on", "0")).status, {
        kind: "exited",
        code: 0,
      });
      deepStrictEqual(await Deno.readFile(state), before);
      strictEqual((await Deno.stat(state)).mtime?.getTime(), mtime);

      // 3. --no-snapshot: cold boot, the cache neither read nor written.
      const fresh = join(dir, "fresh", "snapshots");
      const off = await run(dir, kernel, fresh, "off", "4");
      deepStrictEqual(off.status, { kind: "exited", code: 4 });
      deepStrictEqual(off.outcomes.map((o) => [o.from, o.captured, o.key]), [[
        "boot",
        false,
        null,
      ]]);
      deepStrictEqual(lines(off.log), ["boot", "cmd 4"]);
      strictEqual(await Deno.stat(join(dir, "fresh")).then(() => true, () => false), false);
      const off2 = await run(dir, kernel, cacheDir, "off", "2");
      deepStrictEqual(lines(off2.log), ["boot", "cmd 2"], "a cached entry is not used");
      strictEqual((await Deno.stat(state)).mtime?.getTime(), mtime);

      // 4. A corrupt entry: one warning line, deleted, cold boot, captured again.
      const bytes = await Deno.readFile(state);
      bytes[Math.floor(bytes.length / 2)] ^= 0x55;
      await Deno.writeFile(state, bytes);
      const bad = await run(dir, kernel, cacheDir, "on", "6");
      deepStrictEqual(bad.status, { kind: "exited", code: 6 }, JSON.stringify(bad));
      strictEqual(bad.warnings.length, 1, JSON.stringify(bad.warnings));
      ok(!bad.warnings[0].includes("\n"));
      match(bad.warnings[0], /deleted it, booting without the snapshot$/);
      deepStrictEqual(lines(bad.log), ["boot", "cmd 6"]);
      deepStrictEqual(bad.outcomes.map((o) => [o.from, o.captured]), [["boot", true]]);
      const after = cache.list();
      strictEqual(after.length, 1);
      strictEqual(after[0].problem, undefined);
      notStrictEqual(await Deno.readFile(state), bytes);
      const again = await run(dir, kernel, cacheDir, "on", "1");
      deepStrictEqual([again.status?.code, again.outcomes[0].from], [1, "snapshot"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest(
  "kvm engine --cpus 2: the AP waits for SIPI; every vCPU and each device record captured, restored in a new process",
  ["kvm"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-smp-" });
    try {
      const kernel = join(dir, "vmlinux");
      await Deno.writeFile(kernel, standInElf(mailboxKernelCode()));
      const cacheDir = join(dir, "cache", "snapshots");
      const miss = await run(dir, kernel, cacheDir, "on", "3", 2);
      deepStrictEqual(miss.status, { kind: "exited", code: 3 }, JSON.stringify(miss));
      deepStrictEqual(miss.outcomes.map((o) => [o.from, o.captured]), [["boot", true]]);
      const [entry] = new SnapshotCache(cacheDir).list();
      const m = readSnapshot(entry.dir).manifest;
      strictEqual(m.vcpus.length, 2);
      // vCPU 1 was never started by the stand-in kernel: still waiting for INIT/SIPI.
      const mp = (v: Record<string, unknown>) =>
        new DataView((v.mp_state as Uint8Array).slice().buffer).getUint32(0, true);
      deepStrictEqual([mp(m.vcpus[0]), mp(m.vcpus[1])], [
        KVM_MP_STATE.RUNNABLE,
        KVM_MP_STATE.UNINITIALIZED,
      ]);
      const kinds = Object.fromEntries(
        Object.entries(m.devices).map(([id, r]) => [id, (r as { kind: string }).kind]),
      );
      deepStrictEqual(kinds, {
        "uart0": "uart",
        "i8042": "i8042",
        "acpi-sleep": "acpi-sleep",
        "virtio-console": "virtio-console",
        "mailbox": "mailbox",
      });
      const hit = await run(dir, kernel, cacheDir, "on", "5", 2);
      deepStrictEqual(hit.status, { kind: "exited", code: 5 }, JSON.stringify(hit));
      deepStrictEqual(hit.outcomes.map((o) => [o.from, o.key]), [["snapshot", entry.key]]);
      deepStrictEqual(lines(hit.log), ["cmd 5"]);
      // --cpus is part of the key: one vCPU does not use the 2-vCPU snapshot.
      const one = await run(dir, kernel, cacheDir, "on", "4", 1);
      deepStrictEqual(one.outcomes.map((o) => [o.from, o.captured]), [["boot", true]]);
      notStrictEqual(one.outcomes[0].key, entry.key);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest(
  "kvm engine: a corrupt device record is one warning naming the device, then a cold boot",
  ["kvm"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-rec-" });
    try {
      const kernel = join(dir, "vmlinux");
      await Deno.writeFile(kernel, standInElf(mailboxKernelCode()));
      const cacheDir = join(dir, "cache", "snapshots");
      await run(dir, kernel, cacheDir, "on", "1");
      const [entry] = new SnapshotCache(cacheDir).list();
      const snap = readSnapshot(entry.dir);
      const devices = snap.manifest.devices as Record<string, { state: Record<string, unknown> }>;
      devices.i8042.state.ctr = "open";
      await Deno.writeTextFile(join(entry.dir, STATE_FILE), encodeManifest(snap.manifest));
      const r = await run(dir, kernel, cacheDir, "on", "2");
      deepStrictEqual(r.status, { kind: "exited", code: 2 }, JSON.stringify(r));
      strictEqual(r.warnings.length, 1, JSON.stringify(r.warnings));
      match(r.warnings[0], /device i8042: state: \$\.ctr: expected an integer/);
      deepStrictEqual(r.outcomes.map((o) => [o.from, o.captured]), [["boot", true]]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** Runs `skiff run --engine kvm ARGS…` with its own cache home and working directory. */
async function cli(
  dir: string,
  args: string[],
  noHome = false,
): Promise<{ code: number; stderr: string }> {
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
  return { code: r.code, stderr: new TextDecoder().decode(r.stderr) };
}

hostTest(
  "skiff run --engine kvm: a guest that stops before READY is one line, exit 125, no entry",
  [
    "kvm",
  ],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-cli-" });
    try {
      const snaps = new SnapshotCache(join(dir, "xdg", "skiff", "snapshots"));
      // A kernel that stops on an instruction the emulator lacks: one line, exit 125, no entry.
      const stop = join(dir, "vmlinux-stop");
      const a = new Assembler();
      a.mov("eax", 0x6000);
      a.emit([0x48, 0x0f, 0xc7, 0x08]); // cmpxchg16b [rax]
      a.ud2();
      await Deno.writeFile(stop, standInElf(a.assemble({ origin: 16 << 20 }).bytes));
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
      if (isEmulatedKvm()) {
        match(errLines[0], /emulated/);
        match(errLines[0], /KVM_EXIT_INTERNAL_ERROR/);
      }
      strictEqual(snaps.list().length, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
