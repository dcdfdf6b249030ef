/**
 * The kvm engine: skiff's own VMM over /dev/kvm.
 *
 * {@link buildKvmMachine} assembles a machine per the Linux x86-64 boot
 * protocol as Firecracker does: guest RAM split around the 32-bit MMIO hole
 * (hv/boot/layout.ts), vCPUs in Workers, the 8250 UART on ttyS0, the i8042
 * (reboot), the ACPI sleep registers (power-off), the virtio-mmio devices
 * (console with the workload's ports, virtio-fs per share, virtio-net with
 * `--net`) declared in the ACPI DSDT, the kernel (ELF vmlinux by its program
 * headers or bzImage) with boot_params, e820, command line and ACPI tables
 * in guest memory, and the boot vCPU in 64-bit mode at the kernel's entry.
 * {@link KvmEngine.run} starts it, wires the workload's streams to the
 * console ports and resolves with the exit status reported on the status
 * port.
 *
 * On a host whose /dev/kvm emulates guest code (the kvm_pvm module, see
 * DESIGN.md) the command line gets `noxsave clearcpuid=cx16`, and the kernel
 * still stops with KVM_EXIT_INTERNAL_ERROR early in boot; the run then
 * rejects with a one-line {@link VmExitError} saying guest code is emulated,
 * with the exit reason, RIP and instruction bytes — never a hang.
 *
 * Pending integration: the generated init + initramfs and its mailbox
 * (init/), and the network stack's attachment (devices/net).
 *
 * @module
 */

import { relative, resolve } from "node:path";
import { ConsolePort, PORT_NAMES, VirtioConsole } from "../devices/virtio/console/device.ts";
import { guestInitramfs } from "./guest_init.ts";
import { VirtioFs } from "../devices/virtio/fs/device.ts";
import { VirtioNet } from "../devices/virtio/net/device.ts";
import { VirtioMmioHost } from "../devices/virtio/mmio_remote.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { FuseServer } from "../devices/fuse/server.ts";
import { PassthroughFs } from "../devices/fuse/passthrough.ts";
import { Uart } from "../devices/legacy/uart.ts";
import { I8042Device } from "../devices/legacy/i8042.ts";
import { type E820Entry, LAYOUT, MemoryLayout } from "./boot/layout.ts";
import { type LoadedKernel, loadKernel, placeInitrd } from "./boot/loader.ts";
import { buildBootParams, writeCmdline } from "./boot/params.ts";
import { type AcpiTables, writeAcpiTables } from "./acpi/tables.ts";
import { sleepSpec } from "./acpi/sleep.ts";
import { bootImage, findKernel } from "./kernel/cache.ts";
import {
  ConfigError,
  type Engine,
  type ExitStatus,
  type Share,
  type VmConfig,
  VmError,
  VmExitError,
  VmTimeoutError,
  type Workload,
  type WorkloadIO,
} from "./engine.ts";
import { RegionMemory } from "./memory.ts";
import { Vm } from "./vm.ts";
import { setupLongMode } from "./x86/long_mode.ts";

const MiB = 1 << 20;
/** First virtio-mmio window (3 GiB: the start of the 32-bit MMIO hole). */
export const VIRTIO_BASE = LAYOUT.VIRTIO_MMIO_START;
/** Distance between virtio windows. */
export const VIRTIO_STRIDE = LAYOUT.VIRTIO_MMIO_STRIDE;
/** GSI of the first virtio device (after the legacy ISA lines skiff uses: UART on 4). */
export const VIRTIO_GSI_BASE = LAYOUT.DEVICE_IRQ_FIRST;

/** Where the emulated-KVM module shows itself (DESIGN.md, "This workplace's KVM"). */
export const KVM_PVM_SYSFS = "/sys/module/kvm_pvm";

/** Command-line options that avoid instructions the emulated KVM lacks (cmpxchg16b, xrstor). */
export const EMULATED_KVM_CMDLINE = "noxsave clearcpuid=cx16";

/** The line printed where guest code is emulated. */
export const EMULATED_NOTE =
  "skiff: guest code is emulated on this host (/dev/kvm is the kvm_pvm module): " +
  "the kernel prints its early log, then stops on an instruction the emulator lacks";

