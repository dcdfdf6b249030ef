/**
 * skiff's user-mode TCP/IP stack: terminates a guest's Ethernet frames (ARP,
 * IPv4 with reassembly, ICMP echo, UDP, TCP, DHCP, DNS) and carries its
 * flows over ordinary host sockets (NAT), as slirp4netns and passt do.
 *
 * One {@link NetStack} per VM; attachments feed it guest frames with
 * {@link NetStack.input} and receive frames for the guest through the
 * {@link NetLink} given to {@link NetStack.attach}: virtio-net
 * ({@link attachVirtioNet}), a TAP device ({@link TapDevice},
 * {@link serveTapInNetns}) or QEMU's `-netdev stream` socket
 * ({@link serveStream}, {@link listenStream}).
 *
 * @module
 */

export {
  type NetConfig,
  type NetCounters,
  parsePublish,
  type PublishRule,
  resolveConfig,
  type ResolvedNetConfig,
} from "./config.ts";
export { denoSockets, type HostSockets, type HostTcp, type HostUdp } from "./host.ts";
export { type NetLink, NetStack, type NetStackOptions } from "./stack.ts";
export { TapDevice } from "./tap.ts";
export { type NetnsTap, netTapCommand, serveTapInNetns } from "./netns.ts";
export { attachVirtioNet } from "./virtio.ts";
export { listenStream, serveStream, type StreamCounters, type StreamListener } from "./stream.ts";
