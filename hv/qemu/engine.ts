/**
 * The qemu engine: skiff drives a QEMU process (as Kata drives Cloud
 * Hypervisor) and keeps everything above the CPU its own — the kernel from
 * skiff's cache, skiff's guest agent as the init, skiff's FUSE server, vsock
 * and network stack behind the guest's devices.
 *
 * A boot restores the VM from the snapshot cache when it holds one for this
 * configuration (q35, RAM file on tmpfs, `x-ignore-shared` migration: see
 * hv/qemu/persist.ts); otherwise it cold-boots the agent to READY and
 * captures it there. Either way the session's devices are then hot-plugged
 * and set up (hv/qemu/guest.ts), so one snapshot serves every command,
 * working directory, share and network.
 *
 * @module
 */

import { dirname } from "node:path";
import { randomSnapshotKey, SnapshotCache, touchEntry } from "../../snapshot/cache.ts";
import { bootCached } from "../../snapshot/boot_cached.ts";
import { RamSpares } from "../../snapshot/ram_spares.ts";
import { type QemuEntry, readQemuEntry } from "../../snapshot/qemu_entry.ts";
import { type ExitStatus, GUEST_PATH, MIN_MEMORY_MIB, type VmConfig } from "../config.ts";
import { ConfigError, SkiffError, VmError } from "../errors.ts";
import { findKernel, type KernelInfo } from "../kernel/mod.ts";
import { hasPvhEntry } from "../kernel/pvh.ts";
import { AgentVm } from "../engine/agent_vm.ts";
import { agentInitramfsIdentity } from "../engine/init_identity.ts";
import { agentInitramfsFile } from "../engine/agent_initramfs_file.ts";
import { rootDirOf } from "../engine/session.ts";
import { timeline } from "../engine/timeline.ts";
import type { BootOptions, ConsoleIO, Engine, RunningVm, SnapshotRef } from "../engine/types.ts";
import { ConsoleWatch, guestReady } from "./console.ts";
import { EarlyRestore } from "./early_restore.ts";
import { captureQemu, type QemuCapture, restoreQemu } from "./persist.ts";
import { QemuRamDir } from "./ram_dir.ts";
import { makePidDir, sweepPidDirs, tempRoot } from "../pid_dir.ts";
import { QemuProcess, type QemuStartOptions } from "./process.ts";
import { qemuSnapshotKey } from "./snapshot_key.ts";

/** Options of {@link QemuEngine}. */
export interface QemuEngineOptions {
  /** QEMU accelerator: "tcg" (software) where KVM cannot run guests, else "kvm". */
  accel: "kvm" | "tcg";
  /** QEMU binary (default `qemu-system-x86_64` from PATH). */
  binary?: string;
  /** Progress and diagnostics (`--verbose`); default: silent. */
  log?: (line: string) => void;
  /** The snapshot cache (default: skiff's, `${XDG_CACHE_HOME:-~/.cache}/skiff/snapshots`). */
  cache?: SnapshotCache;
  /** Use the cache (default true; `--no-snapshot` is false). */
  snapshot?: boolean;
  /** One-line cache warnings (a bad entry deleted, …); default: stderr. */
  onWarning?: (line: string) => void;
}

/** Bound on a cold boot reaching READY (a TCG boot takes 2–5 s; this only catches hangs). */
const READY_WAIT_MS = 10 * 60_000;
/** ASCII EOT (Ctrl-D): end-of-file typed at a terminal. */
const EOT = new Uint8Array([4]);
/** How often `skiff boot` repeats EOT after its input ended, until the shell exits. */
const EOT_REPEAT_MS = 250;
/** Name prefix of a VM's scratch directory (sockets, initramfs) in the temp root: `skiff-qemu-<pid>-…`. */
const SCRATCH_PREFIX = "skiff-qemu-";

/**
 * The image QEMU boots for `kernel`: its ELF vmlinux when that has a PVH
 * entry (hv/kernel/pvh.ts: no self-decompression, a smaller RAM image to
 * capture), else its bzImage; a vmlinux without one only when there is no
 * bzImage (QEMU then refuses it, naming the file).
 */
