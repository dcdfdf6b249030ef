/**
 * The kvm engine: skiff's own VMM over /dev/kvm.
 *
 * {@link KvmEngine.build} assembles a machine — guest RAM (memfd), one vCPU
 * in a Worker, the 8250 UART (kernel log), the virtio-mmio devices (console
 * with the workload's ports, virtio-fs for the root share and each volume,
 * virtio-net with `--net`), and the kernel loaded per the Linux x86-64 boot
 * protocol — and {@link KvmEngine.run} starts it, wires the workload's
 * streams to the console ports and resolves with the exit status reported
 * on the status port.
 *
 * Device placement (announce these in the ACPI DSDT, edge-triggered): virtio
 * window `i` at {@link VIRTIO_BASE} + i·0x1000, GSI {@link VIRTIO_GSI_BASE} + i,
 * in the order of {@link KvmMachine.virtio}.
 *
 * On a host whose /dev/kvm emulates guest code (the kvm_pvm module, see
 * DESIGN.md) the kernel stops with KVM_EXIT_INTERNAL_ERROR early in boot;
 * the run then rejects with a {@link VmExitError} saying so ("guest code is
 * emulated on this host …"), never hangs.
 *
 * Pending integration (other modules not yet in the tree when this was
 * written): ACPI tables (hv/acpi), the generated init + initramfs and its
 * mailbox (init/), and the network stack's attachment (devices/net). The
 * machine builds and boots without them; with them the guest finds the
 * devices and runs the workload.
 *
 * @module
 */

import { relative, resolve } from "node:path";
import { ConsolePort, PORT_NAMES, VirtioConsole } from "../devices/virtio/console/device.ts";
import { VirtioFs } from "../devices/virtio/fs/device.ts";
import { VirtioNet } from "../devices/virtio/net/device.ts";
import { VirtioMmioHost } from "../devices/virtio/mmio_remote.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { FuseServer } from "../devices/fuse/server.ts";
import { PassthroughFs } from "../devices/fuse/passthrough.ts";
import { Uart } from "../devices/legacy/uart.ts";
import { Elf64, isElf, PT_LOAD } from "./boot/elf.ts";
import { isBzImage, parseSetupHeader } from "./boot/setup_header.ts";
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
import { kvmUnusableReason } from "./select_engine.ts";

const MiB = 1 << 20;
/** First virtio-mmio window (3 GiB: the start of the 32-bit MMIO hole). */
export const VIRTIO_BASE = 0xc000_0000;
/** Distance between virtio windows. */
export const VIRTIO_STRIDE = 0x1000;
/** GSI of the first virtio device (after the legacy ISA lines skiff uses: UART on 4). */
export const VIRTIO_GSI_BASE = 5;
/** End of low RAM: RAM above this continues at 4 GiB. */
const LOW_RAM_END = 0xc000_0000;
/** Linux boot protocol placement (as Firecracker): zero page, stack, command line. */
const ZERO_PAGE = 0x7000;
const BOOT_STACK = 0x8ff0;
const CMDLINE = 0x20000;
const CMDLINE_MAX = 0x10000;
const EBDA = 0x9fc00;
const HIMEM = 0x100000;

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
  console: VirtioConsole;
  virtio: VirtioSlot[];
  /** Kernel command line used. */
  cmdline: string;
  /** The last kernel log text (UART), for diagnostics. */
  log(): string;
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
}

/** The kvm engine. */
export class KvmEngine implements Engine {
  readonly name = "kvm";
  #opts: KvmEngineOptions;

  constructor(opts: KvmEngineOptions = {}) {
    this.#opts = opts;
  }

