/**
 * The kvm engine: skiff's own VMM over /dev/kvm — the orchestration. A run
 * plans the machine (plan.ts), restores it from the snapshot cache
 * (persist.ts) or builds and boots it (builder.ts, device_manager.ts),
 * captures it at the init's READY, then runs the workload (workload.ts).
 *
 * {@link KvmEngine.run} runs a workload in one of two ways:
 *
 * - **mailbox mode** (default): the initramfs carries the mailbox-mode init
 *   (`init/mailbox_mode.ts`, started with `rdinit=`) and a boot record that
 *   does not contain the command. With the snapshot cache on (default), a
 *   miss boots to the init's READY doorbell, captures the VM into the cache
 *   and carries on in the same VM; a hit restores the snapshot (memory mapped
 *   copy-on-write) instead of booting. Either way the command record is then
 *   sent through the mailbox and its exit status is the mailbox result.
 *   `snapshot: false` (`--no-snapshot`) boots the same way without touching
 *   the cache (`snapshot/boot_cached.ts`).
 * - **one-shot mode** (`init: "one-shot"`): the command record is in the
 *   initramfs and the status comes on the `skiff.status` console port.
 *
 * On a host whose /dev/kvm emulates guest code (the kvm_pvm module, see
 * DESIGN.md) the command line gets `noxsave clearcpuid=cx16`, and the kernel
 * still stops with KVM_EXIT_INTERNAL_ERROR early in boot; the run then
 * rejects with a one-line `VmExitError` saying guest code is emulated,
 * with the exit reason, RIP and instruction bytes — never a hang, and no
 * cache entry is written.
 *
 * @module
 */

import { dirname } from "node:path";
import { guestInitramfs, initConfigFor } from "../engine/guest_init.ts";
import { findKernel } from "../kernel/cache.ts";
import { ConfigError, VmError, VmTimeoutError } from "../errors.ts";
import type { BootOptions, Engine, RunningVm, SnapshotRef, WorkloadIO } from "../engine/types.ts";
import { bootAgentVm, restoreAgentVm } from "./agent_boot.ts";
import { type ExitStatus, type VmConfig, type Workload } from "../config.ts";
import { MAILBOX_RDINIT, mailboxInitramfs } from "../../init/mailbox_mode.ts";
import { mailboxInitramfsIdentity } from "../engine/init_identity.ts";
import { recordFor } from "../../init/config.ts";
import { SnapshotCache } from "../../snapshot/cache.ts";
import { bootCached } from "../../snapshot/boot_cached.ts";
import { captureHvVm } from "../../snapshot/hv_snapshot.ts";
import { vmSnapshotKey } from "../../snapshot/vm_key.ts";
import { type StateValue } from "../../snapshot/codec.ts";
import { EMULATED_NOTE, isEmulatedKvm } from "./emulated.ts";
import { KVM_VMM_VERSION, MachineOptions, planDevices, planMachine } from "./plan.ts";
import { KvmDevices } from "./device_manager.ts";
import { buildKvmMachine, buildPlanned, KvmMachine } from "./builder.ts";
import { restorePlanned } from "./persist.ts";
import { serveWorkload } from "./workload.ts";
import { abortRace } from "../abort.ts";
import { StopWatch } from "./stop_watch.ts";

/** How a run's VM came to be (see {@link KvmEngineOptions.onSnapshot}). */
export interface SnapshotOutcome {
  /** `snapshot`: restored from the cache; `boot`: cold-booted. */
  from: "snapshot" | "boot";
  /** Whether this run published a new cache entry. */
  captured: boolean;
  /** The cache key, or null with the cache off. */
  key: string | null;
  /** Milliseconds from the start of the run until the init was ready for the command. */
  readyMs: number;
}
/** Options of {@link KvmEngine}. */
export interface KvmEngineOptions {
  /** Kernel log (UART output) goes here as it arrives; default: stderr when `verbose`. */
  onKernelLog?: (bytes: Uint8Array) => void;
  /**
   * Called once the guest init reports ready (before the command is sent),
   * with the VM paused, after a cold boot in mailbox mode (after the
   * snapshot capture, if any). Not reached on hosts where the guest stops
   * inside the kernel.
   */
  onReady?: (machine: KvmDevices) => Promise<void> | void;
  /**
   * Receives the one-line note that guest code is emulated on this host
   * ({@link EMULATED_NOTE}) when a run starts there; default: stderr; null: silent.
   */
  onNote?: ((line: string) => void) | null;
  /**
   * `--snapshot`/`--no-snapshot`: use the snapshot cache (default true;
   * mailbox mode only). With false the VM cold-boots and nothing in the
   * cache is read or written.
   */
  snapshot?: boolean;
  /** The snapshot cache (default: `SnapshotCache` at `${XDG_CACHE_HOME:-~/.cache}/skiff/snapshots`). */
  cache?: SnapshotCache;
  /** One-line cache warnings (bad entry deleted, capture failed); default: stderr. */
  onWarning?: (line: string) => void;
  /** Told where each run's VM came from (tests, `--verbose`). */
  onSnapshot?: (outcome: SnapshotOutcome) => void;
  /** How the init gets the command: `mailbox` (default) or `one-shot`. */
  init?: "mailbox" | "one-shot";
}
/** The mailbox's longest wait for READY after a cold boot starts (a kernel boots in seconds). */
const READY_TIMEOUT_MS = 5 * 60_000;
/** The kvm engine. */
export class KvmEngine implements Engine {
  readonly name = "kvm";
  #opts: KvmEngineOptions;