export function qemuKernelImage(kernel: KernelInfo): string {
  if (kernel.vmlinux && hasPvhEntry(kernel.vmlinux)) return kernel.vmlinux;
  const image = kernel.bzImage ?? kernel.vmlinux;
  if (!image) throw new VmError(`kernel ${kernel.version} has neither a bzImage nor a vmlinux`);
  return image;
}

/** The guest kernel's command line for a skiff guest under QEMU. */
export function qemuKernelCmdline(config: VmConfig): string {
  // quiet: the console is only read on failure; panic=-1 + -no-reboot make a
  // guest panic end QEMU instead of hanging. cryptomgr.notests: the Debian
  // kernel (CRYPTO_FIPS=y, CRYPTO_MANAGER_DISABLE_TESTS unset) self-tests every
  // crypto algorithm it registers, which under TCG cost ≈0.35 s of each cold
  // boot here (crypto/testmgr.c; Documentation/admin-guide/kernel-parameters.txt).
  const base = "console=ttyS0 quiet panic=-1 cryptomgr.notests";
  return config.cmdlineExtra ? `${base} ${config.cmdlineExtra}` : base;
}

const encoder = new TextEncoder();
/** `--verbose`: the guest console as it arrives. */
function mirrorToStderr(s: string): void {
  Deno.stderr.writeSync(encoder.encode(s));
}

/** The parts of a configuration a booted (not yet set up) VM depends on: the cache key's. */
function bootedConfig(config: VmConfig): VmConfig {
  return { ...config, root: null, volumes: [], net: null, hostname: "", verbose: false };
}

/** The qemu engine. */
export class QemuEngine implements Engine {
  readonly name = "qemu";
  #opts: QemuEngineOptions;

  constructor(opts: QemuEngineOptions) {
    this.#opts = opts;
  }

