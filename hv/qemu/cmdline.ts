/**
 * The QEMU command line for a skiff guest, on one of two machines:
 *
 * - `microvm` with ACPI (the Debian kernel finds the virtio-mmio devices
 *   through the DSDT), every device on the command line, including one
 *   `vhost-user-fs-device` per share. The L3q tests of devices and of the
 *   one-shot init (init/, devices/vhost_user/, devices/virtio/vsock/) boot
 *   their guests this way; the engine does not: it cannot be snapshotted
 *   with vhost-user devices (QEMU 7.2 refuses to migrate them) and has no
 *   hot-plug without `pcie_ports=native` and pciehp's fixed 120 ms link wait.
 * - `q35` — the engine's machine — trimmed to what skiff needs ("q35-lean": no SATA, SMBus, SMM,
 *   vmport, i8042 or HPET), `-display none` (so SeaBIOS writes nothing to the
 *   serial console), N `pcie-root-port`s for hot-plug, and no vhost-user
 *   device at all: virtio-fs, vsock and the NIC are hot-plugged over QMP
 *   (hv/qemu/hotplug.ts), so the machine can be captured by migration
 *   (hv/qemu/persist.ts). virtio-serial is `virtio-serial-pci` on `pcie.0`.
 *
 * On microvm an optional `vhost-user-vsock-device` may be on the command
 * line too (tests of the vsock device); on q35 vsock is hot-plugged.
 *
 * Guest RAM is shared (`share=on`), so a vhost-user back-end can map it: a
 * memfd, or a file the caller names (on tmpfs), which is what a snapshot
 * copies. No default devices; the serial console and every virtio-serial
 * port are Unix sockets skiff listens on (QEMU connects as the client).
 *
 * @module
 */

import { MAX_CPUS, MIN_MEMORY_MIB } from "../config.ts";
import { pciAddr, type PcieLayout, planPcie } from "./slots.ts";

/** A named virtio-serial port (`/sys/class/virtio-ports/vportNpM/name` in the guest). */
export interface SerialPortSpec {
  /** Chardev id (unique, `[a-z0-9_]`). */
  id: string;
  /** Port name the guest sees. */
  name: string;
  /** Unix socket skiff listens on. */
  socketPath: string;
}

/** A virtio-fs share served over vhost-user. */
export interface FsDeviceSpec {
  /** Chardev id (unique). */
  id: string;
  /** virtio-fs tag (≤ 36 bytes, virtio 1.2 §5.11.4). */
  tag: string;
  /** The vhost-user back-end's Unix socket. */
  socketPath: string;
}

/** A virtio-vsock device served over vhost-user (`vhost-user-vsock-device`). */
export interface VsockDeviceSpec {
  /** Chardev id (unique). */
  id: string;
  /** The vhost-user back-end's Unix socket (it supplies the guest CID through GET_CONFIG). */
  socketPath: string;
}

/** Everything {@link qemuArgs} needs. */
export interface QemuLaunchSpec {
  /** "tcg" (software) or "kvm". */
  accel: "tcg" | "kvm";
  cpus: number;
  memoryMiB: number;
  /** bzImage (or ELF vmlinux) path. */
  kernel: string;
  /** initramfs path. */
  initrd: string;
  /** Kernel command line. */
  append: string;
  /** QMP socket skiff listens on. */
  qmpSocket: string;
  /** Serial console (ttyS0) socket skiff listens on, or null to discard it. */
  consoleSocket: string | null;
  /** virtio-serial ports. */
  ports: SerialPortSpec[];
  /** virtio-fs devices. */
  fs: FsDeviceSpec[];
  /** `-netdev stream` socket for a virtio-net NIC (skiff's network stack), or null. */
  netSocket?: string | null;
  /** Guest MAC address for the NIC. */
  mac?: string;
  /** The machine (default `microvm`; see the module documentation). */
  machine?: QemuMachine;
  /** q35: number of `pcie-root-port`s for hot-plug (default {@link DEFAULT_ROOT_PORTS}). */
  rootPorts?: number;
  /**
   * Guest RAM as `memory-backend-file,share=on` at this path (a file in a
   * private tmpfs directory; QEMU creates it, or maps it as it is when it
   * already has the right size, as a restore does). Default: a shared memfd.
   */
  ramFile?: string;
  /**
   * Start as the target of a migration: `-incoming defer -S` (QEMU waits for
   * `migrate-incoming` and stays paused after it until `cont`).
   */
  incoming?: boolean;
  /** A vhost-user virtio-vsock device, or null. */
  vsock?: VsockDeviceSpec | null;
}