/** Whether /dev/kvm here is the emulated kvm_pvm module. */
export function isEmulatedKvm(sysfsPath = KVM_PVM_SYSFS): boolean {
  try {
    Deno.statSync(sysfsPath);
    return true;
  } catch {
    return false;
  }
}

/**
 * The base kernel command line (as Firecracker's default, with ttyS0 kept):
 * serial console, keyboard-controller reboot, no PCI, legacy i8042 probing.
 */
export function baseCmdline(emulated: boolean): string {
  return [
    "console=ttyS0",
    "earlyprintk=ttyS0",
    "reboot=k",
    "panic=-1",
    "pci=off",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    ...(emulated ? [EMULATED_KVM_CMDLINE] : []),
  ].join(" ");
}

/** One virtio device of a machine: where it is, and its host half. */
export interface VirtioSlot {
  /** Device name (also the vm.onDeviceMessage key). */
  name: string;
  /** MMIO window base. */
  base: number;
  /** Interrupt (GSI). */
  gsi: number;
  host: VirtioMmioHost;
}

/**
 * Everything of a built machine, for the engine and for snapshots (each
 * virtio host and the UART have save()/restore(); the Vm gives vCPU and VM state).
 */
export interface KvmMachine extends AsyncDisposable {
  vm: Vm;
  memory: RegionMemory;
  uart: Uart;
  /** The virtio console (port 0 is hvc0), or null when the machine has no virtio devices. */
  console: VirtioConsole | null;
  virtio: VirtioSlot[];
  /** Kernel command line used. */
  cmdline: string;
  /** The kernel as loaded (format, entry, extent). */
  kernel: LoadedKernel;
  /** The kernel image file booted. */
  kernelPath: string;
  /** The e820 map handed to the kernel. */
  e820: E820Entry[];
  /** Where the ACPI tables are. */
  acpi: AcpiTables;
  /** Where the initramfs was placed, if one was given. */
  initrd?: { addr: number; size: number };
  /** Whether guest code is emulated on this host (kvm_pvm). */
  emulated: boolean;
  /** The last kernel log text (UART), for diagnostics. */
  log(): string;
}

/** Options of {@link buildKvmMachine}. */
export interface MachineOptions {
  /** Serial console (ttyS0) output, as it arrives. */
  onConsole?: (bytes: Uint8Array) => void;
  /** Progress lines for slow steps (loading the kernel). */
  progress?: (line: string) => void;
  /**
   * Add the workload's virtio devices: the console with the stdin/stdout/
   * stderr/status ports, a virtio-fs per share, virtio-net with `net`
   * (default true). Without them the machine has the plain virtio console
   * (hvc0) when it has one vCPU, and no virtio device otherwise.
   */
  workloadDevices?: boolean;
  /** Override the emulated-KVM detection (tests). */
  emulated?: boolean;
  /**
   * An initramfs to hand the kernel: placed page-aligned at the top of low
   * RAM under the kernel's `initrd_addr_max` and announced in boot_params.
   */
  initrd?: Uint8Array;
}

/**
 * Builds (but does not start) a machine for `config`. The caller disposes
 * it (`await using`), which stops the vCPUs and releases fds and memory.
 *
 * vCPUs: the virtio transports keep register state per vCPU Worker
 * (devices/virtio/mmio_remote.ts), so a machine with virtio devices runs
 * one vCPU; without them (`workloadDevices: false` and `cpus` > 1) it runs
 * `config.cpus`, each listed in the MADT.
 */
