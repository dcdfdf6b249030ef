/**
 * The vhost-user adapter (QEMU docs/interop/vhost-user.rst): the protocol
 * over a Unix socket, guest memory received as memfd regions, kick/call
 * eventfds — running any `VirtioDevice` of devices/virtio as a back-end for
 * QEMU, the same device code the kvm engine runs behind its MMIO transport:
 * virtio-fs for `vhost-user-fs-device` (also `skiff virtiofsd`), virtio-vsock
 * for `vhost-user-vsock-device`, virtio-net for `-netdev vhost-user`.
 *
 * ```ts ignore
 * const fs = new VirtioFs({ tag: "srv", server: new FuseServer(new PassthroughFs("/srv")) });
 * await using server = new VhostUserVirtioServer("/tmp/fs.sock", fs);
 * // qemu … -chardev socket,id=fs,path=/tmp/fs.sock -device vhost-user-fs-device,chardev=fs,tag=srv
 * ```
 *
 * @module
 */

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