/** The machine types skiff drives. */
export type QemuMachine = "microvm" | "q35";

/** Root ports a q35 machine gets unless told otherwise: root fs, a volume, vsock, a NIC. */
export const DEFAULT_ROOT_PORTS = 4;

/**
 * q35 with what skiff does not use turned off (QEMU docs/system/i386/pc.rst
 * machine properties): no AHCI, SMBus, SMM, VMware port, PS/2 controller or
 * HPET. Measured: ≈0.1 s less to a cold boot than plain q35 under TCG.
 */
export const Q35_LEAN = "q35,sata=off,smbus=off,smm=off,vmport=off,i8042=off,hpet=off";

/**
 * The TCG vCPU: every feature TCG emulates except LA57 and ERMS.
 *
 * - LA57: with it the Debian kernel (CONFIG_X86_5LEVEL=y) turns on 5-level
 *   paging, so every TLB refill in QEMU's software MMU walks one more level;
 *   a skiff guest needs no 57-bit addresses (checked: VmallocTotal in the
 *   guest drops from 12.5 PiB to 32 TiB). Measured here, the gain is within
 *   noise (≤1% of QEMU's CPU time for a cold boot and for 300 execs); kept
 *   as the cheaper MMU.
 * - ERMS (Enhanced REP MOVSB/STOSB, CPUID.(EAX=07H,ECX=0):EBX[9]): with it the
 *   kernel's memcpy, memset, clear_page and copy_{to,from}_user, and glibc's
 *   large copies, are `rep movsb`/`rep stosb`. QEMU's TCG runs a REP string
 *   instruction one element per pass through its translated block, so
 *   byte-sized elements cost 8 times the passes of the `rep movsq` loops the
 *   kernel uses without ERMS. Measured here (interleaved, same run): a cold
 *   `skiff run -- true` 1794 → 1676 ms (median of 6), `spawn-throughput`
 *   (256 MiB through `cat`) 77 → 167 MiB/s, `exec-latency` 30.5 → 26.5 ms; a
 *   cache hit unchanged (450 vs 449 ms, median of 14).
 */
export const TCG_CPU = "max,la57=off,erms=off";

/**
 * The host TSC frequency in kHz (from /proc/cpuinfo's "cpu MHz", which is the
 * nominal TSC rate on CPUs with `tsc_known_freq`), or null when unknown.
 */
export function hostTscKhz(cpuinfo?: string): number | null {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = Deno.readTextFileSync("/proc/cpuinfo");
    } catch {
      return null;
    }
  }
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(text);
  const khz = m ? Math.round(Number(m[1]) * 1000) : NaN;
  return khz > 0 ? khz : null;
}

/**
 * Kernel arguments that make a TCG guest's clock setup independent of host
 * load. Under TCG the guest TSC runs at the host TSC's rate, but the kernel's
 * calibration against the PIT measures a short window of emulated time; on a
 * busy host (measured here: load 6 on 2 cores) it fails ("tsc: Unable to
 * calibrate against PIT"), and the boot then hangs. Giving the frequency
 * (`tsc_early_khz`, Documentation/admin-guide/kernel-parameters.txt) skips the
 * calibration, and `tsc=reliable` stops the clocksource watchdog from
 * discarding the TSC when the host preempts QEMU. Arguments the caller set
 * already are kept.
 */
export function withTcgClock(append: string, khz = hostTscKhz()): string {
  const extra: string[] = [];
  if (khz && !/(^|\s)tsc_early_khz=/.test(append)) extra.push(`tsc_early_khz=${khz}`);
  if (!/(^|\s)tsc=/.test(append)) extra.push("tsc=reliable");
  return [append, ...extra].filter((s) => s).join(" ");
}

/**
 * The kernel command line QEMU passes: under TCG with {@link withTcgClock},
 * and on q35 also `no_timer_check`: the kernel's check that the 8254 timer
 * reaches the IO-APIC (arch/x86/kernel/apic/io_apic.c `check_timer`) busy-waits
 * for ticks, and on a loaded host it stalled a TCG boot here for over 40 s
 * ("..MP-BIOS bug: 8254 timer not connected to IO-APIC"). QEMU's routing is
 * known to be right, so the check only costs time.
 */
