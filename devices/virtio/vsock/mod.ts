/**
 * virtio-vsock (virtio 1.2 §5.10): stream connections between host ports and
 * guest ports as Web streams, with credit-based flow control both ways.
 *
 * ```ts
 * const vsock = new VirtioVsock({ guestCid: 3 });
 * // … attach it to a transport (MMIO, or vhost-user through VhostUserVirtioServer) …
 * const stream = await vsock.connect(1024); // a guest listener on port 1024
 * await stream.readable.pipeTo(Deno.stdout.writable);
 * for await (const conn of vsock.listen(2000)) conn.close(); // guest → host port 2000
 * ```
 *
 * @module
 */

export {
  DEFAULT_BUFFER_SIZE,
  DEFAULT_MAX_CONNECTIONS,
  VirtioVsock,
  VSOCK_QUEUE,
  type VsockConnectOptions,
  type VsockCounters,
  type VsockListenOptions,
  type VsockOptions,
} from "./device.ts";
export {
  type VsockCloseReason,
  VsockError,
  type VsockErrorCode,
  type VsockStream,
  type VsockStreamStats,
} from "./connection.ts";
export { DEFAULT_BACKLOG, type VsockConnectionHandler, VsockListener } from "./listener.ts";
export { isGuestCid, parseVsockState, VSOCK_STATE_VERSION, type VsockState } from "./persist.ts";
export * from "./packet.ts";
