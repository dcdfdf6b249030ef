/**
 * virtio devices over the virtio-mmio transport (virtio 1.2): split
 * virtqueues, chain readers/writers, the device/transport split, the mmio
 * transport, and the console, fs, net and vsock devices.
 *
 * @module
 */

export * from "./queue.ts";
export * from "./chain.ts";
export * from "./device.ts";
export * from "./mmio.ts";
export * as console from "./console/mod.ts";
export * from "./mmio_remote.ts";
export * as fs from "./fs/mod.ts";
export * as net from "./net/mod.ts";
export * as vsock from "./vsock/mod.ts";
