/**
 * One qemu-engine VM's session from READY on: the guest's devices are
 * hot-plugged into the (paused) QEMU — skiff's vsock device and its one
 * virtio-fs device (the share mux), both served by the shared device code
 * through the vhost-user adapter, and a NIC — skiff's virtio-net device
 * model behind the same adapter, attached to skiff's network stack —
 * then `cont`, the guest agent reached over vsock, and the session set up
 * (shares mounted, network, host name, clock).
 *
 * Hot-plugging after READY is what lets a snapshot be captured at READY:
 * QEMU 7.2 cannot migrate vhost-user devices ("non-migratable device"), and
 * the spike measured 16–36 ms per ACPI hot-plug on q35. For the same reason
 * a capture of a running VM first lets go of the file systems and unplugs
 * the devices ({@link QemuSession.suspend}), then plugs them back
 * ({@link QemuSession.resume}). A cold boot that is not captured
 * (`--no-snapshot`) hot-plugs too: the devices on QEMU's command line instead
 * (tried, commit 2132827) moved their probe into the boot — the module loads
 * took ≈25 ms longer and READY → session ≈60 ms less — and a cold run
 * measured no faster (10 runs each, wall and CPU time, within noise).
 *
 * @module
 */

import { FuseServer } from "../../devices/fuse/server.ts";
import { ShareMux } from "../../devices/fuse/mux.ts";
import { VirtioFs } from "../../devices/virtio/fs/device.ts";
import { VirtioVsock } from "../../devices/virtio/vsock/device.ts";
import { VhostUserVirtioServer } from "../../devices/vhost_user/virtio_backend.ts";
import type { NetStack } from "../../devices/net/service.ts";
import type { VirtioNet } from "../../devices/virtio/net/device.ts";
import { AgentClient } from "../../init/agent/client.ts";
import type { VmConfig } from "../config.ts";
import { abortRace } from "../abort.ts";
import { VmError } from "../errors.ts";
import {
  attachShares,
  MUX_TAG,
  sessionSetup,
  sessionTeardown,
  sharesOf,
} from "../engine/session.ts";
import { VsockAgentTransport, vsockReady } from "../engine/vsock_transport.ts";
import type { ConsoleWatch } from "./console.ts";
import { type PluggedDevice, plugNet, plugVirtioFs, plugVsock } from "./hotplug.ts";
import type { QemuProcess } from "./process.ts";

/** The guest's vsock CID (virtio 1.2 §5.10.4: 3 is the first CID a guest may have). */
export const GUEST_CID = 3;
/** The guest NIC's MAC address (locally administered). */
export const GUEST_MAC = "52:54:00:6b:69:66";

/** `aa:bb:…` as six bytes. */
function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(":").map((h) => parseInt(h, 16)));
}

/** Options of {@link QemuSession.start} and {@link QemuSession.resume}. */
export interface SessionOptions {
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** Lines the user needs without --verbose (BootOptions.notice). */
  notice?: (line: string) => void;
  /** For the console's tail in error messages. */
  console?: ConsoleWatch;
  /** The guest was suspended before its capture: mount its overlay's upper again, do not replace it. */
  resume?: boolean;
}

/** The devices and back-ends a session adds to a running QEMU. */
export class QemuSession implements AsyncDisposable {
  /** The guest agent's transport; the same device across suspends (it is reset by each unplug). */
  readonly vsock: VirtioVsock;
  readonly agent: AgentClient;
  /** The one file-system device's back-end; the run's shares are attached to it. */
  readonly mux: ShareMux;
  readonly #vm: QemuProcess;
  readonly #dir: string;
  readonly #config: VmConfig;
  #servers: VhostUserVirtioServer[] = [];
  #plugged: PluggedDevice[] = [];
  #detachShares: (() => void) | null = null;
  #stack: NetStack | null = null;
  /** The NIC's device model (the same as the kvm engine's), served to QEMU over vhost-user. */
  #nic: VirtioNet | null = null;
  #detachNic: (() => void) | null = null;
  #plugs = 0;

  private constructor(vm: QemuProcess, dir: string, config: VmConfig) {
    this.#vm = vm;
    this.#dir = dir;
    this.#config = config;
    this.vsock = new VirtioVsock({ guestCid: GUEST_CID });
    this.agent = new AgentClient(new VsockAgentTransport(this.vsock));
    this.mux = new ShareMux();
  }

  /**
   * Attaches `config`'s shares and network, hot-plugs the devices into the
   * paused `vm`, resumes it, waits for the agent and sets the session up.
   * On failure everything it started is released.
   */
  static async start(
    vm: QemuProcess,
    dir: string,
    config: VmConfig,
    o: SessionOptions = {},
  ): Promise<QemuSession> {
    const s = new QemuSession(vm, dir, config);
    try {
      if (config.net) {
        // Binds the --publish ports now: a taken one fails before the guest runs.
        // Loaded only for --net: the network stack is ≈17 modules a run without one does not need.
        const [{ startNetStack }, { attachVirtioNet }, { VirtioNet }] = await Promise.all([
          import("../engine/net_stack.ts"),
          import("../../devices/net/virtio.ts"),
          import("../../devices/virtio/net/device.ts"),
        ]);
        s.#stack = startNetStack(config.net);
        await s.#stack.ready;
        // Port 0's host port is the OS's pick: a notice; --verbose logs every rule's.
        for (const l of s.#stack.publishLines(config.verbose)) {
          (config.verbose ? o.log : o.notice)?.(l);
        }
        s.#nic = new VirtioNet({ mac: macBytes(GUEST_MAC) });
        s.#detachNic = attachVirtioNet(s.#stack, s.#nic);
      }
      if (sharesOf(config).length > 0) s.#detachShares = attachShares(s.mux, config);
      await s.resume(o);
      return s;
    } catch (e) {
      await s.close();
      throw e;
    }
  }

