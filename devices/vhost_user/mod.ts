/**
 * vhost-user back-ends (QEMU docs/interop/vhost-user.rst): the protocol over
 * a Unix socket, guest memory received as memfd regions, kick/call eventfds,
 * and virtio-fs served by skiff's FUSE server — a drop-in for QEMU's
 * `vhost-user-fs-device` (`skiff virtiofsd`). {@link VhostUserVirtioServer}
 * serves any `VirtioDevice` (devices/virtio) the same way, e.g. virtio-vsock
 * to QEMU's `vhost-user-vsock-device`.
 *
 * ```ts
 * const fs = new PassthroughFs("/srv", { readOnly: true });
 * await using server = new VhostUserServer("/tmp/fs.sock", new VirtioFsDevice(new FuseServer(fs)));
 * // qemu … -chardev socket,id=fs,path=/tmp/fs.sock -device vhost-user-fs-device,chardev=fs,tag=srv
 * ```
 *
 * @module
 */

export {
  VhostUserBackend,
  type VhostUserBackendOptions,
  type VhostUserDevice,
  VhostUserServer,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./backend.ts";
export { VirtioFsDevice } from "./fs.ts";
export { MemTable } from "./mem_table.ts";
export {
  VhostUserVirtioBackend,
  type VhostUserVirtioOptions,
  VhostUserVirtioServer,
  type VhostUserVirtioServerOptions,
} from "./virtio_backend.ts";
export * from "./protocol.ts";
export { UnixConn, UnixListener } from "./socket.ts";
export { StopSignal } from "../../kvm_ffi/eventfd.ts";
