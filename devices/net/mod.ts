/**
 * skiff's user-mode TCP/IP stack: terminates a guest's Ethernet frames (ARP,
 * IPv4 with reassembly, ICMP echo, UDP, TCP, DHCP, DNS) and carries its
 * flows over ordinary host sockets (NAT), as slirp4netns and passt do.
 *
 * One {@link NetStack} per VM. Its engine runs in a Worker, in one poll
 * loop (epoll) over the guest's frame source and every host socket it owns,
 * so a request/response through the stack costs one wake-up. Attachments:
 * a TAP device ({@link TapDevice}, {@link serveTapInNetns}) or QEMU's
 * `-netdev stream` socket ({@link listenStream}) are served inside the loop;
 * skiff's in-process virtio-net ({@link attachVirtioNet}) and
 * {@link serveStream} feed it frames with {@link NetStack.input} and receive
 * them through the {@link NetLink} given to {@link NetStack.attach}, across
 * shared-memory rings. {@link NetEngine} is the engine itself, synchronous
 * and driven by callbacks (unit tests run it with fake {@link HostSockets}).
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
export {
  eventLoopScheduler,
  type HostSockets,
  type HostTcp,
  type HostTcpEvents,
  type HostUdp,
  type Scheduler,
} from "./host.ts";
export { NetEngine, type NetEngineOptions, type NetLink, type PartialChecksum } from "./stack.ts";
export { NetStack, type NetStackOptions } from "./service.ts";
export { TapDevice } from "./tap.ts";
export { type NetnsTap, netTapCommand, serveTapInNetns } from "./netns.ts";
export { attachVirtioNet } from "./virtio.ts";
export { listenStream, serveStream, type StreamCounters, type StreamListener } from "./stream.ts";