  /** Hot-plugs the devices (new vhost-user servers for the same devices), `cont`, session setup. */
  async resume(o: SessionOptions = {}): Promise<void> {
    const vm = this.#vm, dir = this.#dir, config = this.#config;
    const log = o.log ?? (() => {});
    const serverLog = (m: string) => log(`vhost-user: ${m}`);
    const n = this.#plugs++;
    const vsockPath = `${dir}/vsock${n}.sock`;
    this.#servers.push(
      new VhostUserVirtioServer(vsockPath, this.vsock, { once: true, log: serverLog }),
    );
    let fsPath: string | null = null;
    if (this.#detachShares) {
      fsPath = `${dir}/fs${n}.sock`;
      const fs = new VirtioFs({ tag: MUX_TAG, server: new FuseServer(this.mux) });
      this.#servers.push(new VhostUserVirtioServer(fsPath, fs, { once: true, log: serverLog }));
    }
    let netPath: string | null = null;
    if (this.#nic) {
      netPath = `${dir}/net${n}.sock`;
      this.#servers.push(
        new VhostUserVirtioServer(netPath, this.#nic, { once: true, log: serverLog }),
      );
    }
    const t0 = performance.now();
    // virtio-fs first: the guest's ACPI hot-plug handler probes the later
    // root port first (measured: dmesg), and the agent's vsock is what the
    // host waits for — its probe first brings the agent ~15-20 ms sooner.
    // The plugs run together: QEMU takes QMP commands in order, so their
    // chardev-adds and then their device_adds go out at once (fs's first,
    // each port taken at the call), one round trip each instead of one per
    // device.
    const plugs: Promise<PluggedDevice>[] = [];
    if (fsPath) plugs.push(plugVirtioFs(vm, { id: `fs${n}`, socketPath: fsPath, tag: MUX_TAG }));
    plugs.push(plugVsock(vm, { id: `vsock${n}`, socketPath: vsockPath }));
    if (netPath) {
      plugs.push(plugNet(vm, {
        id: `nic${n}`,
        backend: { type: "vhost-user", socketPath: netPath },
        mac: GUEST_MAC,
      }));
    }
    const plugged = await Promise.allSettled(plugs);
    for (const r of plugged) if (r.status === "fulfilled") this.#plugged.push(r.value);
    for (const r of plugged) if (r.status === "rejected") throw r.reason;
    await vm.qmp.cont();
    log(`qemu: devices plugged in ${Math.round(performance.now() - t0)} ms; waiting for the agent`);
    const exited = vm.exited.then((st) => {
      throw new VmError(
        `QEMU exited (${
          st.signal ? `signal ${st.signal}` : `code ${st.code}`
        }) before the guest agent answered${o.console?.tail() ?? ""}${
          vm.diagnostics ? `; QEMU: ${vm.diagnostics}` : ""
        }`,
      );
    });
    exited.catch(() => {});
    {
      using aborted = abortRace(o.signal);
      await vsockReady(this.vsock, Promise.race([exited, aborted.promise]));
    }
    log(
      `qemu: the guest agent is reachable ${
        Math.round(performance.now() - t0)
      } ms after the hot-plug`,
    );
    await Promise.race([
      this.agent.setup(sessionSetup(config, { resume: o.resume }), { signal: o.signal }),
      exited,
    ]);
    log(
      `qemu: session ready (shares, network, host name, /etc files) ${
        Math.round(performance.now() - t0)
      } ms after the hot-plug`,
    );
  }

  /**
   * Lets go of the guest's file systems (lazily) and unplugs every device,
   * so that QEMU can capture the VM; {@link resume} plugs them back.
   */
  async suspend(o: { signal?: AbortSignal } = {}): Promise<void> {
    await this.agent.setup(sessionTeardown(), { signal: o.signal });
    for (const d of this.#plugged.reverse()) await d.unplug({ signal: o.signal });
    this.#plugged = [];
    for (const s of this.#servers) await s.close().catch(() => {});
    this.#servers = [];
  }

  /** Releases the back-ends (after QEMU is gone). */
  async close(): Promise<void> {
    for (const s of this.#servers) await s.close().catch(() => {});
    this.#servers = [];
    this.#plugged = [];
    this.#detachShares?.();
    this.#detachShares = null;
    this.#detachNic?.();
    this.#detachNic = null;
    await this.#stack?.close().catch(() => {});
    this.#stack = null;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