function kernelAppend(spec: QemuLaunchSpec, machine: QemuMachine): string {
  if (spec.accel !== "tcg") return spec.append;
  let append = withTcgClock(spec.append);
  if (machine === "q35" && !/(^|\s)no_timer_check(\s|$)/.test(append)) {
    append += " no_timer_check";
  }
  return append;
}

/** QEMU's option-value escaping: a comma inside a value is written twice. */
export function qemuEscape(value: string): string {
  return value.replaceAll(",", ",,");
}

const ID = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** Ids skiff's command line uses itself (memory backend, QMP, console, virtio-serial bus). */
const RESERVED_IDS = new Set(["mem", "qmp", "con", "vser0", "net0"]);

/**
 * The placement on `pcie.0` of a q35 spec (root ports, then virtio-serial),
 * or null for microvm. Deterministic: the same spec gives the same layout.
 */
export function pcieLayoutOf(spec: QemuLaunchSpec): PcieLayout | null {
  if ((spec.machine ?? "microvm") !== "q35") return null;
  return planPcie(spec.rootPorts ?? DEFAULT_ROOT_PORTS, spec.ports.length > 0 ? 1 : 0);
}

/** Validates `spec` and returns the argument vector (without the binary). */
export function qemuArgs(spec: QemuLaunchSpec): string[] {
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > MAX_CPUS) {
    throw new RangeError(`cpus must be an integer in 1..${MAX_CPUS}, got ${spec.cpus}`);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < MIN_MEMORY_MIB) {
    throw new RangeError(`memoryMiB must be an integer ≥ ${MIN_MEMORY_MIB}, got ${spec.memoryMiB}`);
  }
  const machine = spec.machine ?? "microvm";
  if (machine !== "microvm" && machine !== "q35") {
    throw new RangeError(`machine must be "microvm" or "q35", got ${JSON.stringify(machine)}`);
  }
  if (machine === "q35" && (spec.fs.length > 0 || spec.netSocket || spec.vsock)) {
    // A vhost-user device on the command line would make the machine
    // unmigratable (QEMU 7.2: "non-migratable device …/vhost-user-fs"), and
    // one path for cold boots and restores is the point of q35 here.
    throw new RangeError(
      "q35 takes no virtio-fs, vsock or network device on the command line: hot-plug them (hv/qemu/hotplug.ts)",
    );
  }
  if (machine === "microvm" && spec.rootPorts !== undefined) {
    throw new RangeError("rootPorts needs machine q35 (microvm hot-plug is not used by skiff)");
  }
  const ids = new Set<string>();
  for (const { id } of [...spec.ports, ...spec.fs, ...(spec.vsock ? [spec.vsock] : [])]) {
    if (!ID.test(id) || ids.has(id) || RESERVED_IDS.has(id) || /^rp\d+$/.test(id)) {
      throw new RangeError(`bad or duplicate chardev id '${id}'`);
    }
    ids.add(id);
  }
  if (spec.ramFile !== undefined && !spec.ramFile.startsWith("/")) {
    throw new RangeError(`ramFile must be an absolute path, got '${spec.ramFile}'`);
  }
  const e = qemuEscape;
  const layout = pcieLayoutOf(spec);
  const ram = spec.ramFile
    // share=on: the file is the guest's RAM, seen by vhost-user back-ends and
    // read by a capture; prealloc is off (tmpfs allocates on first touch).
    ? `memory-backend-file,id=mem,size=${spec.memoryMiB}M,mem-path=${e(spec.ramFile)},share=on`
    : `memory-backend-memfd,id=mem,size=${spec.memoryMiB}M,share=on`;
  const args = [
    "-nodefaults",
    "-no-user-config",
    // q35 boots through SeaBIOS, which paints the serial console under
    // -nographic; -display none keeps ttyS0 to the kernel's output.
    ...(machine === "q35" ? ["-display", "none"] : ["-nographic"]),
    "-no-reboot",
    // microvm (QEMU docs/system/i386/microvm.rst): no PCI, virtio-mmio
    // transports announced in the ACPI DSDT with acpi=on.
    "-M",
    machine === "q35" ? Q35_LEAN : "microvm,acpi=on",
    "-accel",
    spec.accel,
    "-cpu",
    spec.accel === "kvm" ? "host" : TCG_CPU,
    "-smp",
    String(spec.cpus),
    "-m",
    `${spec.memoryMiB}M`,
    // Shared RAM: vhost-user back-ends mmap it from the fds QEMU sends.
    "-object",
    ram,
    "-machine",
    "memory-backend=mem",
  ];
  if (machine === "microvm") {
    // Modern (virtio 1.x) virtio-mmio: libvhost-user style back-ends and
    // skiff's own require VIRTIO_F_VERSION_1.
    args.push("-global", "virtio-mmio.force-legacy=false");
  }
  for (const p of layout?.rootPorts ?? []) {
    args.push(
      "-device",
      `pcie-root-port,id=${p.id},bus=pcie.0,chassis=${p.chassis},slot=${p.slot},addr=${
        pciAddr(p.addr)
      }`,
    );
  }
  args.push(
    "-kernel",
    spec.kernel,
    "-initrd",
    spec.initrd,
    "-append",
    kernelAppend(spec, machine),
    "-chardev",
    `socket,id=qmp,path=${e(spec.qmpSocket)}`,
    "-mon",
    "chardev=qmp,mode=control",
  );
  if (spec.consoleSocket) {
    args.push("-chardev", `socket,id=con,path=${e(spec.consoleSocket)}`, "-serial", "chardev:con");
  } else {
    args.push("-serial", "null");
  }
  if (spec.ports.length > 0) {
    const maxPorts = "max_ports=" + Math.max(2, spec.ports.length + 1);
    args.push(
      "-device",
      layout
        ? `virtio-serial-pci,id=vser0,bus=pcie.0,addr=${pciAddr(layout.deviceAddrs[0])},${maxPorts}`
        : `virtio-serial-device,${maxPorts}`,
    );
    for (const p of spec.ports) {
      args.push(
        "-chardev",
        `socket,id=${p.id},path=${e(p.socketPath)}`,
        "-device",
        `virtserialport,chardev=${p.id},name=${e(p.name)}`,
      );
    }
  }
  for (const f of spec.fs) {
    if (new TextEncoder().encode(f.tag).length > 36) {
      throw new RangeError(`virtio-fs tag '${f.tag}' is longer than 36 bytes`);
    }
    args.push(
      "-chardev",
      `socket,id=${f.id},path=${e(f.socketPath)}`,
      "-device",
      `vhost-user-fs-device,chardev=${f.id},tag=${e(f.tag)}`,
    );
  }
  if (spec.vsock) {
    args.push(
      "-chardev",
      `socket,id=${spec.vsock.id},path=${e(spec.vsock.socketPath)}`,
      "-device",
      `vhost-user-vsock-device,chardev=${spec.vsock.id}`,
    );
  }
  if (spec.netSocket) {
    args.push(
      "-netdev",
      `stream,id=net0,server=off,addr.type=unix,addr.path=${e(spec.netSocket)}`,
      "-device",
      `virtio-net-device,netdev=net0${spec.mac ? `,mac=${spec.mac}` : ""}`,
    );
  }
  if (spec.incoming) args.push("-incoming", "defer", "-S");
  return args;
}

/**
 * The machine as a migration target sees it: {@link qemuArgs} with every
 * host path (sockets, RAM file, kernel, initramfs) replaced by a fixed word
 * and without `-incoming`. Two specs with the same description build the
 * same device set, RAM blocks and guest-visible state — what a migration
 * stream must find on the restoring side. Kernel and initramfs contents are
 * keyed separately (by hash). Part of the qemu engine's snapshot key and
 * checked again at restore.
 */
export function machineDescription(spec: QemuLaunchSpec): string[] {
  return qemuArgs({
    ...spec,
    kernel: "KERNEL",
    initrd: "INITRD",
    qmpSocket: "QMP",
    consoleSocket: spec.consoleSocket ? "CONSOLE" : null,
    ports: spec.ports.map((p) => ({ ...p, socketPath: "PORT" })),
    fs: spec.fs.map((f) => ({ ...f, socketPath: "FS" })),
    netSocket: spec.netSocket ? "NET" : null,
    ramFile: spec.ramFile ? "/RAM" : undefined,
    incoming: false,
  });
}
