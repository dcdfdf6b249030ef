/**
 * The kvm engine's boot, the same protocol as the qemu engine's: the guest
 * agent (init/agent) is the init; the machine has a vsock device, one
 * virtio-fs device (the share mux) and a NIC, none of them tied to a run.
 * A boot restores the machine from the snapshot cache or cold-boots it to
 * the agent's READY marker on ttyS0 and captures it there; then the session
 * attaches the run's shares to the mux and its network stack to the NIC,
 * starts (or resumes) the vCPUs, and sets the guest up through the agent.
 *
 * @module
 */

import { dirname } from "node:path";
import { FuseServer } from "../../devices/fuse/server.ts";
import { ShareMux } from "../../devices/fuse/mux.ts";
import type { NetStack } from "../../devices/net/service.ts";
import { startNetStack } from "../engine/net_stack.ts";
import { attachVirtioNet } from "../../devices/net/virtio.ts";
import { AgentClient } from "../../init/agent/client.ts";
import { agentInitramfs } from "../../init/agent/initramfs.ts";
import { AGENT_READY_MARKER } from "../../init/agent/protocol.ts";
import { initFailure } from "../engine/init_failure.ts";
import { randomSnapshotKey, SnapshotCache, touchEntry } from "../../snapshot/cache.ts";
import { bootCached } from "../../snapshot/boot_cached.ts";
import { captureHvVm } from "../../snapshot/hv_snapshot.ts";
import { vmSnapshotKey } from "../../snapshot/vm_key.ts";
import type { StateValue } from "../../snapshot/codec.ts";
import type { VmConfig } from "../config.ts";
import { ConfigError, VmError } from "../errors.ts";
import { abortRace } from "../abort.ts";
import { AgentVm } from "../engine/agent_vm.ts";
import { agentInitramfsIdentity } from "../engine/init_identity.ts";
import { attachShares, MUX_TAG, rootDirOf, sessionSetup } from "../engine/session.ts";
import type { BootOptions, RunningVm, SnapshotRef } from "../engine/types.ts";
import { VsockAgentTransport, vsockReady } from "../engine/vsock_transport.ts";
import type { DeviceBackends } from "./backends.ts";
import { buildPlanned } from "./builder.ts";
import type { KvmDevices } from "./device_manager.ts";
import { explainExit } from "./emulated.ts";
import { restorePlanned } from "./persist.ts";
import { KVM_VMM_VERSION, type MachineOptions, planDevices, planMachine } from "./plan.ts";

/** Bound on a cold boot reaching READY (only catches hangs; emulated KVM boots slowly). */
const READY_WAIT_MS = 10 * 60_000;

/** What {@link bootAgentVm} needs from the engine. */
export interface AgentBootOptions extends BootOptions {
  /** Kernel log (UART) as it arrives. */
  onConsole?: (bytes: Uint8Array) => void;
  /** The snapshot cache (default: skiff's). */
  cache?: SnapshotCache;
  /** One-line cache warnings. */
  warn: (line: string) => void;
  /** Emulated-KVM detection override (tests). */
  emulated?: boolean;
}

/** The parts of a configuration the booted machine depends on (the cache key's). */
function bootedConfig(config: VmConfig): VmConfig {
  return { ...config, root: null, volumes: [], net: null, hostname: "", verbose: false };
}

/** Watches the UART text for the agent's READY marker (or its boot error). */
class ReadyWatch {
  #seen = "";
  #resolve!: () => void;
  #reject!: (e: Error) => void;
  readonly promise = new Promise<void>((res, rej) => {
    this.#resolve = res;
    this.#reject = rej;
  });
  #dec = new TextDecoder();

  constructor() {
    this.promise.catch(() => {});
  }

