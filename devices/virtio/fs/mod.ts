/**
 * virtio-fs (virtio 1.2 §5.11) serving skiff's FUSE server.
 *
 * @module
 */

export * from "./device.ts";
export * from "./persist.ts";
