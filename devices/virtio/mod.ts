/**
 * virtio devices over the virtio-mmio transport (virtio 1.2): split
 * virtqueues, chain readers/writers, the device/transport split, the mmio
 * transport. Each device is its own folder with its own `mod.ts`
 * (console/, fs/, net/).
 *
 * @module
 */

export * from "./queue.ts";
export * from "./chain.ts";
export * from "./device.ts";
export * from "./mmio.ts";
export * from "./mmio_remote.ts";