  feed(b: Uint8Array): void {
    this.#seen = (this.#seen + this.#dec.decode(b, { stream: true })).slice(-8192);
    if (this.#seen.includes(AGENT_READY_MARKER)) this.#resolve();
    const failed = initFailure(this.#seen);
    if (failed) this.#reject(failed);
  }
}

/** The builder's progress lines (`skiff: loading kernel …`) through `log`, which adds its own prefix. */
function progressTo(log: (line: string) => void): (line: string) => void {
  return (line) => log(line.replace(/^skiff: /, ""));
}

/** Boots (or restores) a kvm-engine VM for `config` and sets its session up. */
export async function bootAgentVm(config: VmConfig, o: AgentBootOptions): Promise<RunningVm> {
  o.signal?.throwIfAborted();
  const t0 = performance.now();
  const log = o.log ?? (() => {});
  const ready = new ReadyWatch();
  const mux = new ShareMux();
  const fuse = new FuseServer(mux);
  const backends: DeviceBackends = {
    fs: (tag) => (tag === MUX_TAG ? fuse : null),
    net: () => null, // attached per session below
  };
  const mopts: MachineOptions = {
    agent: true,
    backends,
    emulated: o.emulated,
    onConsole: (b) => {
      ready.feed(b);
      o.onConsole?.(b);
    },
    progress: config.verbose ? progressTo(log) : undefined,
  };
  const plan = await planMachine(bootedConfig(config), mopts);
  let cache: SnapshotCache | null = null;
  let key = "";
  let source: Record<string, StateValue> = {};
  if (o.snapshot !== false) {
    try {
      cache = o.cache ?? new SnapshotCache(undefined, { warn: o.warn });
      const memoDir = dirname(cache.root);
      const identity = await agentInitramfsIdentity(plan.kernel, memoDir);
      const k = await vmSnapshotKey({
        kernelPath: plan.image.path,
        initramfs: identity === null
          ? await agentInitramfs(plan.kernel)
          : new TextEncoder().encode(`identity:${identity}`),
        cmdline: plan.cmdline,
        config: bootedConfig(config),
        devices: planDevices(plan),
        vmmVersion: KVM_VMM_VERSION,
        memoDir,
      });
      key = k.key;
      source = { ...k.source, engine: "kvm" } as Record<string, StateValue>;
    } catch (e) {
      o.warn(`snapshot cache unavailable, booting without it: ${(e as Error).message ?? e}`);
      cache = null;
    }
  }
  using aborted = abortRace(o.signal);
  const r = await bootCached<KvmDevices & AsyncDisposable>({
    cache,
    key,
    warn: o.warn,
    signal: o.signal,
    restore: (snap) => restorePlanned(plan, snap, mopts),
    boot: async () => {
      const m = await buildPlanned(plan, { ...mopts, initrd: await agentInitramfs(plan.kernel) });
      try {
        await m.vm.start();
        const stopped = m.vm.wait().then((s): never => {
          throw new VmError(`the guest stopped (${s.kind}) before its init was ready`);
        }, (e): never => {
          throw explainExit(e, m.log(), m.emulated);
        });
        stopped.catch(() => {});
        const deadline = AbortSignal.timeout(READY_WAIT_MS);
        using late = abortRace(deadline);
        try {
          await Promise.race([ready.promise, stopped, late.promise, aborted.promise]);
        } catch (e) {
          if (deadline.aborted && e === deadline.reason) {
            throw new VmError("the guest was not ready in time");
          }
          throw e;
        }
        await m.vm.pause();
        return m;
      } catch (e) {
        await m[Symbol.asyncDispose]();
        throw e;
      }
    },
    capture: async (m, dir) => {
      await captureHvVm(m.vm, dir, { devices: m.persist(), source });
    },
  });
  return await startSession(r.vm, config, {
    ...o,
    resumed: r.from === "boot",
    attach: true,
    setup: true,
    origin: { from: r.from, captured: r.captured, key: cache ? key : null, t0 },
    cache,
    source,
    mux,
  });
}

/** What {@link startSession} needs beyond the machine and the configuration. */
interface SessionOptions extends Omit<AgentBootOptions, "cache"> {
  /** The machine is paused after a boot (resume it) rather than restored and not started. */
  resumed: boolean;
  /** Attach `config`'s shares to the mux now (a restore of a running VM attached them first). */
  attach: boolean;
  /** Set the session up (mounts, network, host name); a restored running VM only gets its clock. */
  setup: boolean;
  origin: { from: "boot" | "snapshot"; captured: boolean; key: string | null; t0: number };
  cache: SnapshotCache | null;
  source: Record<string, StateValue>;
  mux: ShareMux;
}

/**
 * Attaches the run's network to the NIC (and its shares to the mux), starts
 * or resumes the vCPUs, reaches the agent over vsock and sets the session up.
 */
async function startSession(
  m: KvmDevices & AsyncDisposable,
  config: VmConfig,
  o: SessionOptions,
): Promise<RunningVm> {
  const log = o.log ?? (() => {});
  let stack: NetStack | null = null;
  let detachShares: (() => void) | null = null;
  let detachNet: (() => void) | null = null;
  let stopping: Promise<void> | null = null;
  const stop = () =>
    stopping ??= (async () => {
      await m.vm.stop().catch(() => {});
      detachNet?.();
      await stack?.close().catch(() => {});
      await m[Symbol.asyncDispose]();
      detachShares?.();
    })();
  using aborted = abortRace(o.signal);
  try {
    if (o.attach) detachShares = attachShares(o.mux, config);
    if (config.net) {
      // Binds the --publish ports now: a taken one fails before the guest runs.
      stack = startNetStack(config.net);
      await stack.ready;
      // Port 0's host port is the OS's pick: a notice; --verbose logs every rule's.
      for (const l of stack.publishLines(config.verbose)) (config.verbose ? log : o.notice)?.(l);
      detachNet = attachVirtioNet(stack, m.net!);
    }
    if (o.resumed) m.vm.resume();
    else await m.vm.start();
    const died = m.vm.wait().then((s): never => {
      throw new VmError(`the guest stopped (${s.kind}) before its agent answered`);
    }, (e): never => {
      throw explainExit(e, m.log(), m.emulated);
    });
    died.catch(() => {});
    const stopWait = Promise.race([died, aborted.promise]);
    const vsock = m.vsock!;
    await vsockReady(vsock, stopWait);
    const agent = new AgentClient(new VsockAgentTransport(vsock));
    const setup = o.setup ? sessionSetup(config) : { clockMs: Date.now() };
    await Promise.race([agent.setup(setup, { signal: o.signal }), stopWait]);
    const origin = {
      from: o.origin.from,
      captured: o.origin.captured,
      key: o.origin.key,
      readyMs: performance.now() - o.origin.t0,
    };
    log(
      `kvm: ${origin.from === "snapshot" ? "snapshot hit" : "snapshot miss"}; ready after ${
        Math.round(origin.readyMs)
      } ms`,
    );
    const stopped = m.vm.wait().then(() => stop(), async (e) => {
      await stop();
      throw explainExit(e, m.log(), m.emulated);
    });
    return new AgentVm({
      engine: "kvm",
      origin,
      config,
      agent,
      root: rootDirOf(config),
      machine: {
        stop,
        stopped,
        snapshot: async ({ dir }) => {
          const into = dir ? null : o.cache ?? new SnapshotCache(undefined, { warn: o.warn });
          const entryKey = randomSnapshotKey();
          const target = dir ?? into!.pathOf(entryKey);
          await m.vm.pause();
          try {
            await captureHvVm(m.vm, target, {
              devices: m.persist(),
              source: { ...o.source, vm: "running" },
            });
          } finally {
            m.vm.resume();
          }
          into?.prune(entryKey); // one more entry in the cache: keep it within its limit
          return { engine: "kvm", dir: target, config };
        },
      },
    });
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The shares and network of a configuration, as a restore must find them again. */
function attached(config: VmConfig): string {
  return JSON.stringify({ root: config.root, volumes: config.volumes, net: config.net });
}

/**
 * Restores a running VM captured by `vm.snapshot()`: its devices are
 * constructed from the snapshot (the FUSE server's node table included, so
 * the guest's mounts go on), with the same shares attached first; the
 * guest's wall clock is set again.
 */
export async function restoreAgentVm(
  snapshot: SnapshotRef,
  config: VmConfig,
  o: AgentBootOptions,
): Promise<RunningVm> {
  if (attached(config) !== attached(snapshot.config)) {
    throw new ConfigError(
      "the kvm engine restores a VM with the shares and network it was captured with " +
        "(its guest keeps them mounted)",
    );
  }
  const t0 = performance.now();
  const mux = new ShareMux();
  const detachShares = attachShares(mux, config);
  const fuse = new FuseServer(mux);
  const mopts: MachineOptions = {
    agent: true,
    backends: { fs: (tag) => (tag === MUX_TAG ? fuse : null), net: () => null },
    emulated: o.emulated,
    onConsole: o.onConsole,
    progress: config.verbose && o.log ? progressTo(o.log) : undefined,
  };
  try {
    const plan = await planMachine(bootedConfig(config), mopts);
    const m = await restorePlanned(plan, snapshot.dir, mopts);
    touchEntry(snapshot.dir, o.cache?.root); // used now: the cache prunes by last use
    const vm = await startSession(m, config, {
      ...o,
      resumed: false,
      attach: false,
      setup: false,
      origin: { from: "snapshot", captured: false, key: null, t0 },
      cache: o.cache ?? null,
      source: {},
      mux,
    });
    vm.stopped.finally(detachShares).catch(() => {});
    return vm;
  } catch (e) {
    detachShares();
    throw e;
  }
}
