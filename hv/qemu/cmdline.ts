/**
 * The QEMU command line for a skiff guest: a `microvm` machine with ACPI (so
 * the Debian kernel finds the virtio-mmio devices through the DSDT), guest RAM
 * from a shared memfd (so a vhost-user back-end can map it), no default
 * devices, the serial console and every virtio-serial port on Unix sockets
 * that skiff listens on (QEMU connects as the client), one
 * `vhost-user-fs-device` per virtio-fs share, and optionally a
 * `vhost-user-vsock-device`.
 *
 * @module
 */

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
  /** A vhost-user virtio-vsock device, or null. */
  vsock?: VsockDeviceSpec | null;
}

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

/** QEMU's option-value escaping: a comma inside a value is written twice. */
export function qemuEscape(value: string): string {
  return value.replaceAll(",", ",,");
}

const ID = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** Validates `spec` and returns the argument vector (without the binary). */
export function qemuArgs(spec: QemuLaunchSpec): string[] {
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > 255) {
    throw new RangeError(`cpus must be an integer in 1..255, got ${spec.cpus}`);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 64) {
    throw new RangeError(`memoryMiB must be an integer ≥ 64, got ${spec.memoryMiB}`);
  }
  const ids = new Set<string>();
  for (const { id } of [...spec.ports, ...spec.fs, ...(spec.vsock ? [spec.vsock] : [])]) {
    if (!ID.test(id) || ids.has(id) || id === "mem" || id === "qmp" || id === "con") {
      throw new RangeError(`bad or duplicate chardev id '${id}'`);
    }
    ids.add(id);
  }
  const e = qemuEscape;
  const args = [
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    // microvm (QEMU docs/system/i386/microvm.rst): no PCI, virtio-mmio
    // transports announced in the ACPI DSDT with acpi=on.
    "-M",
    "microvm,acpi=on",
    "-accel",
    spec.accel,
    "-cpu",
    spec.accel === "kvm" ? "host" : "max",
    "-smp",
    String(spec.cpus),
    "-m",
    `${spec.memoryMiB}M`,
    // Shared memfd RAM: vhost-user back-ends mmap it from the fds QEMU sends.
    "-object",
    `memory-backend-memfd,id=mem,size=${spec.memoryMiB}M,share=on`,
    "-machine",
    "memory-backend=mem",
    // Modern (virtio 1.x) virtio-mmio: libvhost-user style back-ends and
    // skiff's own require VIRTIO_F_VERSION_1.
    "-global",
    "virtio-mmio.force-legacy=false",
    "-kernel",
    spec.kernel,
    "-initrd",
    spec.initrd,
    "-append",
    spec.accel === "tcg" ? withTcgClock(spec.append) : spec.append,
    "-chardev",
    `socket,id=qmp,path=${e(spec.qmpSocket)}`,
    "-mon",
    "chardev=qmp,mode=control",
  ];
  if (spec.consoleSocket) {
    args.push("-chardev", `socket,id=con,path=${e(spec.consoleSocket)}`, "-serial", "chardev:con");
  } else {
    args.push("-serial", "null");
  }
  if (spec.ports.length > 0) {
    args.push("-device", "virtio-serial-device,max_ports=" + Math.max(2, spec.ports.length + 1));
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
  return args;
}
