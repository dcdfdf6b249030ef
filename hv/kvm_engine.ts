/**
 * The kvm engine: skiff's own VMM over /dev/kvm.
 *
 * {@link buildKvmMachine} assembles a machine per the Linux x86-64 boot
 * protocol as Firecracker does: guest RAM split around the 32-bit MMIO hole
 * (hv/boot/layout.ts), vCPUs in Workers, the 8250 UART on ttyS0, the i8042
 * (reboot), the ACPI sleep registers (power-off), the virtio-mmio devices
 * (console with the workload's ports, virtio-fs per share, virtio-net with
 * `--net`) declared in the ACPI DSDT, optionally skiff's mailbox (MMIO
 * registers and a data region outside e820), the kernel (ELF vmlinux by its
 * program headers or bzImage) with boot_params, e820, command line and ACPI
 * tables in guest memory, and the boot vCPU in 64-bit mode at the kernel's
 * entry.
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
 * rejects with a one-line {@link VmExitError} saying guest code is emulated,
 * with the exit reason, RIP and instruction bytes — never a hang, and no
 * cache entry is written.
 *
 * @module
 */

import { dirname, resolve } from "node:path";
import { ConsolePort, PORT_NAMES, VirtioConsole } from "../devices/virtio/console/device.ts";
import { guestInitramfs, initConfigFor } from "./guest_init.ts";
import { shareFileSystem } from "./share_fs.ts";
import { VirtioFs } from "../devices/virtio/fs/device.ts";
import { VirtioNet } from "../devices/virtio/net/device.ts";
import { NetStack } from "../devices/net/service.ts";
import { attachVirtioNet } from "../devices/net/virtio.ts";
import { VirtioMmioHost } from "../devices/virtio/mmio_remote.ts";
import type { MmioState } from "../devices/virtio/mmio.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { FuseServer } from "../devices/fuse/server.ts";
import { Uart, type UartSnapshot } from "../devices/legacy/uart.ts";
import { I8042Device } from "../devices/legacy/i8042.ts";
import { Mailbox, type MailboxOptions } from "../devices/mailbox/mailbox.ts";
import { MAILBOX_LAYOUT } from "../devices/mailbox/registers.ts";
import { type E820Entry, LAYOUT, MemoryLayout } from "./boot/layout.ts";
import { type LoadedKernel, loadKernel, placeInitrd } from "./boot/loader.ts";
import { buildBootParams, writeCmdline } from "./boot/params.ts";
import { type AcpiTables, writeAcpiTables } from "./acpi/tables.ts";
import { sleepSpec } from "./acpi/sleep.ts";
import { bootImage, findKernel, type KernelInfo } from "./kernel/cache.ts";
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
import { Vm, type VmStop } from "./vm.ts";
import { setupLongMode } from "./x86/long_mode.ts";
import { MAILBOX_RDINIT, mailboxInitramfs } from "../init/mailbox_mode.ts";
import { mailboxInitramfsIdentity } from "./init_identity.ts";
import { recordFor } from "../init/config.ts";
import { LINUX_ERRNO_NAMES } from "../init/errno_names.ts";
import { SnapshotCache } from "../snapshot/cache.ts";
import { bootCached } from "../snapshot/boot_cached.ts";
import { captureHvVm, restoreHvVm } from "../snapshot/hv_snapshot.ts";
import type { Persist } from "../snapshot/vm_snapshot.ts";
import { vmSnapshotKey } from "../snapshot/vm_key.ts";
import type { StateValue } from "../snapshot/codec.ts";

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
  /** Device name (also the vm.onDeviceMessage key and its snapshot id). */
  name: string;
  /** MMIO window base. */
  base: number;
  /** Interrupt (GSI). */
  gsi: number;
  host: VirtioMmioHost;
}