  #log(config: VmConfig, o: BootOptions): (line: string) => void {
    return o.log ?? this.#opts.log ??
      (config.verbose ? (l: string) => console.error(`skiff: ${l}`) : () => {});
  }

  async boot(config: VmConfig, o: BootOptions = {}): Promise<RunningVm> {
    return (await this.#start(config, o)).vm;
  }

  /**
   * Starts a copy of a VM {@link RunningVm.snapshot} captured, with
   * `config`'s shares and network (default: the ones it had).
   */
  async restore(
    snapshot: SnapshotRef,
    config: VmConfig = snapshot.config,
    o: BootOptions = {},
  ): Promise<RunningVm> {
    if (snapshot.engine !== "qemu") {
      throw new ConfigError(`snapshot ${snapshot.dir} is of the ${snapshot.engine} engine`);
    }
    const booted = JSON.stringify(bootedConfig(snapshot.config));
    if (JSON.stringify(bootedConfig(config)) !== booted) {
      throw new ConfigError(
        "a restore may change the shares, network and host name, not the kernel, memory or vCPUs",
      );
    }
    return (await this.#start(config, o, snapshot)).vm;
  }

  /** Boots (or restores) and sets the session up; the console stays readable for a shell. */
  async #start(
    config: VmConfig,
    o: BootOptions,
    from?: SnapshotRef,
  ): Promise<{ vm: RunningVm; console: ConsoleWatch; process: QemuProcess }> {
    o.signal?.throwIfAborted();
    const t0 = performance.now();
    const log = this.#log(config, o);
    const mark = (event: string) => timeline(log, event);
    mark("qemu engine starting");
    QemuRamDir.sweep();
    sweepPidDirs(tempRoot(), SCRATCH_PREFIX);
    RamSpares.sweep();
    const kernel = await findKernel({ kernel: config.kernel, modules: config.modules });
    const image = qemuKernelImage(kernel);
    if (!Number.isInteger(config.memoryMiB) || config.memoryMiB < MIN_MEMORY_MIB) {
      throw new ConfigError(`--memory ${config.memoryMiB}: at least ${MIN_MEMORY_MIB} MiB`);
    }
    const dir = makePidDir(tempRoot(), SCRATCH_PREFIX);
    const ram = QemuRamDir.create();
    let vm: QemuProcess | null = null;
    let consoleWatch: ConsoleWatch | null = null;
    let capture: QemuCapture | null = null;
    // A restore's QEMU started before the cache lookup (hv/qemu/early_restore.ts).
    let earlyRestore: EarlyRestore | null = null;
    // The spare RAM copy for the next restore, once this VM's session is ready.
    let replenishing: Promise<void> | null = null;
    const release = async () => {
      await earlyRestore?.drop();
      if (vm) await vm.stop(1000).catch(() => {});
      // The entry is written from the RAM dir's staging: let it finish first.
      await capture?.published.catch((e) => warn(`snapshot not saved: ${(e as Error).message}`));
      await replenishing;
      ram.remove();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    };
    const warn = this.#opts.onWarning ?? ((l: string) => console.error(`skiff: ${l}`));
    try {
      const launch = (initrd: string): QemuStartOptions & { ramFile: string } => ({
        dir,
        machine: "q35",
        accel: this.#opts.accel,
        cpus: config.cpus,
        memoryMiB: config.memoryMiB,
        kernel: image,
        initrd,
        append: qemuKernelCmdline(config),
        ramFile: ram.ramFile,
        portNames: [],
        console: true,
        fs: [],
        binary: this.#opts.binary,
        timeline: mark,
      });
      const useCache = !from && (o.snapshot ?? this.#opts.snapshot) !== false;
      // A restore's QEMU reads no initrd: an empty file stands in for it.
      const placeholder = `${dir}/initrd.restore`;
      const restoreStart = () => {
        const { machine: _m, incoming: _i, ...start } = launch(placeholder);
        return start;
      };
      // The cache, once; without a location for it (no XDG_CACHE_HOME nor
      // HOME) the key step below says so and the VM boots without it.
      let cache: SnapshotCache | null = null;
      let cacheMissing: unknown = null;
      if (useCache) {
        try {
          cache = this.#opts.cache ?? new SnapshotCache(undefined, { warn });
        } catch (e) {
          cacheMissing = e;
        }
      }
      // Spare RAM copies of this cache's entries (snapshot/ram_spares.ts).
      const spares = cache ? new RamSpares(cache.root) : undefined;
      if (cache) {
        await Deno.writeFile(placeholder, new Uint8Array(0));
        earlyRestore = EarlyRestore.begin(
          { ...restoreStart(), ramFile: ram.ramFile },
          config.memoryMiB,
          log,
          spares,
        );
      }
      // The session's modules (FUSE server, vhost-user, devices, agent client:
      // about 80) load while QEMU starts, not before it is spawned.
      const sessionModule = import("./guest.ts");
      sessionModule.catch(() => {}); // awaited below
      let key = "";
      let source: Record<string, string> = {};
      // The initramfs identity, once computed for the key: a cold boot reuses it.
      let identity: string | null | undefined;
      if (useCache) {
        try {
          if (!cache) throw cacheMissing;
          const memoDir = dirname(cache.root);
          identity = await agentInitramfsIdentity(kernel, memoDir);
          const k = await qemuSnapshotKey({
            kernelPath: image,
            initramfs: identity === null
              // No identity (a bundle): key on the built bytes; the builder loads only then.
              ? await (await import("../../init/agent/initramfs.ts")).agentInitramfs(kernel)
              : encoder.encode(`identity:${identity}`),
            config: bootedConfig(config),
            launch: { ...launch("/initrd"), qmpSocket: "/q", consoleSocket: "/c", ports: [] },
            binary: this.#opts.binary,
            memoDir,
          });
          key = k.key;
          source = { ...k.source as Record<string, string>, kernel: kernel.version };
        } catch (e) {
          warn(`snapshot cache unavailable, booting without it: ${(e as Error).message ?? e}`);
          cache = null;
        }
      }
      const watch = (p: QemuProcess) => {
        consoleWatch = new ConsoleWatch(p.console!, config.verbose ? mirrorToStderr : undefined);
        return consoleWatch;
      };
      // The cache entry whose RAM the next restore will want: the one restored or captured.
      let entryOfRam: () => Promise<QemuEntry | null> = () => Promise.resolve(null);
      const restore = async (entry: QemuEntry) => {
        // QEMU reads the initrd only at a cold boot: a restore needs a file, not the image.
        const ramHolds = earlyRestore?.ramHolds;
        const started = earlyRestore?.take();
        if (!started) await Deno.writeFile(placeholder, new Uint8Array(0));
        const p = await restoreQemu(entry, {
          ...restoreStart(),
          signal: o.signal,
          started,
          ramHolds: started ? ramHolds : undefined,
        });
        vm = p;
        watch(p);
        log(`qemu: ${[this.#opts.binary ?? "qemu-system-x86_64", ...p.args].join(" ")}`);
        log(
          `qemu: restored snapshot ${entry.dir} (RAM ${
            started && ramHolds === entry.manifest.ram.digest
              ? "from a spare copy"
              : `copied${ramHolds ? ", the spare was another entry's" : ""}`
          })`,
        );
        if (!from) entryOfRam = () => Promise.resolve(entry);
        mark("snapshot restored (paused)");
        return p;
      };
      // A running VM's snapshot restored by its directory is used now: the
      // cache prunes by last use (a cache hit's lookup marked its entry).
      const restoreRef = async (dir: string) => {
        const p = await restore(readQemuEntry(dir));
        touchEntry(dir, cache?.root);
        return p;
      };
      const r = from
        ? { vm: await restoreRef(from.dir), from: "snapshot" as const, captured: false }
        : await bootCached({
          cache,
          key,
          warn,
          signal: o.signal,
          read: readQemuEntry,
          restore,
          boot: async () => {
            // The QEMU started for a restore cannot boot: stop it, and let the
            // cold boot's QEMU make its RAM file afresh.
            await earlyRestore?.drop();
            log(`qemu: cold boot (kernel ${kernel.version}, accel ${this.#opts.accel})`);
            const initrd = await agentInitramfsFile(kernel, {
              cacheDir: cache ? dirname(cache.root) : undefined,
              scratchDir: dir,
              identity,
            });
            log(`qemu: initramfs ${initrd.path} (${initrd.cached ? "cached" : "built"})`);
            const p = await QemuProcess.start(launch(initrd.path));
            vm = p;
            log(`qemu: ${[this.#opts.binary ?? "qemu-system-x86_64", ...p.args].join(" ")}`);
            const w = watch(p);
            await guestReady(p, w, READY_WAIT_MS, o.signal);
            log(`qemu: guest ready after ${Math.round(performance.now() - t0)} ms`);
            mark("guest READY");
            return p;
          },
          capture: async (p, entryDir) => {
            const c = capture = await captureQemu(p, entryDir, { source, signal: o.signal });
            entryOfRam = async () =>
              (await c.published) === "published" ? readQemuEntry(entryDir) : null;
            log(`qemu: captured the booted guest (paused ${Math.round(capture.pausedMs)} ms)`);
            return { published: c.published }; // written in the background (a Worker)
          },
        });
      const running = r.vm as QemuProcess;
      log(
        `qemu: ${r.from === "snapshot" ? "snapshot hit" : "snapshot miss"}${
          cache ? ` (key ${key.slice(0, 12)})` : " (cache off)"
        }`,
      );
      const { QemuSession } = await sessionModule;
      const session = await QemuSession.start(running, dir, config, {
        signal: o.signal,
        log,
        notice: o.notice,
        console: consoleWatch ?? undefined,
        resume: from !== undefined,
      });
      const origin = {
        from: r.from,
        captured: r.captured,
        key: cache ? key : null,
        readyMs: performance.now() - t0,
      };
      log(`qemu: ready for commands after ${Math.round(origin.readyMs)} ms`);
      mark("session ready (devices plugged, agent set up)");
      // Made now, beside the command rather than before the guest runs: a
      // restore that copies its RAM waits for the copy (hv/qemu/persist.ts).
      if (spares) {
        const into = spares;
        replenishing = entryOfRam().then(async (entry) => {
          if (!entry) return;
          await into.replenish(entry.ramPath, entry.manifest.ram.digest);
          log(`qemu: spare RAM copy of ${entry.dir} ready in ${into.dir}`);
        }).catch((e) => log(`qemu: no spare RAM copy: ${(e as Error).message ?? e}`));
      }
      let stopping: Promise<void> | null = null;
      const stop = () =>
        stopping ??= (async () => {
          // SIGKILL at once: the VM is thrown away (its RAM file too), and a
          // SIGTERM only has QEMU stop each vhost-user device politely (~12 ms).
          await running.stop(0).catch(() => {});
          await session.close();
          await release();
        })();
      // However QEMU ends (stopped, powered off, crashed), everything is released.
      const stopped = running.exited.then(() => stop());
      const agentVm = new AgentVm({
        engine: "qemu",
        origin,
        config,
        agent: session.agent,
        root: rootDirOf(config),
        machine: {
          stop,
          stopped,
          snapshot: async ({ dir: target, signal }) => {
            const into = target ? null : cache ?? new SnapshotCache(undefined, { warn });
            const entryKey = randomSnapshotKey();
            const entry = target ?? into!.pathOf(entryKey);
            await session.suspend({ signal });
            let pausedMs = 0;
            let failed: { error: unknown } | null = null;
            try {
              const c = await captureQemu(running, entry, {
                source: { ...source, vm: "running" },
                signal,
              });
              pausedMs = c.pausedMs;
              // The caller may restore it at once: it must be on disk first.
              if ((await c.published) === "exists") {
                throw new SkiffError(`snapshot ${entry} exists already; give another directory`);
              }
            } catch (error) {
              failed = { error };
            }
            // The VM goes on either way: a failed capture (a directory that
            // cannot be written) must not leave its devices unplugged.
            await session.resume({ signal, log, resume: true });
            if (failed) throw failed.error;
            into?.prune(entryKey); // one more entry in the cache: keep it within its limit
            log(`qemu: captured the running VM into ${entry} (paused ${Math.round(pausedMs)} ms)`);
            return { engine: "qemu", dir: entry, config };
          },
        },
      });
      return { vm: agentVm, console: consoleWatch!, process: running };
    } catch (e) {
      await release();
      throw asSkiffError(e, o.signal);
    }
  }

  /**
   * An interactive shell on the guest's serial console (/dev/ttyS0, a tty)
   * as its controlling terminal: the console's bytes go to `io.output` and
   * `io.input` to the console; resolves when the shell exits. The kernel's
   * console messages are turned down to emergencies first.
   */
  async shell(config: VmConfig, io: ConsoleIO, signal?: AbortSignal): Promise<ExitStatus> {
    const { vm, console: con, process } = await this.#start(config, { signal });
    await using _vm = vm;
    const writer = io.output.getWriter();
    con.tap = (b) => void writer.write(b).catch(() => {});
    const tty = process.console!;
    const stopInput = new AbortController();
    // Input that ends (a pipe or file, not a terminal) ends the shell as
    // Ctrl-D would: EOT on an empty line is end-of-file for a canonical tty.
    // Sent again until the shell is gone, since one that arrives before the
    // shell has set up its terminal can be flushed with the early input.
    let eot: ReturnType<typeof setInterval> | undefined;
    const sendEot = () => void tty.write(EOT).catch(() => {});
    io.input.pipeTo(
      new WritableStream({
        write: async (b) => void await tty.write(b),
        close: () => {
          sendEot();
          eot = setInterval(sendEot, EOT_REPEAT_MS);
        },
      }),
      { signal: stopInput.signal },
    ).catch(() => {});
    try {
      const size = io.size?.();
      const stty = size ? `stty rows ${size.rows} cols ${size.columns}; ` : "";
      // util-linux `setsid -c` makes ttyS0 the shell's controlling terminal,
      // so job control and Ctrl-C work as on a real console; `-w` waits for
      // it (the agent made this command a session leader, so setsid forks).
      const r = await vm.exec([
        "/bin/sh",
        "-c",
        `echo 1 >/proc/sys/kernel/printk; exec </dev/ttyS0 >/dev/ttyS0 2>&1; ${stty}` +
        "exec setsid -w -c /bin/sh -i",
      ], { env: { PATH: GUEST_PATH, HOME: "/", TERM: Deno.env.get("TERM") ?? "linux" }, signal });
      return r.signal !== null
        ? { kind: "signaled", signal: r.signal }
        : { kind: "exited", code: r.code };
    } finally {
      clearInterval(eot);
      stopInput.abort();
      con.tap = null;
      writer.releaseLock();
    }
  }
}

/**
 * An error of the QEMU layer (QEMU would not start, QMP refused, a hot-plug
 * or migration failed) as a {@link VmError}, as the kvm engine reports its
 * failures; skiff's own errors and an abort's reason pass through.
 */
function asSkiffError(e: unknown, signal?: AbortSignal): unknown {
  if (e instanceof SkiffError || (signal?.aborted && e === signal.reason)) return e;
  return new VmError(`qemu engine: ${(e as Error)?.message ?? e}`, { cause: e });
}
