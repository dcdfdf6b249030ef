/**
 * The virtio-vsock packet header (virtio 1.2 §5.10.6, `struct
 * virtio_vsock_hdr` in linux/virtio_vsock.h): 44 little-endian bytes in front
 * of every packet on the rx and tx queues, then `len` payload bytes for
 * VIRTIO_VSOCK_OP_RW.
 *
 * Headers from the guest are parsed from a private copy (never from guest
 * memory that a vCPU could change between a check and a use).
 *
 * @module
 */

/** `sizeof(struct virtio_vsock_hdr)`: le64 src_cid, dst_cid; le32 src_port, dst_port, len; le16 type, op; le32 flags, buf_alloc, fwd_cnt. */
export const HEADER_SIZE = 44;

/** §5.10.4 / linux/vm_sockets.h: VMADDR_CID_HOST, the host's address. */
export const HOST_CID = 2;
/** linux/vm_sockets.h VMADDR_CID_ANY (-1U): not a valid guest CID. */
export const CID_ANY = 0xffffffff;

/** §5.10.6 `enum virtio_vsock_type`. */
export const VSOCK_TYPE = { STREAM: 1, SEQPACKET: 2 } as const;

/** §5.10.6 `enum virtio_vsock_op`. */
export const OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** Op number → name, for counters and messages. */
export const OP_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(OP).map(([k, v]) => [v, k]),
);

/** §5.10.6.3 VIRTIO_VSOCK_OP_SHUTDOWN flags. */
export const SHUTDOWN = {
  /** The sender will receive no more data. */
  RCV: 1,
  /** The sender will send no more data. */
  SEND: 2,
} as const;
/** Both shutdown flags. */
export const SHUTDOWN_BOTH = SHUTDOWN.RCV | SHUTDOWN.SEND;

/** §5.10.6.4 `enum virtio_vsock_event_id`. */
export const EVENT_TRANSPORT_RESET = 0;
/** `sizeof(struct virtio_vsock_event)`: le32 id. */
export const EVENT_SIZE = 4;

/**
 * Largest payload of one packet: Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (64 KiB,
 * include/linux/virtio_vsock.h). The guest never sends more per packet; a
 * larger `len` is a malformed packet.
 */
export const MAX_PACKET_PAYLOAD = 64 * 1024;

/** A parsed header. CIDs are u64 on the wire; only values below 2^53 are representable, larger ones read as `Infinity` (never a valid CID). */
export interface VsockHeader {
  srcCid: number;
  dstCid: number;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

function u64(dv: DataView, at: number): number {
  const v = dv.getBigUint64(at, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

/** Parses a header from `bytes` (a private copy of at least {@link HEADER_SIZE} bytes). */
export function parseHeader(bytes: Uint8Array): VsockHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new RangeError(`vsock header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return {
    srcCid: u64(dv, 0),
    dstCid: u64(dv, 8),
    srcPort: dv.getUint32(16, true),
    dstPort: dv.getUint32(20, true),
    len: dv.getUint32(24, true),
    type: dv.getUint16(28, true),
    op: dv.getUint16(30, true),
    flags: dv.getUint32(32, true),
    bufAlloc: dv.getUint32(36, true),
    fwdCnt: dv.getUint32(40, true),
  };
}

/** Encodes `h` into a new {@link HEADER_SIZE}-byte buffer. */
export function encodeHeader(h: VsockHeader): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER_SIZE);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(h.srcCid), true);
  dv.setBigUint64(8, BigInt(h.dstCid), true);
  dv.setUint32(16, h.srcPort >>> 0, true);
  dv.setUint32(20, h.dstPort >>> 0, true);
  dv.setUint32(24, h.len >>> 0, true);
  dv.setUint16(28, h.type, true);
  dv.setUint16(30, h.op, true);
  dv.setUint32(32, h.flags >>> 0, true);
  dv.setUint32(36, h.bufAlloc >>> 0, true);
  dv.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}
