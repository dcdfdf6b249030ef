/**
 * virtio devices over the virtio-mmio transport (virtio 1.2): split
 * virtqueues, chain readers/writers, the device/transport split, the mmio
 * transport: a register file in shared memory (any vCPU's Worker answers),
 * the device's host half on the main thread, and both on one thread for tests. Each device is its own folder with its own `mod.ts`
 * (console/, fs/, net/).
 *
 * @module
 */

export * from "./queue.ts";
export * from "./chain.ts";
export * from "./device.ts";
export * from "./mmio.ts";
export * from "./mmio_host.ts";
export * from "./mmio_regs.ts";
export * from "./mmio_persist.ts";
export type { MmioWorkerConfig } from "./mmio_worker.ts";
export { HOST_OWNER, SharedLock, vcpuOwner } from "./shared_lock.ts";
