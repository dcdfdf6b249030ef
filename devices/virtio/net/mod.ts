/**
 * virtio-net (virtio 1.2 §5.1) as an attachment of skiff's user-mode network stack.
 *
 * @module
 */

export * from "./device.ts";
export * from "./persist.ts";
