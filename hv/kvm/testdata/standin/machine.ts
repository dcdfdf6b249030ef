/**
 * Test harness: the stand-in kernel on a machine from the kvm engine's
 * builder (UART, i8042, ACPI sleep, virtio console in slot 0) plus skiff's
 * virtio-vsock device behind the shared MMIO transport in slot 1 (window
 * 0xc000_1000, GSI 6), and an {@link AgentTransport} over that device, so
 * `AgentClient` talks to the stand-in exactly as it would to the real agent.
 * Snapshots are `captureHvVm` of it; {@link restoreStandin} constructs every
 * device from its record (the builder's from theirs, the vsock device from
 * its state and transport state).
 *
 * The kvm engine boots the same stand-in through `KvmEngine.boot`
 * (agent_kvm_test.ts); this harness is for what the engine keeps inside: the
 * device's host side (stream stats, raw connections, counters) and
 * snapshots restored outside the cache.
 *
 * @module
 */

import { MemoryLayout } from "../../../boot/layout.ts";
import type { RegionMemory } from "../../../memory.ts";
import { Vm, type VmStop } from "../../../vm.ts";
import type { VmConfig } from "../../../config.ts";
import { buildKvmMachine } from "../../builder.ts";
import { createVcpus } from "../../builder.ts";
import { devicesOf, disposer } from "../../device_manager.ts";
import { restoreDevices } from "../../device_records.ts";
import { VirtioVsock } from "../../../../devices/virtio/vsock/device.ts";
import type { VsockStream } from "../../../../devices/virtio/vsock/connection.ts";
import { VirtioMmioHost } from "../../../../devices/virtio/mmio_host.ts";
import type { MmioTransportState } from "../../../../devices/virtio/mmio_persist.ts";
import { captureHvVm, restoreHvVm } from "../../../../snapshot/hv_snapshot.ts";
import type { Persist } from "../../../../snapshot/vm_snapshot.ts";
import type { PublishResult } from "../../../../snapshot/store.ts";
import { AGENT_READY_MARKER, GUEST_CID } from "../../../../init/agent/protocol.ts";
import { AgentClient } from "../../../../init/agent/client.ts";
import type {
  AgentConnection,
  AgentListener,
  AgentTransport,
} from "../../../../init/agent/transport.ts";

/** The vsock device's slot: after the builder's virtio console. */
export const VSOCK_SLOT = 1;
/** Its id in snapshots. */
const VSOCK_NAME = "virtio-vsock";

/** A stand-in machine, built or restored, not started. */
export interface StandinMachine extends AsyncDisposable {
  vm: Vm;
  memory: RegionMemory;
  vsock: VirtioVsock;
  host: VirtioMmioHost;
  /** Everything the UART printed so far. */
  log(): string;
  /** Snapshot adapters of every device. */
  persist(): Map<string, Persist>;
  /** Guest errors the vsock transport reported (DEVICE_NEEDS_RESET causes). */
  errors: unknown[];
}

/** Options of {@link buildStandin} and {@link restoreStandin}. */
export interface StandinOptions {
  /** Guest RAM (MiB): the files written in the guest live in it. */
  memoryMiB: number;
  /** UART bytes as they arrive. */
  onConsole?: (bytes: Uint8Array) => void;
}

function consoleLog(opts: StandinOptions) {
  let text = "";
  const dec = new TextDecoder();
  return {
    onConsole: (b: Uint8Array) => {
      text += dec.decode(b, { stream: true });
      opts.onConsole?.(b);
    },
    log: () => text,
  };
}

/** Adds the vsock device (new, or from its saved record) at {@link VSOCK_SLOT}. */
function addVsock(
  vm: Vm,
  memory: RegionMemory,
  cleanups: (() => void | Promise<void>)[],
  saved?: { transport: MmioTransportState; state: unknown },
) {
  const base = MemoryLayout.virtioMmioBase(VSOCK_SLOT);
  const gsi = 5 + VSOCK_SLOT;
  const vsock = new VirtioVsock({ guestCid: GUEST_CID });
  if (saved) vsock.restore(saved.state);
  const errors: unknown[] = [];
  const host = new VirtioMmioHost(vsock, memory, {
    irq: () => vm.pulseIrq(gsi),
    onDeviceError: (e) => errors.push(e),
    state: saved?.transport,
  });
  vm.addDevice(host.spec(VSOCK_NAME, base, gsi));
  vm.onDeviceMessage(VSOCK_NAME, (m) => host.handle(m));
  const io = host.attachIoeventfds(vm, base);
  cleanups.push(async () => {
    vsock.reset();
    await io[Symbol.asyncDispose]();
  });
  const persist: Persist = {
    save: () => ({ transport: host.save(), state: vsock.save() }),
    restore: () => host.resumeAfterRestore(),
  };
  return { vsock, host, errors, persist };
}

/** A cold-boot machine for the stand-in kernel at `kernelPath` (not started). */
export async function buildStandin(
  kernelPath: string,
  opts: StandinOptions,
): Promise<StandinMachine> {
  const out = consoleLog(opts);
  const config: VmConfig = {
    kernel: kernelPath,
    cpus: 1,
    memoryMiB: opts.memoryMiB,
    cmdlineExtra: "",
    root: null,
    volumes: [],
    net: null,
    hostname: "standin",
    verbose: false,
  };
  const m = await buildKvmMachine(config, { onConsole: out.onConsole });
  const cleanups: (() => void | Promise<void>)[] = [];
  try {
    const v = addVsock(m.vm, m.memory, cleanups);
    return {
      vm: m.vm,
      memory: m.memory,
      vsock: v.vsock,
      host: v.host,
      errors: v.errors,
      log: out.log,
      persist: () => new Map([...m.persist(), [VSOCK_NAME, v.persist]]),
      [Symbol.asyncDispose]: async () => {
        await disposer(cleanups)();
        await m[Symbol.asyncDispose]();
      },
    };
  } catch (e) {
    await disposer(cleanups)();
    await m[Symbol.asyncDispose]();
    throw e;
  }
}

