/**
 * The test bench of the kvm engine's agent path with the stand-in kernel:
 * a temporary directory with the stand-in as `vmlinux`, a snapshot cache in
 * it, boots through `KvmEngine.boot` that record each console and every
 * warning, and a run of `engine_run.ts` in a process of its own (a cache hit
 * there restores what this process captured).
 *
 * @module
 */

import { join } from "node:path";
import { HANG_MS, hangBound } from "../../../../tests/waits.ts";
import { SnapshotCache } from "../../../../snapshot/cache.ts";
import type { VmConfig } from "../../../config.ts";
import type { RunningVm } from "../../../engine/types.ts";
import { KvmEngine } from "../../engine.ts";
import { agentKernelElf } from "./agent_kernel.ts";

/** Options of {@link Bench.boot}. */
export interface BenchBoot {
  /** Guest RAM (default 128 MiB). */
  memoryMiB?: number;
  /** vCPUs (default 1). */
  cpus?: number;
  /** Use the snapshot cache (default false: a cold boot that leaves the cache alone). */
  snapshot?: boolean;
}

/** What a test gets: the stand-in's path, a cache, a way to boot and the consoles seen. */
export interface Bench {
  dir: string;
  kernel: string;
  cacheDir: string;
  /** Boots through the kvm engine. */
  boot(o?: BenchBoot): Promise<RunningVm>;
  /** Console output of every boot so far, in order. */
  consoles: string[];
  /** Cache warnings of every boot so far. */
  warnings: string[];
}

/** The configuration the bench boots the stand-in with. */
export function standinConfig(kernel: string, o: BenchBoot = {}): VmConfig {
  return {
    kernel,
    cpus: o.cpus ?? 1,
    memoryMiB: o.memoryMiB ?? 128,
    cmdlineExtra: "",
    root: null,
    volumes: [],
    net: null,
    hostname: "standin",
    verbose: false,
  };
}

/** Runs `fn` with a fresh bench; its directory is removed afterwards. */
export async function withBench(fn: (b: Bench) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-agent-" });
  try {
    const kernel = join(dir, "vmlinux");
    await Deno.writeFile(kernel, agentKernelElf());
    const cacheDir = join(dir, "cache", "snapshots");
    const consoles: string[] = [];
    const warnings: string[] = [];
    const dec = new TextDecoder();
    await fn({
      dir,
      kernel,
      cacheDir,
      consoles,
      warnings,
      boot: (o = {}) => {
        const i = consoles.push("") - 1;
        const engine = new KvmEngine({
          onKernelLog: (b) => consoles[i] += dec.decode(b),
          onNote: null,
          cache: new SnapshotCache(cacheDir, { warn: (m) => warnings.push(m) }),
          onWarning: (m) => warnings.push(m),
        });
        return hangBound(
          engine.boot(standinConfig(kernel, o), { snapshot: o.snapshot ?? false }),
          () => `boot hung; console:\n${consoles[i]}`,
        );
      },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** What `engine_run.ts` saw in its own process. */
export interface EngineRunResult {
  /** `[from, captured, key]` of the VM's origin. */
  origin: [string, boolean, string | null];
  /** stdout of `echo new process`. */
  echo: string;
  /** A file written and read back. */
  file: string;
  /** Whether the console showed the stand-in's cold-boot line. */
  bootLine: boolean;
  warnings: string[];
}

const ENGINE_RUN = new URL("./engine_run.ts", import.meta.url).pathname;

/** Boots the bench's stand-in (64 MiB) through the engine with its cache, in a new process. */
export async function runInNewProcess(
  b: Bench,
  o: { cpus?: number } = {},
): Promise<EngineRunResult> {
  const out = join(b.dir, `run-${crypto.randomUUID()}.json`);
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ENGINE_RUN, b.kernel, b.cacheDir, out, String(o.cpus ?? 1)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => p.kill("SIGKILL"), HANG_MS); // only catches a hang
  const r = await p.output();
  clearTimeout(timer);
  if (r.code !== 0) {
    throw new Error(`engine_run.ts failed (${r.code}):\n${new TextDecoder().decode(r.stderr)}`);
  }
  return JSON.parse(await Deno.readTextFile(out));
}