/** The devices of a machine, cold-booted or restored. */
export interface KvmDevices {
  vm: Vm;
  memory: RegionMemory;
  uart: Uart;
  /** The virtio console (port 0 is hvc0), or null when the machine has no virtio devices. */
  console: VirtioConsole | null;
  virtio: VirtioSlot[];
  /** skiff's mailbox, when the machine has one ({@link MachineOptions.mailbox}). */
  mailbox: Mailbox | null;
  /** Kernel command line (of the boot; a restored machine keeps its snapshot's). */
  cmdline: string;
  /** Whether guest code is emulated on this host (kvm_pvm). */
  emulated: boolean;
  /** Device state adapters by snapshot id: the UART, each virtio device, the mailbox. */
  persist(): Map<string, Persist>;
  /** The last kernel log text (UART), for diagnostics. */
  log(): string;
}

/**
 * Everything of a built machine, for the engine and for snapshots (each
 * virtio host and the UART have save()/restore(); the Vm gives vCPU and VM state).
 */
export interface KvmMachine extends KvmDevices, AsyncDisposable {
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
}

/** A machine restored from a snapshot (not started). */
export interface RestoredKvmMachine extends KvmDevices, AsyncDisposable {
  /** The snapshot directory it came from. */
  snapshotDir: string;
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
  /**
   * Add skiff's mailbox (init/MAILBOX.md): registers at 0xd000_0000, data
   * region in its own memory slot outside e820. `true` for the defaults.
   */
  mailbox?: boolean | MailboxOptions;
  /** More kernel command-line options, after the base ones and before `config.cmdlineExtra`. */
  cmdline?: string;
}

/** What a machine is built from, worked out before any KVM resource exists. */
interface MachinePlan {
  config: VmConfig;
  kernel: KernelInfo;
  image: { path: string; format: "elf" | "bzimage" };
  shares: Share[];
  workload: boolean;
  emulated: boolean;
  cpus: number;
  virtio: { name: string; kind: "console" | "fs" | "net"; share?: Share }[];
  mailbox: MailboxOptions | null;
  cmdline: string;
}

/** Version of the machine layout and device state a snapshot holds (part of the cache key). */
export const KVM_VMM_VERSION = "skiff-kvm-1";

async function planMachine(config: VmConfig, opts: MachineOptions): Promise<MachinePlan> {
  if (!Number.isInteger(config.memoryMiB) || config.memoryMiB < 64) {
    throw new ConfigError(`--memory ${config.memoryMiB}: the kvm engine needs at least 64 MiB`);
  }
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > 255) {
    throw new ConfigError(`--cpus ${config.cpus}: the kvm engine boots 1–255 vCPUs`);
  }
  const workload = opts.workloadDevices ?? true;
  const emulated = opts.emulated ?? isEmulatedKvm();
  const kernel = await findKernel({ kernel: config.kernel, modules: config.modules });
  // The ELF vmlinux skips the bzImage's self-decompression (~80 s where guest code is emulated).
  const image = bootImage(kernel, "elf");
  const shares = workload ? [...(config.root ? [config.root] : []), ...config.volumes] : [];
  for (const s of shares) await checkShare(s);
  const wantVirtio = workload || config.cpus === 1;
  const virtio: MachinePlan["virtio"] = [];
  if (wantVirtio) virtio.push({ name: "virtio-console", kind: "console" });
  for (const s of shares) virtio.push({ name: `virtio-fs-${s.tag}`, kind: "fs", share: s });
  if (workload && config.net) virtio.push({ name: "virtio-net", kind: "net" });
  if (LAYOUT.DEVICE_IRQ_FIRST + virtio.length - 1 > LAYOUT.DEVICE_IRQ_LAST) {
    throw new ConfigError(
      `too many virtio devices: ${virtio.length} (GSIs ${LAYOUT.DEVICE_IRQ_FIRST}–${LAYOUT.DEVICE_IRQ_LAST})`,
    );
  }
  const cmdline = [
    baseCmdline(emulated),
    workload ? `skiff.hostname=${config.hostname}` : "",
    opts.cmdline ?? "",
    config.cmdlineExtra,
  ].filter(Boolean).join(" ");
  return {
    config,
    kernel,
    image,
    shares,
    workload,
    emulated,
    cpus: wantVirtio ? 1 : config.cpus,
    virtio,
    mailbox: opts.mailbox ? (opts.mailbox === true ? {} : opts.mailbox) : null,
    cmdline,
  };
}

