/**
 * The kvm engine's resources: what a machine is built from, worked out
 * before any KVM resource exists (kernel, image format, devices and their
 * placement, command line), and the device description that keys the
 * snapshot cache.
 *
 * @module
 */

import { LAYOUT, MemoryLayout } from "../boot/layout.ts";
import { bootImage, findKernel, type KernelInfo } from "../kernel/cache.ts";
import { ConfigError } from "../errors.ts";
import { MAX_CPUS, MIN_MEMORY_MIB, type VmConfig } from "../config.ts";
import { EMULATED_KVM_CMDLINE, isEmulatedKvm } from "./emulated.ts";
import { MUX_TAG } from "../engine/session.ts";
import type { DeviceBackends } from "./backends.ts";

/** First virtio-mmio window (3 GiB: the start of the 32-bit MMIO hole). */
export const VIRTIO_BASE = LAYOUT.VIRTIO_MMIO_START;
/** Distance between virtio windows. */
export const VIRTIO_STRIDE = LAYOUT.VIRTIO_MMIO_STRIDE;
/** GSI of the first virtio device (after the legacy ISA lines skiff uses: UART on 4). */
export const VIRTIO_GSI_BASE = LAYOUT.DEVICE_IRQ_FIRST;
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
/** Options of {@link buildKvmMachine}. */
export interface MachineOptions {
  /** Serial console (ttyS0) output, as it arrives. */
  onConsole?: (bytes: Uint8Array) => void;
  /** Progress lines for slow steps (loading the kernel). */
  progress?: (line: string) => void;
  /**
   * The guest agent's device set (init/agent): vsock to reach the agent, one
   * virtio-fs device (the share mux, mounted after READY) and a NIC (attached
   * to a network stack per session). Nothing of a run's shares or network is
   * in the machine, so one snapshot serves every command and share. Without
   * it the machine has the plain virtio console (hvc0) only
   * (`skiff boot --console-log`, tests).
   */
  agent?: boolean;
  /** The host back-ends of the devices (default: none — a virtio-fs device then cannot be made). */
  backends?: DeviceBackends;
  /** Override the emulated-KVM detection (tests). */
  emulated?: boolean;
  /**
   * An initramfs to hand the kernel: placed page-aligned at the top of low
   * RAM under the kernel's `initrd_addr_max` and announced in boot_params.
   */
  initrd?: Uint8Array;
}
/** A planned virtio device: its name (snapshot id) and what it is made from. */
export type PlannedVirtio =
  | { name: string; kind: "console"; args: { ports: string[] } }
  | { name: string; kind: "fs"; args: { tag: string } }
  | { name: string; kind: "net"; args: { mac: number[] } }
  | { name: string; kind: "vsock"; args: { guestCid: number } };

/** What a machine is built from, worked out before any KVM resource exists. */
export interface MachinePlan {
  config: VmConfig;
  kernel: KernelInfo;
  image: { path: string; format: "elf" | "bzimage" };
  emulated: boolean;
  /** vCPUs (`--cpus`): vCPU 0 boots, the others wait for the kernel's INIT/SIPI. */
  cpus: number;
  /** The virtio devices in slot order (slot i: window i, GSI first + i). */
  virtio: PlannedVirtio[];
  cmdline: string;
}
/** The guest NIC's MAC address: locally administered (52:54:00 as QEMU's), then "kif". */
export const GUEST_MAC: readonly number[] = [0x52, 0x54, 0, 0x6b, 0x69, 0x66];
/** Version of the machine layout and device state a snapshot holds (part of the cache key). */
export const KVM_VMM_VERSION = "skiff-kvm-2";
/** Works out the machine for `config` (checks, kernel, devices, command line); creates nothing. */
export async function planMachine(config: VmConfig, opts: MachineOptions): Promise<MachinePlan> {
  if (!Number.isInteger(config.memoryMiB) || config.memoryMiB < MIN_MEMORY_MIB) {
    throw new ConfigError(
      `--memory ${config.memoryMiB}: the kvm engine needs at least ${MIN_MEMORY_MIB} MiB`,
    );
  }
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > MAX_CPUS) {
    throw new ConfigError(`--cpus ${config.cpus}: the kvm engine boots 1–${MAX_CPUS} vCPUs`);
  }
  const emulated = opts.emulated ?? isEmulatedKvm();
  const kernel = await findKernel({ kernel: config.kernel, modules: config.modules });
  // The ELF vmlinux skips the bzImage's self-decompression (~80 s where guest code is emulated).
  const image = bootImage(kernel, "elf");
  const virtio: PlannedVirtio[] = opts.agent
    ? agentDevices()
    : [{ name: "virtio-console", kind: "console", args: { ports: [] } }];
  const cmdline = [baseCmdline(emulated), config.cmdlineExtra].filter(Boolean).join(" ");
  return { config, kernel, image, emulated, cpus: config.cpus, virtio, cmdline };
}
/** The guest vsock CID (virtio 1.2 §5.10.4: 3 is the first CID a guest may have). */
export const AGENT_GUEST_CID = 3;

/** The agent mode's devices: vsock, the one virtio-fs device (the share mux), a NIC. */
function agentDevices(): PlannedVirtio[] {
  return [
    { name: "virtio-vsock", kind: "vsock", args: { guestCid: AGENT_GUEST_CID } },
    { name: "virtio-fs", kind: "fs", args: { tag: MUX_TAG } },
    { name: "virtio-net", kind: "net", args: { mac: [...GUEST_MAC] } },
  ];
}

/** The devices as the snapshot-cache key sees them (placement and configuration). */
export function planDevices(p: MachinePlan): unknown[] {
  return [
    { uart: "ttyS0", port: 0x3f8 },
    { i8042: 0x60 },
    { sleep: LAYOUT.SLEEP_PORT },
    ...p.virtio.map((v, i) => ({
      name: v.name,
      kind: v.kind,
      base: MemoryLayout.virtioMmioBase(i),
      gsi: LAYOUT.DEVICE_IRQ_FIRST + i,
      ...v.args,
    })),
    { cpus: p.cpus },
  ];
}
