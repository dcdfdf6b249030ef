/**
 * A Linux guest under QEMU TCG with skiff's virtio-vsock device (served to
 * `vhost-user-vsock-device` through the vhost-user adapter) and the host's
 * `/` as its read-only root over skiff's virtio-fs (through the same
 * adapter), so host tools such as `socat` run in it. For the vsock L3q test
 * and benchmark; not used by the VMM.
 *
 * The guest runs a busybox shell script; `$S` in it is the host's socat
 * (chrooted), and `report TEXT` sends one line to the host (host port 7000),
 * which {@link VsockGuest.report} waits for.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { FuseServer } from "../../../fuse/server.ts";
import { PassthroughFs } from "../../../fuse/passthrough.ts";
import { QemuProcess } from "../../../../hv/qemu/process.ts";
import { busyboxInitramfs, collect, type Collected } from "../../../../hv/qemu/testing.ts";
import type { KernelInfo } from "../../../../hv/kernel/mod.ts";
import { VhostUserVirtioServer } from "../../../vhost_user/virtio_backend.ts";
import { VirtioFs } from "../../fs/device.ts";
import { VirtioVsock } from "../device.ts";
import type { VsockStream } from "../connection.ts";
import type { VsockListener } from "../listener.ts";

/** Guest CID used by these guests. */
export const GUEST_CID = 42;

/** Shell lines every script starts with: the root share, `$S` and `report`. */
const PRELUDE = [
  "mkdir -p /mnt/root && mount -t virtiofs root /mnt/root || echo MOUNT-FAILED",
  // Redirections stay outside the chroot: the host's /dev is a mount point, empty there.
  "S='chroot /mnt/root /usr/bin/socat'",
  'report() { echo "$1" | $S -u STDIN VSOCK-CONNECT:2:7000; }',
];

/** Waits for `cond` (polled every few ms) until `signal` aborts. */
export async function waitFor(
  what: string,
  cond: () => boolean,
  signal: AbortSignal,
): Promise<void> {
  while (!cond()) {
    if (signal.aborted) throw new Error(`gave up waiting for ${what}: ${signal.reason}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Deterministic pseudo-random bytes (a sha256 counter stream). */
export function testData(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0, block = 0; i < n; block++) {
    const d = createHash("sha256").update(`skiff-vsock-${block}`).digest();
    out.set(d.subarray(0, Math.min(d.length, n - i)), i);
    i += d.length;
  }
  return out;
}

/** Reads a stream to its end. */
export async function readAll(s: VsockStream): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of s.readable) parts.push(c);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A running guest; dispose to stop QEMU and the back-ends and remove its directory. */
export class VsockGuest implements AsyncDisposable {
  readonly vm: QemuProcess;
  readonly vsock: VirtioVsock;
  /** Lines the guest reported, in order. */
  readonly reports: string[];
  /** Serial console text so far. */
  readonly console: Collected;
  /** Back-end diagnostics. */
  readonly logs: string[];
  readonly #deadline: AbortSignal;
  readonly #cleanup: () => Promise<void>;

  private constructor(
    vm: QemuProcess,
    vsock: VirtioVsock,
    reports: string[],
    logs: string[],
    deadline: AbortSignal,
    cleanup: () => Promise<void>,
  ) {
    this.vm = vm;
    this.vsock = vsock;
    this.reports = reports;
    this.logs = logs;
    this.console = collect(vm.console!);
    this.#deadline = deadline;
    this.#cleanup = cleanup;
  }

  /**
   * Boots a guest running `script` (after the prelude) with the vsock modules
   * loaded; `portNames` adds QEMU virtio-serial ports (for comparisons).
   */
  static async boot(
    kernel: KernelInfo,
    script: string[],
    deadline: AbortSignal,
    portNames: string[] = [],
  ): Promise<VsockGuest> {
    const dir = await Deno.makeTempDir({ prefix: "skiff-vsockq-" });
    const logs: string[] = [];
    const log = (m: string) => logs.push(m);
    const closers: (() => Promise<void>)[] = [];
    const cleanup = async () => {
      for (const c of closers.reverse()) await c().catch(log);
      await Deno.remove(dir, { recursive: true });
    };
    try {
      const modules = ["virtio_mmio", "virtiofs", "vmw_vsock_virtio_transport", "vsock_loopback"];
      if (portNames.length) modules.push("virtio_console");
      const initrd = await busyboxInitramfs(
        dir,
        kernel,
        [...PRELUDE, ...script].join("\n"),
        modules,
      );
      const vsock = new VirtioVsock({ guestCid: GUEST_CID, log });
      const fuse = new FuseServer(new PassthroughFs("/", { readOnly: true, crossMounts: false }));
      const rootFs = new VirtioFs({ tag: "root", server: fuse });
      const vsockServer = new VhostUserVirtioServer(`${dir}/vsock.sock`, vsock, {
        once: true,
        log,
      });
      closers.push(() => vsockServer.close());
      const fsServer = new VhostUserVirtioServer(`${dir}/fs.sock`, rootFs, { once: true, log });
      closers.push(() => fsServer.close());
      const reports: string[] = [];
      const reportListener: VsockListener = vsock.listen(7000, (s) => {
        readAll(s).then((b) => reports.push(new TextDecoder().decode(b).trim()), log);
      });
      closers.push(() => Promise.resolve(reportListener.close()));
      const vm = await QemuProcess.start({
        dir,
        accel: "tcg",
        cpus: 1,
        memoryMiB: 256,
        kernel: kernel.bzImage!,
        initrd,
        append: "console=ttyS0 quiet panic=-1",
        portNames,
        console: true,
        fs: [{ id: "fs0", tag: "root", socketPath: `${dir}/fs.sock` }],
        vsock: { id: "vsock0", socketPath: `${dir}/vsock.sock` },
      });
      closers.push(async () => void await vm.stop());
      return new VsockGuest(vm, vsock, reports, logs, deadline, cleanup);
    } catch (e) {
      await cleanup();
      throw e;
    }
  }

  /** Waits for the guest's report starting with `prefix`; returns the rest of the line. */
  async report(prefix: string): Promise<string> {
    const find = () => this.reports.find((r) => r === prefix || r.startsWith(`${prefix} `));
    await waitFor(`guest report "${prefix}"`, () => find() !== undefined, this.#deadline);
    return find()!.slice(prefix.length).trim();
  }

  /** Connects to a guest port, retrying while nothing listens there yet (the guest starts it). */
  async connect(port: number): Promise<VsockStream> {
    for (;;) {
      try {
        return await this.vsock.connect(port, { signal: this.#deadline });
      } catch (e) {
        if ((e as { code?: string }).code !== "refused") throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Diagnostics for a failure message. */
  describe(): string {
    return `reports: ${JSON.stringify(this.reports)}\nlogs: ${this.logs.join("; ")}\ncounters: ${
      JSON.stringify(this.vsock.counters)
    }\n--- console ---\n${this.console.text}`;
  }

  /** Stops QEMU and the back-ends; removes the directory. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#cleanup();
  }
}
