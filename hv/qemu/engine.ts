/**
 * The qemu engine: skiff drives a QEMU `microvm` process (as Kata drives
 * Cloud Hypervisor) and keeps everything above the CPU its own — the kernel
 * from skiff's cache, skiff's generated init and initramfs, skiff's FUSE
 * server behind every share (served over vhost-user), and the console
 * protocol (named virtio-serial ports for stdin, stdout, stderr and the exit
 * status that the init's one-shot mode writes).
 *
 * @module
 */

import { ConfigError, VmError } from "../errors.ts";
import { type ConsoleIO, type Engine, type WorkloadIO } from "../engine/types.ts";
import { type ExitStatus, type Share, type VmConfig, type Workload } from "../config.ts";
import { findKernel, type KernelInfo } from "../kernel/mod.ts";
import { DEFAULT_PORTS, parseStatusLine } from "../../init/mod.ts";
import { guestInitramfs } from "../engine/guest_init.ts";
import { FuseServer } from "../../devices/fuse/server.ts";
import { type ShareBackend, shareFileSystem } from "../engine/share_fs.ts";
import { VhostUserServer } from "../../devices/vhost_user/backend.ts";
import { VirtioFsDevice } from "../../devices/vhost_user/fs.ts";
import { QemuProcess } from "./process.ts";
import { NetStack } from "../../devices/net/service.ts";
import { listenStream, type StreamListener } from "../../devices/net/stream.ts";
import { GUEST_PATH } from "../config.ts";
import type { FsDeviceSpec } from "./cmdline.ts";

/** Options of {@link QemuEngine}. */
export interface QemuEngineOptions {
  /** QEMU accelerator: "tcg" (software) where KVM cannot run guests, else "kvm". */
  accel: "kvm" | "tcg";
  /** QEMU binary (default `qemu-system-x86_64` from PATH). */
  binary?: string;
  /** Progress and diagnostics (`--verbose`); default: silent. */
  log?: (line: string) => void;
}

/** The guest NIC's MAC address (locally administered). */
const GUEST_MAC = "52:54:00:6b:69:66";

/** The guest kernel's command line for a skiff guest under QEMU. */
export function qemuKernelCmdline(config: VmConfig): string {
  // quiet: the console is only read on failure; panic=-1 + -no-reboot make a
  // guest panic end QEMU instead of hanging.
  const base = "console=ttyS0 quiet panic=-1 rdinit=/init";
  return config.cmdlineExtra ? `${base} ${config.cmdlineExtra}` : base;
}

/** The shares in the order they get virtio-fs devices: the root first. */
function sharesOf(config: VmConfig): Share[] {
  return [...(config.root ? [config.root] : []), ...config.volumes];
}

/**
 * Copies `from` into a port connection, then (with `eof`) half-closes it so
 * the guest reads EOF. Returns a function that stops forwarding (a terminal on stdin
 * may never reach EOF).
 */
function feed(
  from: ReadableStream<Uint8Array> | null,
  to: Deno.Conn,
  eof = true,
): () => void {
  const reader = from?.getReader();
  (async () => {
    try {
      for (;;) {
        const r = await reader?.read();
        if (!r || r.done) break;
        await to.write(r.value);
      }
    } catch {
      // The guest side went away, or forwarding was stopped.
    } finally {
      try {
        if (eof) await (to as Deno.UnixConn).closeWrite();
      } catch {
        // already closed
      }
    }
  })();
  return () => {
    reader?.cancel().catch(() => {});
  };
}

/** Calls `onChunk` with each chunk read from `from` until EOF or a read error. */
async function readChunks(
  from: Deno.Conn,
  onChunk: (chunk: Uint8Array) => void | Promise<void>,
): Promise<void> {
  const buf = new Uint8Array(65536);
  for (;;) {
    let n: number | null;
    try {
      n = await from.read(buf);
    } catch {
      return;
    }
    if (n === null) return;
    await onChunk(buf.subarray(0, n));
  }
}