  /** Builds (but does not start) a machine for `config`. */
  async build(config: VmConfig): Promise<KvmMachine> {
    if (!Number.isInteger(config.memoryMiB) || config.memoryMiB < 64) {
      throw new ConfigError(`--memory ${config.memoryMiB}: the kvm engine needs at least 64 MiB`);
    }
    const kernel = await findKernel({ kernel: config.kernel, modules: config.modules });
    const image = bootImage(kernel, "elf");
    const kernelBytes = await Deno.readFile(image.path);

    const shares = [...(config.root ? [config.root] : []), ...config.volumes];
    for (const s of shares) await checkShare(s);

    const total = config.memoryMiB * MiB;
    const layout = total <= LOW_RAM_END
      ? [{ guestAddr: 0, size: total }]
      : [{ guestAddr: 0, size: LOW_RAM_END }, { guestAddr: 2 ** 32, size: total - LOW_RAM_END }];
    const memory = RegionMemory.memfd(layout, "skiff-guest");
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
      // Virtio transports keep their register state per vCPU Worker
      // (devices/virtio/mmio_remote.ts), so the machine has one vCPU.
      if (config.cpus > 1 && config.verbose) {
        console.error(`skiff: kvm engine: using 1 vCPU (asked for ${config.cpus})`);
      }
      const vcpu = vm.createVcpu();
      vcpu.fd.setCpuid2(vm.kvm.supportedCpuid());

      let log = "";
      const logOut = this.#opts.onKernelLog ??
        (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : null);
      const dec = new TextDecoder();
      const uart = new Uart({
        output: (b) => {
          log = (log + dec.decode(b, { stream: true })).slice(-8192);
          logOut?.(b);
        },
      });
      uart.attach(vm);

      const virtio: VirtioSlot[] = [];
      const add = (name: string, device: VirtioDevice) => {
        const i = virtio.length;
        const base = VIRTIO_BASE + i * VIRTIO_STRIDE;
        const gsi = VIRTIO_GSI_BASE + i;
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
      const consoleDev = new VirtioConsole({
        portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr, PORT_NAMES.status],
      });
      add("virtio-console", consoleDev);
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
      if (config.net) {
        // The network stack attaches through NetLink (devices/net, pending):
        // until then guest frames are counted and dropped.
        add(
          "virtio-net",
          new VirtioNet({ mac: new Uint8Array([0x52, 0x54, 0, 0x6b, 0x69, 0x66]) }),
        );
      }

      const cmdline = [
        "console=ttyS0",
        "earlyprintk=ttyS0",
        "reboot=k",
        "panic=-1",
        // DESIGN.md: the emulated KVM lacks cmpxchg16b and xrstor; these avoid them.
        "noxsave",
        "clearcpuid=cx16",
        `skiff.hostname=${config.hostname}`,
        config.cmdlineExtra,
      ].filter(Boolean).join(" ");
      const entry = loadKernel(memory, kernelBytes, image.path);
      writeBootParams(memory, kernelBytes, cmdline, total);
      setupLongMode(memory, vcpu.fd, { entry, stack: BOOT_STACK, rsi: ZERO_PAGE });

      return {
        vm,
        memory,
        uart,
        console: consoleDev,
        virtio,
        cmdline,
        log: () => log,
        [Symbol.asyncDispose]: dispose,
      };
    } catch (e) {
      await dispose();
      throw e;
    }
  }

  async run(
    config: VmConfig,
    workload: Workload,
    io: WorkloadIO,
    signal?: AbortSignal,
  ): Promise<ExitStatus> {
    if (workload.argv.length === 0) throw new ConfigError("no command to run");
    signal?.throwIfAborted();
    await using m = await this.build(config);
    const stdoutW = io.stdout.getWriter();
    const stderrW = io.stderr.getWriter();
    let writes: Promise<unknown> = Promise.resolve();
    const pipe = (port: ConsolePort, w: WritableStreamDefaultWriter<Uint8Array>) => {
      port.onData = (b) => {
        writes = writes.then(() => w.write(b)).catch(() => {});
      };
    };
    pipe(m.console.port(PORT_NAMES.stdout), stdoutW);
    pipe(m.console.port(PORT_NAMES.stderr), stderrW);
    const status = new Promise<ExitStatus>((resolveStatus) => {
      let text = "";
      m.console.port(PORT_NAMES.status).onData = (b) => {
        text += new TextDecoder().decode(b);
        const s = parseStatus(text);
        if (s) resolveStatus(s);
      };
    });
    const stdinPort = m.console.port(PORT_NAMES.stdin);
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
    const onAbort = () => aborted(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await m.vm.start();
      void pumpStdin();
      const stopped = m.vm.wait().then((stop): never => {
        throw new VmError(
          `the guest stopped (${stop.kind}${stop.source ? ` from ${stop.source}` : ""}) ` +
            `before the command finished${lastLine(m.log())}`,
        );
      }, (e) => {
        throw explain(e, m.log());
      });
      // `stopped` only ever rejects; `status` resolves when the init reports.
      return await Promise.race([status, stopped, abort]);
    } catch (e) {
      if (e instanceof VmError || e instanceof ConfigError) throw e;
      if (signal?.aborted) {
        const r = signal.reason;
        if (r instanceof VmError) throw r;
        if (r instanceof DOMException && r.name === "TimeoutError") {
          throw new VmTimeoutError(0);
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

/** Turns a vCPU exit error into the message the user sees, naming emulation where it applies. */
function explain(e: unknown, log: string): unknown {
  if (!(e instanceof VmExitError)) return e;
  const why = kvmUnusableReason();
  if (why !== null && why.includes("kvm_pvm")) {
    return new VmExitError(
      `guest code is emulated on this host (kvm_pvm) and stopped inside the kernel: ${e.reason}`,
      e.rip,
    );
  }
  return new VmExitError(`${e.reason}${lastLine(log)}`, e.rip);
}

/** Loads the kernel image; returns the 64-bit entry point (guest-physical). */
function loadKernel(memory: RegionMemory, bytes: Uint8Array, path: string): number {
  if (isElf(bytes)) {
    const elf = new Elf64(bytes, path);
    for (const ph of elf.programHeaders()) {
      if (ph.type !== PT_LOAD || ph.memsz === 0) continue;
      if (!memory.contains(ph.paddr, ph.memsz)) {
        throw new ConfigError(
          `kernel ${path}: segment at 0x${
            ph.paddr.toString(16)
          }+${ph.memsz} does not fit in guest RAM`,
        );
      }
      const dst = memory.slice(ph.paddr, ph.memsz);
      dst.set(bytes.subarray(ph.offset, ph.offset + ph.filesz));
      dst.fill(0, ph.filesz);
    }
    // vmlinux's ELF entry is phys_startup_64 (arch/x86/kernel/vmlinux.lds.S).
    return Number(elf.entry);
  }
  if (isBzImage(bytes)) {
    const hdr = parseSetupHeader(bytes, path);
    const setupSects = bytes[0x1f1] || 4;
    const pm = bytes.subarray((setupSects + 1) * 512);
    if (!memory.contains(HIMEM, pm.length)) {
      throw new ConfigError(`kernel ${path}: ${pm.length} bytes do not fit at 1 MiB`);
    }
    memory.write(HIMEM, pm);
    void hdr;
    // Boot protocol §"64-bit boot protocol": startup_64 is 0x200 into the protected-mode code.
    return HIMEM + 0x200;
  }
  throw new ConfigError(`kernel ${path} is neither an ELF vmlinux nor a bzImage`);
}

/** boot_params (Documentation/arch/x86/zero-page.rst) with e820 map and command line. */
function writeBootParams(
  memory: RegionMemory,
  kernel: Uint8Array,
  cmdline: string,
  total: number,
): void {
  const zp = memory.slice(ZERO_PAGE, 4096);
  zp.fill(0);
  if (isBzImage(kernel)) {
    // Copy the image's setup header (0x1f1 .. end given by the jump at 0x201).
    const end = 0x202 + kernel[0x201];
    zp.set(kernel.subarray(0x1f1, end), 0x1f1);
  }
  const v = new DataView(zp.buffer, zp.byteOffset, 4096);
  v.setUint16(0x1fe, 0xaa55, true); // boot_flag
  v.setUint32(0x202, 0x53726448, true); // "HdrS"
  if (v.getUint16(0x206, true) === 0) v.setUint16(0x206, 0x020f, true); // version
  v.setUint8(0x210, 0xff); // type_of_loader: undefined
  v.setUint8(0x211, v.getUint8(0x211) | 0x01); // LOADED_HIGH
  const cmd = new TextEncoder().encode(cmdline + "\0");
  if (cmd.length > CMDLINE_MAX) {
    throw new ConfigError(`kernel command line longer than ${CMDLINE_MAX}`);
  }
  memory.write(CMDLINE, cmd);
  v.setUint32(0x228, CMDLINE, true); // cmd_line_ptr
  v.setUint32(0x238, cmd.length - 1, true); // cmdline_size
  const e820: [number, number, number][] = [[0, EBDA, 1]];
  const low = Math.min(total, LOW_RAM_END);
  e820.push([HIMEM, low - HIMEM, 1]);
  if (total > LOW_RAM_END) e820.push([2 ** 32, total - LOW_RAM_END, 1]);
  v.setUint8(0x1e8, e820.length);
  e820.forEach(([addr, size, type], i) => {
    const at = 0x2d0 + 20 * i;
    v.setBigUint64(at, BigInt(addr), true);
    v.setBigUint64(at + 8, BigInt(size), true);
    v.setUint32(at + 16, type, true);
  });
}
