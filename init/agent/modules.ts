/**
 * The kernel modules the agent loads: apart from the initramfs builder, so
 * that the agent initramfs's identity (hv/engine/init_identity.ts, on every
 * snapshot-cache lookup) does not load the code generator.
 *
 * @module
 */

/** Modules the agent loads (with their dependencies), in this order. */
export const AGENT_MODULES: readonly string[] = [
  "virtio_mmio",
  "virtio_pci",
  "virtio_console",
  "vsock",
  "vmw_vsock_virtio_transport_common",
  "vmw_vsock_virtio_transport",
  "fuse",
  "virtiofs",
  "overlay",
  "failover",
  "net_failover",
  "virtio_net",
];