export async function buildKvmMachine(
  config: VmConfig,
  opts: MachineOptions = {},
): Promise<KvmMachine> {
  if (!Number.isInteger(config.memoryMiB) || config.memoryMiB < 64) {
    throw new ConfigError(`--memory ${config.memoryMiB}: the kvm engine needs at least 64 MiB`);
  }
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > 255) {
    throw new ConfigError(`--cpus ${config.cpus}: the kvm engine boots 1–255 vCPUs`);
  }
  const progress = opts.progress ?? (() => {});
  const workload = opts.workloadDevices ?? true;
  const emulated = opts.emulated ?? isEmulatedKvm();
  const kernelInfo = await findKernel({ kernel: config.kernel, modules: config.modules });
  // The ELF vmlinux skips the bzImage's self-decompression (~80 s where guest code is emulated).
  const image = bootImage(kernelInfo, "elf");
  const size = (await Deno.stat(image.path)).size;
  progress(`skiff: loading kernel ${image.path} (${(size / MiB).toFixed(1)} MiB, ${image.format})`);
  const kernelBytes = await Deno.readFile(image.path);

  const shares = workload ? [...(config.root ? [config.root] : []), ...config.volumes] : [];
  for (const s of shares) await checkShare(s);

  const layout = MemoryLayout.fromMiB(config.memoryMiB);
  const memory = RegionMemory.memfd(layout.ramRegions, "skiff-guest");
  const cleanups: (() => void | Promise<void>)[] = [() => memory[Symbol.dispose]()];
  const dispose = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // releasing one resource must not keep the others
      }
    }
    cleanups.length = 0;
  };
  try {
    const vm = Vm.create({ memory });
    cleanups.push(() => vm.close());
    const wantVirtio = workload || config.cpus === 1;
    const cpus = wantVirtio ? 1 : config.cpus;
    if (wantVirtio && config.cpus > 1) {
      progress(
        `skiff: kvm engine: using 1 vCPU (asked for ${config.cpus}): ` +
          "virtio transports keep per-vCPU state",
      );
    }
    const cpuid = vm.kvm.supportedCpuid();
    for (let i = 0; i < cpus; i++) vm.createVcpu().fd.setCpuid2(cpuid);

    let log = "";
    const dec = new TextDecoder();
    const uart = new Uart({
      output: (b) => {
        log = (log + dec.decode(b, { stream: true })).slice(-8192);
        opts.onConsole?.(b);
      },
    });
    uart.attach(vm);
    vm.addDevice(new I8042Device().spec());
    vm.addDevice(sleepSpec());

    const virtio: VirtioSlot[] = [];
    const add = (name: string, device: VirtioDevice) => {
      const i = virtio.length;
      const base = MemoryLayout.virtioMmioBase(i);
      const gsi = LAYOUT.DEVICE_IRQ_FIRST + i;
      if (gsi > LAYOUT.DEVICE_IRQ_LAST) {
        throw new ConfigError(`too many virtio devices: ${name} would need GSI ${gsi} (max 23)`);
      }
      const host = new VirtioMmioHost(device, memory, {
        irq: () => vm.pulseIrq(gsi),
        onDeviceError: (e) => {
          if (config.verbose) console.error(`skiff: ${name}: ${(e as Error).message ?? e}`);
        },
      });
      vm.onDeviceMessage(name, (m) => host.handle(m));
      vm.addDevice(host.spec(name, base, gsi));
      virtio.push({ name, base, gsi, host });
    };
    let consoleDev: VirtioConsole | null = null;
    if (wantVirtio) {
      consoleDev = new VirtioConsole(
        workload
          ? {
            portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr, PORT_NAMES.status],
          }
          : {},
      );
      add("virtio-console", consoleDev);
    }
    for (const s of shares) {
      const fs = new PassthroughFs(s.hostPath, {
        readOnly: s.readOnly,
        crossMounts: !s.stayOnDevice,
        hide: (s.hide ?? []).map((h) => relative(s.hostPath, h)).filter((h) =>
          h && !h.startsWith("..")
        ),
        credentials: { uid: Deno.uid() ?? 0, gid: Deno.gid() ?? 0 },
      });
      cleanups.push(() => fs.close());
      add(`virtio-fs-${s.tag}`, new VirtioFs({ tag: s.tag, server: new FuseServer(fs) }));
    }
    if (workload && config.net) {
      // The network stack attaches through NetLink (devices/net, pending):
      // until then guest frames are counted and dropped.
      add("virtio-net", new VirtioNet({ mac: new Uint8Array([0x52, 0x54, 0, 0x6b, 0x69, 0x66]) }));
    }

    const cmdline = [
      baseCmdline(emulated),
      workload ? `skiff.hostname=${config.hostname}` : "",
      config.cmdlineExtra,
    ].filter(Boolean).join(" ");
    let kernel: LoadedKernel;
    try {
      kernel = loadKernel(memory, kernelBytes, image.path);
    } catch (e) {
      throw new ConfigError((e as Error).message, { cause: e });
    }
    const cmdlineMax = Math.min(kernel.cmdlineMax + 1, LAYOUT.CMDLINE_MAX);
    let cmdlineLen: number;
    try {
      cmdlineLen = writeCmdline(memory, LAYOUT.CMDLINE_START, cmdline, cmdlineMax);
    } catch (e) {
      throw new ConfigError((e as Error).message, { cause: e });
    }
    let initrd: { addr: number; size: number } | undefined;
    if (opts.initrd) {
      try {
        initrd = {
          addr: placeInitrd(memory, opts.initrd, kernel, layout.lowRamEnd),
          size: opts.initrd.length,
        };
      } catch (e) {
        throw new ConfigError((e as Error).message, { cause: e });
      }
    }
    const acpi = writeAcpiTables(memory, {
      cpus,
      virtio: virtio.map((v) => ({ base: v.base, gsi: v.gsi })),
    });
    const e820 = layout.e820();
    memory.write(
      LAYOUT.ZERO_PAGE,
      buildBootParams({
        setupHeader: kernel.setupHeaderBytes,
        cmdline: { addr: LAYOUT.CMDLINE_START, size: cmdlineLen },
        e820,
        rsdpAddr: acpi.rsdpAddr,
        initrd,
      }),
    );
    setupLongMode(memory, vm.vcpus[0].fd, {
      entry: kernel.entry,
      stack: LAYOUT.BOOT_STACK_POINTER,
      rsi: LAYOUT.ZERO_PAGE,
    });

    return {
      vm,
      memory,
      uart,
      console: consoleDev,
      virtio,
      cmdline,
      kernel,
      kernelPath: image.path,
      e820,
      acpi,
      initrd,
      emulated,
      log: () => log,
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/** Options of {@link KvmEngine}. */
export interface KvmEngineOptions {
  /** Kernel log (UART output) goes here as it arrives; default: stderr when `verbose`. */
  onKernelLog?: (bytes: Uint8Array) => void;
  /**
   * Called once the guest init reports ready (before the command is sent),
   * with the VM paused: the snapshot hook (H8). Not reached on hosts where
   * the guest stops inside the kernel.
   */
  onReady?: (machine: KvmMachine) => Promise<void> | void;
  /**
   * Receives the one-line note that guest code is emulated on this host
   * ({@link EMULATED_NOTE}) when a run starts there; default: stderr; null: silent.
   */
  onNote?: ((line: string) => void) | null;
}

/** The kvm engine. */
export class KvmEngine implements Engine {
  readonly name = "kvm";
  #opts: KvmEngineOptions;

  constructor(opts: KvmEngineOptions = {}) {
    this.#opts = opts;
  }

  /** Builds (but does not start) a machine for `config` with the workload's devices. */
  async build(config: VmConfig, workload?: Workload): Promise<KvmMachine> {
    // The initramfs carries skiff's init and the command record (one-shot mode).
    const initrd = workload
      ? await guestInitramfs(
        await findKernel({ kernel: config.kernel, modules: config.modules }),
        config,
        workload,
      )
      : undefined;
    return await buildKvmMachine(config, {
      initrd,
      onConsole: this.#opts.onKernelLog ??
        (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : undefined),
      progress: config.verbose ? (l) => console.error(l) : undefined,
    });
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
    await using m = await this.build(config, workload);
    const con = m.console!; // a workload machine always has its console
    const stdoutW = io.stdout.getWriter();
    const stderrW = io.stderr.getWriter();
    let writes: Promise<unknown> = Promise.resolve();
    const pipe = (port: ConsolePort, w: WritableStreamDefaultWriter<Uint8Array>) => {
      port.onData = (b) => {
        writes = writes.then(() => w.write(b)).catch(() => {});
      };
    };
    pipe(con.port(PORT_NAMES.stdout), stdoutW);
    pipe(con.port(PORT_NAMES.stderr), stderrW);
    const status = new Promise<ExitStatus>((resolveStatus) => {
      let text = "";
      con.port(PORT_NAMES.status).onData = (b) => {
        text += new TextDecoder().decode(b);
        const s = parseStatus(text);
        if (s) resolveStatus(s);
      };
    });
    const stdinPort = con.port(PORT_NAMES.stdin);
    const reader = io.stdin?.getReader() ?? null;
    const pumpStdin = async () => {
      if (!reader) {
        stdinPort.close();
        return;
      }
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          stdinPort.send(value);
        }
      } catch {
        // host stdin failed: the guest sees EOF
      }
      stdinPort.close();
    };

    let aborted: (reason: unknown) => void = () => {};
    const abort = new Promise<never>((_, reject) => {
      aborted = reject;
    });
    // The abort can come before the race below subscribes (e.g. while the
    // vCPU Workers start): mark it handled so it is not an unhandled rejection.
    abort.catch(() => {});
    const onAbort = () => aborted(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort(); // aborted while the machine was being built
    try {
      if (m.emulated) {
        const note = this.#opts.onNote === undefined
          ? (l: string) => console.error(l)
          : this.#opts.onNote;
        note?.(EMULATED_NOTE);
      }
      await m.vm.start();
      void pumpStdin();
      const stopped = m.vm.wait().then((stop): never => {
        throw new VmError(
          `the guest stopped (${stop.kind}${stop.source ? ` from ${stop.source}` : ""}) ` +
            `before the command finished${lastLine(m.log())}`,
        );
      }, (e) => {
        throw explainExit(e, m.log(), m.emulated);
      });
      // `stopped` only ever rejects; `status` resolves when the init reports.
      return await Promise.race([status, stopped, abort]);
    } catch (e) {
      if (e instanceof VmError || e instanceof ConfigError) throw e;
      if (signal?.aborted) {
        const r = signal.reason;
        if (r instanceof VmError) throw r;
        if (r instanceof DOMException && r.name === "TimeoutError") {
          throw new VmTimeoutError(Math.round((performance.now() - t0) / 100) / 10);
        }
        throw new VmError(`run aborted: ${(r as Error)?.message ?? r}`);
      }
      throw new VmError(`kvm engine failed: ${(e as Error)?.message ?? e}`, { cause: e });
    } finally {
      signal?.removeEventListener("abort", onAbort);
      await reader?.cancel().catch(() => {});
      await m.vm.stop().catch(() => {});
      await writes;
      stdoutW.releaseLock();
      stderrW.releaseLock();
    }
  }
}