/** Copies a port connection to a host stream until EOF. */
async function drain(from: Deno.Conn, to: WritableStream<Uint8Array>): Promise<void> {
  const writer = to.getWriter();
  try {
    await readChunks(from, (chunk) => writer.write(chunk.slice()));
  } finally {
    writer.releaseLock();
  }
}

/** Reads a connection to EOF as text, keeping at most the last `keep` characters. */
async function text(from: Deno.Conn, keep = 8192, mirror?: (s: string) => void): Promise<string> {
  const decoder = new TextDecoder();
  let out = "";
  await readChunks(from, (chunk) => {
    const s = decoder.decode(chunk, { stream: true });
    mirror?.(s);
    out = (out + s).slice(-keep);
  });
  return out;
}

const encoder = new TextEncoder();
/** `--verbose`: the guest console as it arrives. */
function mirrorToStderr(s: string): void {
  Deno.stderr.writeSync(encoder.encode(s));
}

/** The last lines of a console log, for error messages. */
function tail(consoleText: string, lines = 6): string {
  const t = consoleText.trim().split("\n").slice(-lines).join("\n");
  return t ? `; console:\n${t}` : "";
}

/** The qemu engine. */
export class QemuEngine implements Engine {
  readonly name = "qemu";
  #opts: QemuEngineOptions;

  constructor(opts: QemuEngineOptions) {
    this.#opts = opts;
  }