/** Captures a paused stand-in machine into snapshot directory `dir`. */
export function captureStandin(m: StandinMachine, dir: string): Promise<PublishResult> {
  return captureHvVm(m.vm, dir, { devices: m.persist(), source: { test: "standin" } });
}

/** A machine restored from snapshot `dir` (memory copy-on-write; not started). */
export async function restoreStandin(dir: string, opts: StandinOptions): Promise<StandinMachine> {
  const out = consoleLog(opts);
  const cleanups: (() => void | Promise<void>)[] = [];
  const dispose = disposer(cleanups);
  let parts: ReturnType<typeof addVsock> | null = null;
  let builderDevices: Map<string, Persist> | null = null;
  try {
    const r = await restoreHvVm(dir, (ctx) => {
      const vm = Vm.create({ memory: ctx.memory });
      try {
        const m = ctx.snapshot.manifest;
        createVcpus(vm, m.vcpus.length, !m.vcpus.every((v) => v.cpuid));
        const { [VSOCK_NAME]: saved, ...records } = m.devices as Record<string, unknown>;
        const dm = restoreDevices(vm, ctx.memory, records, dir, {
          backends: { fs: () => null, net: () => null },
          cleanups,
          onConsole: out.onConsole,
        });
        builderDevices = devicesOf(dm).persist();
        parts = addVsock(
          vm,
          ctx.memory,
          cleanups,
          saved as { transport: MmioTransportState; state: unknown },
        );
        return { vm, devices: new Map([...builderDevices, [VSOCK_NAME, parts.persist]]) };
      } catch (e) {
        void vm.close();
        throw e;
      }
    });
    cleanups.unshift(() => r.memory[Symbol.dispose]());
    cleanups.push(() => r.vm.close());
    const v = parts! as ReturnType<typeof addVsock>;
    const devices = builderDevices! as Map<string, Persist>;
    return {
      vm: r.vm,
      memory: r.memory,
      vsock: v.vsock,
      host: v.host,
      errors: v.errors,
      log: out.log,
      persist: () => new Map([...devices, [VSOCK_NAME, v.persist]]),
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/**
 * Waits until the UART shows the agent's READY marker; rejects when the VM
 * stops first (with its log) or `signal` aborts.
 */
export async function waitReady(
  m: StandinMachine,
  stopped: Promise<VmStop>,
  signal: AbortSignal,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        const poll = () => {
          if (m.log().includes(AGENT_READY_MARKER)) return resolve();
          if (signal.aborted) return reject(signal.reason);
          timer = setTimeout(poll, 5);
        };
        poll();
      }),
      stopped.then((s) => {
        throw new Error(`the stand-in stopped before READY (${JSON.stringify(s)}):\n${m.log()}`);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** An {@link AgentTransport} over the vsock device's host side. */
export class VsockTransport implements AgentTransport {
  #vsock: VirtioVsock;
  #nextPort = 20000;
  /** Every stream it handed out (tests look at their flow-control stats). */
  readonly streams: VsockStream[] = [];
  /** The host ports of its listeners, in order. */
  readonly listened: number[] = [];

  constructor(vsock: VirtioVsock) {
    this.#vsock = vsock;
  }

  async connect(guestPort: number, signal?: AbortSignal): Promise<AgentConnection> {
    const s = await this.#vsock.connect(guestPort, { signal });
    this.streams.push(s);
    return s;
  }

  listen(hostPort?: number): Promise<AgentListener> {
    let port = hostPort ?? this.#nextPort++;
    for (;;) {
      try {
        const l = this.#vsock.listen(port);
        this.listened.push(port);
        const streams = this.streams;
        return Promise.resolve({
          port,
          async accept(signal?: AbortSignal): Promise<AgentConnection> {
            signal?.throwIfAborted();
            const onAbort = () => l.close();
            signal?.addEventListener("abort", onAbort, { once: true });
            try {
              const s = await l.accept();
              signal?.throwIfAborted();
              if (!s) throw new Error(`vsock listener on host port ${port} was closed`);
              streams.push(s);
              return s;
            } finally {
              signal?.removeEventListener("abort", onAbort);
            }
          },
          close: () => l.close(),
        });
      } catch (e) {
        if (hostPort !== undefined) return Promise.reject(e);
        port = this.#nextPort++; // taken: try the next
      }
    }
  }
}

/** A started stand-in with an agent client (cold-booted to READY, or restored). */
export interface StandinSession extends AsyncDisposable {
  machine: StandinMachine;
  client: AgentClient;
  transport: VsockTransport;
  /** Settles when the VM stops. */
  stopped: Promise<VmStop>;
}

/**
 * Starts `m` (built by {@link buildStandin}: waits for READY; restored: the
 * agent is already past it) and gives a client; disposing stops the VM and
 * releases the machine.
 */
export async function startSession(
  m: StandinMachine,
  o: { cold: boolean; signal: AbortSignal },
): Promise<StandinSession> {
  try {
    await m.vm.start();
    const stopped = m.vm.wait();
    stopped.catch(() => {});
    if (o.cold) await waitReady(m, stopped, o.signal);
    const transport = new VsockTransport(m.vsock);
    return {
      machine: m,
      client: new AgentClient(transport),
      transport,
      stopped,
      [Symbol.asyncDispose]: () => m[Symbol.asyncDispose](),
    };
  } catch (e) {
    await m[Symbol.asyncDispose]();
    throw e;
  }
}