/** A share's host path must exist and be a directory (a clear error before boot). */
async function checkShare(s: Share): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(s.hostPath);
  } catch {
    throw new ConfigError(`shared host path ${s.hostPath} does not exist`);
  }
  if (!st.isDirectory) throw new ConfigError(`shared host path ${s.hostPath} is not a directory`);
  if (resolve(s.hostPath) !== s.hostPath) {
    throw new ConfigError(`shared host path ${s.hostPath} is not absolute and normalised`);
  }
}

/** The status port's record: `exit N` or `signal N`, newline-terminated. */
export function parseStatus(text: string): ExitStatus | null {
  const m = /^(exit|signal) (\d+)\n/m.exec(text);
  if (!m) return null;
  const n = Number(m[2]);
  return m[1] === "exit" ? { kind: "exited", code: n & 0xff } : { kind: "signaled", signal: n };
}

function lastLine(log: string): string {
  const line = log.trim().split("\n").pop()?.trim();
  return line ? ` (kernel log: ${line.slice(0, 160)})` : "";
}

/**
 * Turns a vCPU exit error into the one-line message the user sees. Where
 * guest code is emulated it says so, keeping the exit reason, RIP and the
 * instruction bytes; elsewhere it adds the last kernel log line.
 */
export function explainExit(e: unknown, log: string, emulated: boolean): unknown {
  if (!(e instanceof VmExitError)) return e;
  // VmExitError's message is "guest stopped: REASON[ at RIP 0x…][ DETAIL]": keep DETAIL.
  const at = e.rip === undefined ? "" : ` at RIP 0x${e.rip.toString(16)}`;
  const head = `guest stopped: ${e.reason}${at}`;
  const detail = e.message.startsWith(head) ? e.message.slice(head.length).trim() : "";
  if (emulated) {
    return new VmExitError(
      `guest code is emulated on this host (kvm_pvm) and the kernel stopped on an instruction ` +
        `the emulator lacks: ${e.reason}`,
      e.rip,
      detail,
    );
  }
  return new VmExitError(`${e.reason}${lastLine(log)}`, e.rip, detail);
}