  constructor(opts: KvmEngineOptions = {}) {
    this.#opts = opts;
  }

  /**
   * Boots the guest agent (or restores it from the snapshot cache) and sets
   * the session up: hv/kvm/agent_boot.ts.
   */
  boot(config: VmConfig, o: BootOptions = {}): Promise<RunningVm> {
    const warn = this.#opts.onWarning ?? ((l: string) => console.error(`skiff: ${l}`));
    const log = o.log ?? (config.verbose ? (l: string) => console.error(`skiff: ${l}`) : undefined);
    if (this.#opts.onNote !== null && isEmulatedKvm()) {
      (this.#opts.onNote ?? ((l: string) => console.error(l)))(EMULATED_NOTE);
    }
    return bootAgentVm(config, {
      ...o,
      log,
      snapshot: o.snapshot ?? this.#opts.snapshot,
      cache: this.#opts.cache,
      warn,
      onConsole: this.#opts.onKernelLog ??
        (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : undefined),
    });
  }

  /**
   * Starts a copy of a running VM that `vm.snapshot()` captured (it goes on
   * with the same shares and network; its wall clock is set again).
   */
  restore(
    snapshot: SnapshotRef,
    config: VmConfig = snapshot.config,
    o: BootOptions = {},
  ): Promise<RunningVm> {
    if (snapshot.engine !== "kvm") {
      return Promise.reject(
        new ConfigError(`snapshot ${snapshot.dir} is of the ${snapshot.engine} engine`),
      );
    }
    const warn = this.#opts.onWarning ?? ((l: string) => console.error(`skiff: ${l}`));
    return restoreAgentVm(snapshot, config, {
      ...o,
      log: o.log ?? (config.verbose ? (l: string) => console.error(`skiff: ${l}`) : undefined),
      cache: this.#opts.cache,
      warn,
      onConsole: this.#opts.onKernelLog ??
        (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : undefined),
    });
  }

  #machineOptions(config: VmConfig): MachineOptions {
    return {
      onConsole: this.#opts.onKernelLog ??
        (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : undefined),
      progress: config.verbose ? (l) => console.error(l) : undefined,
    };
  }