/** The devices as the snapshot-cache key sees them (placement and configuration). */
function planDevices(p: MachinePlan): unknown[] {
  return [
    { uart: "ttyS0", port: 0x3f8 },
    { i8042: 0x60 },
    { sleep: LAYOUT.SLEEP_PORT },
    ...p.virtio.map((v, i) => ({
      name: v.name,
      kind: v.kind,
      base: MemoryLayout.virtioMmioBase(i),
      gsi: LAYOUT.DEVICE_IRQ_FIRST + i,
      ...(v.kind === "console" && p.workload
        ? { ports: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr, PORT_NAMES.status] }
        : {}),
    })),
    ...(p.mailbox
      ? [{
        mailbox: p.mailbox.regsBase ?? MAILBOX_LAYOUT.REGS_BASE,
        data: p.mailbox.dataBase ?? MAILBOX_LAYOUT.DATA_BASE,
        size: p.mailbox.dataSize ?? MAILBOX_LAYOUT.DATA_SIZE,
      }]
      : []),
    { cpus: p.cpus },
  ];
}

/**
 * Adds the vCPUs and devices of `p` to `vm` over `memory`. With `states` (a
 * restore), each virtio transport gets its saved state before its Worker
 * spec is made, and the mailbox uses the data region already in `memory`.
 */
function attachDevices(
  vm: Vm,
  memory: RegionMemory,
  p: MachinePlan,
  opts: MachineOptions,
  cleanups: (() => void | Promise<void>)[],
  states?: Record<string, unknown>,
  savedCpuid = false,
): Omit<KvmDevices, "vm" | "memory" | "cmdline" | "emulated"> {
  // A restore whose snapshot has every vCPU's CPUID sets that table itself;
  // fetching and setting the supported one would add ~0.8 ms to it.
  const cpuid = savedCpuid ? null : vm.kvm.supportedCpuid();
  for (let i = 0; i < p.cpus; i++) {
    const v = vm.createVcpu();
    if (cpuid) v.fd.setCpuid2(cpuid);
  }

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
  let consoleDev: VirtioConsole | null = null;
  p.virtio.forEach((slot, i) => {
    let device: VirtioDevice;
    if (slot.kind === "console") {
      consoleDev = new VirtioConsole(
        p.workload
          ? {
            portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout, PORT_NAMES.stderr, PORT_NAMES.status],
          }
          : {},
      );
      device = consoleDev;
    } else if (slot.kind === "fs") {
      const s = slot.share!;
      const fs = shareFileSystem(s);
      cleanups.push(() => fs.close());
      device = new VirtioFs({ tag: s.tag, server: new FuseServer(fs) });
    } else {
      // skiff's user-mode network stack terminates the guest's frames.
      const net = new VirtioNet({ mac: new Uint8Array([0x52, 0x54, 0, 0x6b, 0x69, 0x66]) });
      const options = p.config.net!;
      let stack: NetStack;
      try {
        // Binds the --publish ports now: a taken one fails before the guest runs.
        stack = new NetStack({
          hostLoopback: options.hostLoopback,
          publish: options.publish.map((r) => ({
            hostIp: r.hostIp,
            hostPort: r.hostPort,
            guestPort: r.guestPort,
            proto: r.protocol,
          })),
        });
      } catch (e) {
        throw new ConfigError((e as Error).message, { cause: e });
      }
      stack.ready.catch((e) => console.error(`skiff: ${(e as Error).message}`));
      const detach = attachVirtioNet(stack, net);
      cleanups.push(async () => {
        detach();
        await stack[Symbol.asyncDispose]();
      });
      device = net;
    }
    const base = MemoryLayout.virtioMmioBase(i);
    const gsi = LAYOUT.DEVICE_IRQ_FIRST + i;
    const host = new VirtioMmioHost(device, memory, {
      irq: () => vm.pulseIrq(gsi),
      onDeviceError: (e) => {
        if (p.config.verbose) console.error(`skiff: ${slot.name}: ${(e as Error).message ?? e}`);
      },
    });
    // A restored transport's state must be in its Worker config (host.spec).
    const saved = states?.[slot.name];
    if (saved) host.restore(saved as MmioState);
    vm.onDeviceMessage(slot.name, (m) => host.handle(m));
    vm.addDevice(host.spec(slot.name, base, gsi));
    virtio.push({ name: slot.name, base, gsi, host });
  });

  let mailbox: Mailbox | null = null;
  if (p.mailbox) {
    const mb = new Mailbox(p.mailbox);
    cleanups.push(() => mb[Symbol.dispose]());
    // A restore's memory already holds the data region (it is saved with RAM).
    mb.attach(vm, states ? memory : undefined);
    mailbox = mb;
  }

  const persist = () => {
    const m = new Map<string, Persist>();
    m.set("uart", { save: () => uart.save(), restore: (s) => uart.restore(s as UartSnapshot) });
    for (const v of virtio) {
      // Restored before the Workers were made (above); nothing more to do then.
      m.set(v.name, { save: () => v.host.save(), restore: () => {} });
    }
    if (mailbox) m.set("mailbox", mailbox);
    return m;
  };
  return { uart, console: consoleDev, virtio, mailbox, persist, log: () => log };
}

