/**
 * virtio-console (virtio 1.2 §5.3) with multiport: hvc0 plus named ports.
 *
 * @module
 */

export * from "./device.ts";
export * from "./persist.ts";
