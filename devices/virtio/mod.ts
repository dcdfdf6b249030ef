/**
 * virtio devices over the virtio-mmio transport (virtio 1.2): split
 * virtqueues, chain readers/writers, and (as they land) the transport and the
 * console, fs and net devices.
 *
 * @module
 */

export * from "./queue.ts";
export * from "./chain.ts";