function disposer(cleanups: (() => void | Promise<void>)[]): () => Promise<void> {
  return async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // releasing one resource must not keep the others
      }
    }
    cleanups.length = 0;
  };
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
  return buildPlanned(await planMachine(config, opts), opts);
}

async function buildPlanned(p: MachinePlan, opts: MachineOptions): Promise<KvmMachine> {
  const progress = opts.progress ?? (() => {});
  const { config } = p;
  const size = (await Deno.stat(p.image.path)).size;
  progress(
    `skiff: loading kernel ${p.image.path} (${(size / MiB).toFixed(1)} MiB, ${p.image.format})`,
  );
  const kernelBytes = await Deno.readFile(p.image.path);

  const layout = MemoryLayout.fromMiB(config.memoryMiB);
  const memory = RegionMemory.memfd(layout.ramRegions, "skiff-guest");
  const cleanups: (() => void | Promise<void>)[] = [() => memory[Symbol.dispose]()];
  const dispose = disposer(cleanups);
  try {
    const vm = Vm.create({ memory });
    cleanups.push(() => vm.close());
    if (p.cpus < config.cpus) {
      progress(
        `skiff: kvm engine: using 1 vCPU (asked for ${config.cpus}): ` +
          "virtio transports keep per-vCPU state",
      );
    }
    const devices = attachDevices(vm, memory, p, opts, cleanups);
    let kernel: LoadedKernel;
    try {
      kernel = loadKernel(memory, kernelBytes, p.image.path);
    } catch (e) {
      throw new ConfigError((e as Error).message, { cause: e });
    }
    const cmdlineMax = Math.min(kernel.cmdlineMax + 1, LAYOUT.CMDLINE_MAX);
    let cmdlineLen: number;
    try {
      cmdlineLen = writeCmdline(memory, LAYOUT.CMDLINE_START, p.cmdline, cmdlineMax);
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
      cpus: p.cpus,
      virtio: devices.virtio.map((v) => ({ base: v.base, gsi: v.gsi })),
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
      ...devices,
      cmdline: p.cmdline,
      kernel,
      kernelPath: p.image.path,
      e820,
      acpi,
      initrd,
      emulated: p.emulated,
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/**
 * Restores a machine of plan `p` from snapshot directory `dir`: the
 * snapshot's memory mapped copy-on-write, the same devices over it, then
 * VM, vCPU and device state (`snapshot/hv_snapshot.ts`). Not started.
 * Throws (a `SnapshotError` for a bad snapshot) with everything released.
 */
async function restorePlanned(
  p: MachinePlan,
  dir: string,
  opts: MachineOptions,
): Promise<RestoredKvmMachine> {
  const cleanups: (() => void | Promise<void>)[] = [];
  const dispose = disposer(cleanups);
  let devices: ReturnType<typeof attachDevices> | null = null;
  try {
    const r = await restoreHvVm(dir, (ctx) => {
      const vm = Vm.create({ memory: ctx.memory });
      try {
        const m = ctx.snapshot.manifest;
        const savedCpuid = m.vcpus.every((v) => v.cpuid);
        devices = attachDevices(vm, ctx.memory, p, opts, cleanups, m.devices, savedCpuid);
      } catch (e) {
        // restoreHvVm releases the memory when build throws; the VM is ours.
        void vm.close();
        throw e;
      }
      return { vm, devices: devices.persist() };
    });
    cleanups.unshift(() => r.memory[Symbol.dispose]());
    cleanups.push(() => r.vm.close());
    return {
      vm: r.vm,
      memory: r.memory,
      ...devices!,
      cmdline: p.cmdline,
      emulated: p.emulated,
      snapshotDir: dir,
      [Symbol.asyncDispose]: dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

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
        return await this.#serve(m, io, signal, async (stopped) => {
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
    using abort = abortWatch(signal);
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
      return await this.#serve(m, io, signal, async () => {
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

  /**
   * Wires the workload's streams to the console ports, starts the command
   * with `start`, and resolves with its status: from the mailbox result, or
   * from the status port (one-shot). A guest stop first is a VmError.
   */
  async #serve(
    m: KvmDevices,
    io: WorkloadIO,
    signal: AbortSignal | undefined,
    start: (
      stopped: StopWatch,
    ) => Promise<{ kind: "status" } | { kind: "mailbox"; result: Promise<number> }>,
    stopped = new StopWatch(),
  ): Promise<ExitStatus> {
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
    using abort = abortWatch(signal);
    const aborted = abort.promise;
    try {
      const started = await Promise.race([start(stopped), aborted]);
      void pumpStdin();
      const result = started.kind === "status" ? status : started.result.then(mailboxStatus);
      return await Promise.race([result, stopped.rejection(m), aborted]);
    } finally {
      await reader?.cancel().catch(() => {});
      await m.vm.stop().catch(() => {});
      await writes;
      stdoutW.releaseLock();
      stderrW.releaseLock();
    }
  }
}

/** The exit status of a mailbox COMMAND result (init/MAILBOX.md). */
function mailboxStatus(result: number): ExitStatus {
  if (result >= 0 && result <= 255) return { kind: "exited", code: result };
  const errno = -result;
  const name = errno > 0 && errno < LINUX_ERRNO_NAMES.length && LINUX_ERRNO_NAMES[errno]
    ? LINUX_ERRNO_NAMES[errno]
    : `errno-${errno}`;
  throw new VmError(`the guest init could not run the command: ${name} (result ${result})`);
}

/**
 * `promise` rejects when `signal` aborts (marked handled: it may never be
 * raced); disposing removes the listener.
 */
function abortWatch(signal?: AbortSignal): { promise: Promise<never> } & Disposable {
  let onAbort = () => {};
  const promise = new Promise<never>((_, reject) => {
    if (!signal) return;
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  promise.catch(() => {});
  return { promise, [Symbol.dispose]: () => signal?.removeEventListener("abort", onAbort) };
}

/**
 * The VM's stop, once it is known (the VM may be started later than the
 * watch is made): {@link rejection} rejects when it stops before the
 * command finished.
 */
class StopWatch {
  #resolve!: (p: Promise<VmStop>) => void;
  /** Settles as the VM's `wait()` does. */
  readonly promise: Promise<VmStop>;
  #set = false;

  constructor() {
    this.promise = new Promise<Promise<VmStop>>((r) => (this.#resolve = r)).then((p) => p);
    this.promise.catch(() => {});
  }

  set(wait: Promise<VmStop>): void {
    if (this.#set) return;
    this.#set = true;
    wait.catch(() => {});
    this.#resolve(wait);
  }

  /** Rejects with a one-line VmError when the VM stops (an exit error is explained). */
  rejection(m: KvmDevices): Promise<never> {
    const p = this.promise.then((stop): never => {
      throw new VmError(
        `the guest stopped (${stop.kind}${stop.source ? ` from ${stop.source}` : ""}) ` +
          `before the command finished${lastLine(m.log())}`,
      );
    }, (e) => {
      throw explainExit(e, m.log(), m.emulated);
    });
    p.catch(() => {});
    return p;
  }

  dispose(): void {
    if (!this.#set) this.#resolve(new Promise<VmStop>(() => {}));
  }
}

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
