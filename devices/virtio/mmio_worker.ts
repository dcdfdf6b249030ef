/**
 * The register half of a virtio-mmio device in a vCPU Worker (hv/device.ts):
 * every vCPU's Worker instantiates it over the same shared register file
 * (mmio_regs.ts), so any vCPU serves any register access. What the device's
 * host half must hear — a status change, a QueueNotify that no ioeventfd
 * absorbed, a config write, an error — is posted to it; interrupts the
 * register half itself raises (a bad queue configuration at DRIVER_OK) go
 * through the device's irqfd or `KVM_IRQ_LINE`.
 *
 * @module
 */

import type { DeviceContext, WorkerDevice } from "../../hv/device.ts";
import { signalEventfd } from "../../kvm_ffi/eventfd.ts";
import type { MmioHostMessage } from "./mmio_host.ts";
import { MmioRegisters, MmioShared } from "./mmio_regs.ts";
import { vcpuOwner } from "./shared_lock.ts";

/** The structured-cloneable config of {@link create} (`VirtioMmioHost.workerConfig`). */
export interface MmioWorkerConfig {
  /** The register file (`MmioShared.buffer`). */
  shared: SharedArrayBuffer;
  deviceType: number;
  queueMaxSizes: number[];
  /** Device features, decimal (bigint does not clone everywhere). */
  features: string;
  /** GSI of the device's interrupt. */
  gsi: number;
  /** When set, interrupts are raised by writing this eventfd (registered as an irqfd). */
  irqfd?: number;
}

/** vCPU Worker factory: the register half. */
export function create(config: unknown, ctx: DeviceContext): WorkerDevice {
  const cfg = config as MmioWorkerConfig;
  const shared = new MmioShared(cfg.shared, cfg.queueMaxSizes);
  const post = (m: MmioHostMessage) => ctx.post(m);
  const irqfd = cfg.irqfd;
  const raise = irqfd !== undefined ? () => signalEventfd(irqfd) : () => {
    ctx.setIrqLine(cfg.gsi, 1);
    ctx.setIrqLine(cfg.gsi, 0);
  };
  const regs = new MmioRegisters(
    shared,
    {
      deviceType: cfg.deviceType,
      queueMaxSizes: cfg.queueMaxSizes,
      features: BigInt(cfg.features),
    },
    ctx.memory,
    vcpuOwner(ctx.vcpuId),
    {
      statusChanged: () => post({ type: "status" }),
      notify: (index) => post({ type: "notify", index }),
      configWrite: (offset, data) => post({ type: "config-write", offset, data }),
      raise,
      error: (e) => post({ type: "error", message: (e as Error).message ?? String(e) }),
    },
  );
  return {
    read: (offset, data) => regs.read(offset, data),
    write: (offset, data) => regs.write(offset, data),
  };
}