  async #kernel(config: VmConfig): Promise<{ info: KernelInfo; image: string }> {
    const info = await findKernel({ kernel: config.kernel, modules: config.modules });
    // QEMU boots the bzImage directly; an ELF vmlinux works only with a PVH note.
    const image = info.bzImage ?? info.vmlinux;
    if (!image) throw new VmError(`kernel ${info.version} has neither a bzImage nor a vmlinux`);
    return { info, image };
  }

  /**
   * Boots a VM that runs `workload` through the init's one-shot mode, hands
   * the running QEMU to `attach`, and returns the exit status the init
   * reported. Everything (QEMU, back-ends, sockets, temp dir) is released
   * before it returns or throws.
   */
  async #boot(
    config: VmConfig,
    workload: Workload,
    mode: { interactive: boolean },
    signal: AbortSignal | undefined,
    attach: (vm: QemuProcess) => Promise<void>,
  ): Promise<ExitStatus> {
    signal?.throwIfAborted();
    const log = this.#opts.log ?? (() => {});
    const { info, image } = await this.#kernel(config);
    const dir = await Deno.makeTempDir({ prefix: "skiff-qemu-" });
    const servers: VhostUserServer[] = [];
    const backends: ShareBackend[] = [];
    let vm: QemuProcess | null = null;
    let stack: NetStack | null = null;
    let net: StreamListener | null = null;
    try {
      await Deno.chmod(dir, 0o700);
      const fs: FsDeviceSpec[] = [];
      for (const [i, share] of sharesOf(config).entries()) {
        const socketPath = `${dir}/fs${i}.sock`;
        const backend = shareFileSystem(share);
        backends.push(backend);
        servers.push(
          new VhostUserServer(socketPath, new VirtioFsDevice(new FuseServer(backend)), {
            once: true,
            log,
          }),
        );
        fs.push({ id: `fs${i}`, tag: share.tag, socketPath });
      }
      log(`qemu: building the initramfs (kernel ${info.version})`);
      const initrd = `${dir}/initramfs.cpio.gz`;
      await Deno.writeFile(
        initrd,
        await guestInitramfs(info, config, workload),
      );
      if (config.net) {
        try {
          stack = new NetStack({
            hostLoopback: config.net.hostLoopback,
            publish: config.net.publish.map((p) => ({
              hostIp: p.hostIp,
              hostPort: p.hostPort,
              guestPort: p.guestPort,
              proto: p.protocol,
            })),
          });
          await stack.ready;
        } catch (e) {
          throw new ConfigError((e as Error).message);
        }
        net = listenStream(stack, `${dir}/net.sock`);
      }
      const ports = DEFAULT_PORTS;
      log(
        `qemu: starting ${this.#opts.binary ?? "qemu-system-x86_64"} (accel ${this.#opts.accel})`,
      );
      vm = await QemuProcess.start({
        dir,
        accel: this.#opts.accel,
        cpus: config.cpus,
        memoryMiB: config.memoryMiB,
        kernel: image,
        initrd,
        append: qemuKernelCmdline(config),
        portNames: [ports.stdin, ports.stdout, ports.stderr, ports.status],
        console: true,
        fs,
        netSocket: net?.path ?? null,
        mac: GUEST_MAC,
        binary: this.#opts.binary,
      });
      const started = vm;
      const onAbort = () => void started.stop(500);
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        const [, statusText, consoleText, exit] = await Promise.all([
          attach(started),
          text(started.ports.get(ports.status)!, 1024),
          // In interactive mode the console is the terminal (attach reads it).
          mode.interactive
            ? Promise.resolve("")
            : text(started.console!, 16384, config.verbose ? mirrorToStderr : undefined),
          started.exited,
        ]);
        signal?.throwIfAborted();
        const line = statusText.trim().split("\n").at(-1) ?? "";
        const status = line ? parseStatusLine(line) : null;
        if (!status) {
          throw new VmError(
            `the guest stopped without reporting an exit status (QEMU exit code ${exit.code})${
              tail(consoleText)
            }${started.diagnostics ? `; QEMU: ${started.diagnostics}` : ""}`,
          );
        }
        if (status.kind === "error") {
          throw new VmError(`the guest init failed at '${status.step}': ${status.errno}`);
        }
        return status;
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    } finally {
      if (vm) await vm.stop(1000);
      for (const s of servers) await s.close().catch(() => {});
      for (const b of backends) b.close();
      await net?.close().catch(() => {});
      await stack?.[Symbol.asyncDispose]().catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  /** Boots, runs the workload through the init's one-shot mode, and stops. */
  run(
    config: VmConfig,
    workload: Workload,
    io: WorkloadIO,
    signal?: AbortSignal,
  ): Promise<ExitStatus> {
    const ports = DEFAULT_PORTS;
    return this.#boot(config, workload, { interactive: false }, signal, async (vm) => {
      const get = (name: string) => vm.ports.get(name)!;
      const stopFeeding = feed(io.stdin, get(ports.stdin));
      await Promise.all([
        drain(get(ports.stdout), io.stdout),
        drain(get(ports.stderr), io.stderr),
      ]).finally(stopFeeding);
    });
  }

  /**
   * An interactive shell on the guest's serial console (/dev/ttyS0, a tty)
   * as its controlling terminal; resolves when the shell exits and the guest
   * has powered off. The kernel's own messages are limited to emergencies.
   */
  shell(config: VmConfig, io: ConsoleIO, signal?: AbortSignal): Promise<ExitStatus> {
    const size = io.size?.();
    const stty = size ? `stty rows ${size.rows} cols ${size.columns} </dev/ttyS0; ` : "";
    const workload: Workload = {
      // util-linux `setsid -c` makes ttyS0 the shell's controlling terminal,
      // so job control and Ctrl-C work as on a real console.
      argv: ["/bin/sh", "-c", `${stty}exec setsid -c /bin/sh -i </dev/ttyS0 >/dev/ttyS0 2>&1`],
      env: { PATH: GUEST_PATH, HOME: "/", TERM: Deno.env.get("TERM") ?? "linux" },
      workdir: "/",
    };
    const quiet = { ...config, cmdlineExtra: `${config.cmdlineExtra} loglevel=1`.trim() };
    return this.#boot(quiet, workload, { interactive: true }, signal, async (vm) => {
      // No EOF on the console: QEMU would take it as a disconnect and drop the output.
      const stopFeeding = feed(io.input, vm.console!, false);
      await drain(vm.console!, io.output).finally(stopFeeding);
    });
  }
}