  /** Builds (but does not start) a one-shot machine for `config` with the workload's devices. */
  async build(config: VmConfig, workload?: Workload): Promise<KvmMachine> {
    // The initramfs carries skiff's init and the command record (one-shot mode).
    const initrd = workload
      ? await guestInitramfs(
        await findKernel({ kernel: config.kernel, modules: config.modules }),
        config,
        workload,
      )
      : undefined;
    return await buildKvmMachine(config, { ...this.#machineOptions(config), initrd });
  }

  async run(
    config: VmConfig,
    workload: Workload,
    io: WorkloadIO,
    signal?: AbortSignal,
  ): Promise<ExitStatus> {
    if (workload.argv.length === 0) throw new ConfigError("no command to run");
    signal?.throwIfAborted();
    const t0 = performance.now();
    try {
      if (this.#opts.init === "one-shot") {
        await using m = await this.build(config, workload);
        return await serveWorkload(m, io, signal, async (stopped) => {
          this.#note(m);
          await m.vm.start();
          stopped.set(m.vm.wait());
          return { kind: "status" };
        });
      }
      return await this.#runMailbox(config, workload, io, signal, t0);
    } catch (e) {
      // Guest stops arrive explained already (StopWatch.rejection).
      const err = e;
      if (err instanceof VmError || err instanceof ConfigError) throw err;
      if (signal?.aborted) {
        const r = signal.reason;
        if (r instanceof VmError) throw r;
        if (r instanceof DOMException && r.name === "TimeoutError") {
          throw new VmTimeoutError(Math.round((performance.now() - t0) / 100) / 10);
        }
        throw new VmError(`run aborted: ${(r as Error)?.message ?? r}`);
      }
      throw new VmError(`kvm engine failed: ${(e as Error)?.message ?? e}`, { cause: e });
    }
  }

  #note(m: KvmDevices): void {
    if (!m.emulated) return;
    const note = this.#opts.onNote === undefined
      ? (l: string) => console.error(l)
      : this.#opts.onNote;
    note?.(EMULATED_NOTE);
  }

  /** Mailbox mode: restore from or boot (and capture into) the cache, then send the command. */
  async #runMailbox(
    config: VmConfig,
    workload: Workload,
    io: WorkloadIO,
    signal: AbortSignal | undefined,
    t0: number,
  ): Promise<ExitStatus> {
    const mopts: MachineOptions = {
      ...this.#machineOptions(config),
      mailbox: true,
      cmdline: MAILBOX_RDINIT,
    };
    const plan = await planMachine(config, mopts);
    const initConfig = initConfigFor(config, workload);
    // Built only for a cold boot: a restore needs just its identity for the key.
    let initrd: Promise<Uint8Array> | null = null;
    const initramfs = () => (initrd ??= mailboxInitramfs(plan.kernel, initConfig));
    const useCache = this.#opts.snapshot ?? true;
    const warn = this.#opts.onWarning ?? ((l: string) => console.error(`skiff: ${l}`));
    let cache: SnapshotCache | null = null;
    let vmKey: Awaited<ReturnType<typeof vmSnapshotKey>> | null = null;
    if (useCache) {
      // Without a usable cache (no HOME, unreadable kernel for hashing…) the run still goes on.
      try {
        cache = this.#opts.cache ?? new SnapshotCache(undefined, { warn });
        const memoDir = dirname(cache.root);
        const identity = await mailboxInitramfsIdentity(plan.kernel, initConfig, memoDir);
        vmKey = await vmSnapshotKey({
          kernelPath: plan.image.path,
          // The initramfs by what it is made from (no build needed), else by its bytes.
          initramfs: identity === null
            ? await initramfs()
            : new TextEncoder().encode(`identity:${identity}`),
          cmdline: plan.cmdline,
          config,
          devices: planDevices(plan),
          vmmVersion: KVM_VMM_VERSION,
          // The kernel's content-hash memo sits beside the snapshots (skiff's cache dir by default).
          memoDir,
        });
      } catch (e) {
        warn(`snapshot cache unavailable, booting without it: ${(e as Error).message ?? e}`);
        cache = null;
        vmKey = null;
      }
    }
    const stopped = new StopWatch();
    using abort = abortRace(signal);
    const aborted = abort.promise;
    try {
      const r = await bootCached<KvmDevices & AsyncDisposable>({
        cache,
        key: vmKey?.key ?? "",
        warn,
        restore: (snap) => restorePlanned(plan, snap.dir, mopts),
        boot: async () => {
          const m = await buildPlanned(plan, { ...mopts, initrd: await initramfs() });
          try {
            this.#note(m);
            await m.vm.start();
            stopped.set(m.vm.wait());
            const mb = m.mailbox!;
            // Raced with the stop (not mb.failWhen) so a guest stop is the explained one-liner.
            await Promise.race([
              mb.ready({ signal, timeoutMs: READY_TIMEOUT_MS }),
              stopped.rejection(m),
              aborted,
            ]);
            mb.wake(); // release the init's blocked wait read so the pause is immediate
            await m.vm.pause();
            return m;
          } catch (e) {
            await m[Symbol.asyncDispose]();
            throw e;
          }
        },
        capture: (m, dir) =>
          captureHvVm(m.vm, dir, {
            devices: m.persist(),
            source: { ...(vmKey?.source ?? {}), engine: "kvm" } as Record<string, StateValue>,
          }),
      });
      await using m = r.vm;
      return await serveWorkload(m, io, signal, async () => {
        if (r.from === "boot") {
          await this.#opts.onReady?.(m);
          m.vm.resume();
        } else {
          await m.vm.start();
          stopped.set(m.vm.wait());
        }
        await Promise.race([m.mailbox!.ready({ signal }), stopped.rejection(m), aborted]);
        this.#opts.onSnapshot?.({
          from: r.from,
          captured: r.captured,
          key: vmKey?.key ?? null,
          readyMs: performance.now() - t0,
        });
        if (config.verbose) {
          console.error(
            `skiff: ${r.from === "snapshot" ? "restored snapshot" : "booted"}` +
              `${r.captured ? " and saved a snapshot" : ""}; ready after ${
                Math.round(performance.now() - t0)
              } ms`,
          );
        }
        const record = recordFor(initConfig, []);
        return { kind: "mailbox", result: m.mailbox!.runCommand(record, { signal }) };
      }, stopped);
    } finally {
      stopped.dispose();
    }
  }
}
