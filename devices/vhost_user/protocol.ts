/**
 * vhost-user wire format (QEMU docs/interop/vhost-user.rst): every message
 * is a 12-byte header — request u32, flags u32 (version 1 in bits 0–1, reply
 * bit 2, need-reply bit 3), payload size u32 — then the payload, all
 * little-endian; file descriptors travel as SCM_RIGHTS with the header.
 *
 * @module
 */

/** Front-end → back-end requests ("Front-end message types"). */
export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
} as const;

/** Request number → name, for error messages. */
export const REQ_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(Req).map(([k, v]) => [v, k]),
);

/** Header size in bytes. */
export const HEADER_SIZE = 12;
/** Protocol version carried in flags bits 0–1. */
export const VERSION = 0x1;
/** Flags bit: this message is a reply. */
export const FLAG_REPLY = 0x4;
/** Flags bit: the front-end wants a REPLY_ACK for this message. */
export const FLAG_NEED_REPLY = 0x8;
/** Largest payload skiff accepts (a memory table of 8 regions is 8 + 8·32 bytes). */
export const MAX_PAYLOAD = 4096;

/** `VHOST_USER_F_PROTOCOL_FEATURES`: a virtio feature bit reused by vhost-user. */
export const F_PROTOCOL_FEATURES = 1n << 30n;

/** Protocol feature bits ("Protocol features"). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  CONFIGURE_MEM_SLOTS: 15,
} as const;

/** Vring index field of KICK/CALL/ERR payloads: index in bits 0–7, "no fd" in bit 8. */
export const VRING_IDX_MASK = 0xffn;
/** Bit 8 of KICK/CALL/ERR: no fd is passed (polling mode). */
export const VRING_NOFD_MASK = 0x100n;

/** A parsed header. */
export interface Header {
  request: number;
  flags: number;
  size: number;
}

/** Parses a 12-byte header; throws on a wrong version or an oversized payload. */
export function parseHeader(b: Uint8Array): Header {
  if (b.length < HEADER_SIZE) throw new RangeError(`vhost-user header is ${b.length} bytes`);
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  const h = {
    request: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    size: dv.getUint32(8, true),
  };
  if ((h.flags & 0x3) !== VERSION) {
    throw new RangeError(`vhost-user message with version ${h.flags & 3} (expected ${VERSION})`);
  }
  if (h.size > MAX_PAYLOAD) {
    throw new RangeError(
      `vhost-user ${REQ_NAMES[h.request] ?? h.request} payload of ${h.size} bytes is too large`,
    );
  }
  return h;
}

/** Encodes a reply: header with the reply flag, then `payload`. */
export function encodeReply(request: number, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, request, true);
  dv.setUint32(4, VERSION | FLAG_REPLY, true);
  dv.setUint32(8, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** A u64 payload. */
export function u64Payload(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}

function need(p: Uint8Array, n: number, what: string): DataView {
  if (p.length < n) {
    throw new RangeError(`vhost-user ${what} payload is ${p.length} bytes, need ${n}`);
  }
  return new DataView(p.buffer, p.byteOffset, p.length);
}

/** Reads a u64 payload. */
export function readU64(p: Uint8Array, what: string): bigint {
  return need(p, 8, what).getBigUint64(0, true);
}

/** `struct vhost_vring_state`: index u32, num u32. */
export function readVringState(p: Uint8Array, what: string): { index: number; num: number } {
  const dv = need(p, 8, what);
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

/** Encodes a `vhost_vring_state`. */
export function vringStatePayload(index: number, num: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, index, true);
  dv.setUint32(4, num, true);
  return b;
}

/**
 * `struct vhost_vring_addr`: index u32, flags u32, then the descriptor,
 * used and available ring addresses (front-end virtual addresses) and the
 * log address, u64 each. Note the order: used before available.
 */
export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

/** Parses a `vhost_vring_addr`. */
export function readVringAddr(p: Uint8Array): VringAddr {
  const dv = need(p, 40, "SET_VRING_ADDR");
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: dv.getBigUint64(8, true),
    used: dv.getBigUint64(16, true),
    avail: dv.getBigUint64(24, true),
    log: dv.getBigUint64(32, true),
  };
}

/** One region of a memory table (`VhostUserMemoryRegion`). */
export interface MemRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}

/** Parses SET_MEM_TABLE: nregions u32, padding u32, then 32-byte regions. */
export function readMemTable(p: Uint8Array): MemRegionDesc[] {
  const dv = need(p, 8, "SET_MEM_TABLE");
  const n = dv.getUint32(0, true);
  if (n > 8 || p.length < 8 + 32 * n) {
    throw new RangeError(`SET_MEM_TABLE with ${n} regions in ${p.length} bytes`);
  }
  const out: MemRegionDesc[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + 32 * i;
    out.push({
      guestPhysAddr: dv.getBigUint64(o, true),
      memorySize: dv.getBigUint64(o + 8, true),
      userspaceAddr: dv.getBigUint64(o + 16, true),
      mmapOffset: dv.getBigUint64(o + 24, true),
    });
  }
  return out;
}

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const U64 = 1n << 64n;

/**
 * Checks a memory table before anything is mapped: every region non-empty,
 * its guest-physical range and its mapping (`mmap_offset + size`) within
 * 2^53 (guest addresses are JS numbers here), its front-end address range
 * not wrapping, and no two regions overlapping in guest-physical or
 * front-end address space (ring addresses are translated through the
 * table, so each address must name one region). Throws a RangeError naming
 * the region and its values.
 */
export function validateMemTable(regions: readonly MemRegionDesc[]): void {
  const hex = (v: bigint) => `0x${v.toString(16)}`;
  regions.forEach((r, i) => {
    const what = `SET_MEM_TABLE region ${i} (guest ${hex(r.guestPhysAddr)}+${hex(r.memorySize)})`;
    if (r.memorySize === 0n) throw new RangeError(`${what} is empty`);
    if (r.guestPhysAddr + r.memorySize > SAFE) {
      throw new RangeError(`${what} ends above 2^53`);
    }
    if (r.mmapOffset + r.memorySize > SAFE) {
      throw new RangeError(`${what}: mmap offset ${hex(r.mmapOffset)} + size is above 2^53`);
    }
    if (r.userspaceAddr + r.memorySize > U64) {
      throw new RangeError(`${what}: front-end address ${hex(r.userspaceAddr)} + size wraps`);
    }
    for (let j = 0; j < i; j++) {
      const o = regions[j];
      if (
        r.guestPhysAddr < o.guestPhysAddr + o.memorySize &&
        o.guestPhysAddr < r.guestPhysAddr + r.memorySize
      ) {
        throw new RangeError(`${what} overlaps region ${j} in guest-physical space`);
      }
      if (
        r.userspaceAddr < o.userspaceAddr + o.memorySize &&
        o.userspaceAddr < r.userspaceAddr + r.memorySize
      ) {
        throw new RangeError(`${what} overlaps region ${j} in front-end address space`);
      }
    }
  });
}

/** `VHOST_USER_MAX_CONFIG_SIZE` (QEMU hw/virtio/vhost-user.c): largest config region in a message. */
export const MAX_CONFIG_SIZE = 256;
/** Bytes before the region in GET_CONFIG/SET_CONFIG: offset u32, size u32, flags u32. */
export const CONFIG_HEADER_SIZE = 12;

/** A GET_CONFIG / SET_CONFIG payload (`VhostUserConfig`). */
export interface ConfigMsg {
  /** Offset in the device's config space. */
  offset: number;
  /** Bytes of config space. */
  size: number;
  /** SET_CONFIG: 0 from the front-end (driver write), 1 during migration. */
  flags: number;
  /** The config bytes (SET_CONFIG; GET_CONFIG's request carries room for them). */
  region: Uint8Array;
}

/** Parses a `VhostUserConfig` payload; throws when `size` exceeds the region or 256 bytes. */
export function readConfigMsg(p: Uint8Array, what: string): ConfigMsg {
  const dv = need(p, CONFIG_HEADER_SIZE, what);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  const flags = dv.getUint32(8, true);
  if (size > MAX_CONFIG_SIZE || offset > MAX_CONFIG_SIZE) {
    throw new RangeError(`vhost-user ${what}: ${size} bytes at offset ${offset} exceed 256`);
  }
  if (p.length < CONFIG_HEADER_SIZE + size && what !== "GET_CONFIG") {
    throw new RangeError(`vhost-user ${what}: ${size} config bytes but ${p.length - 12} present`);
  }
  return { offset, size, flags, region: p.slice(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + size) };
}

/** Encodes a `VhostUserConfig` payload (the GET_CONFIG reply). */
export function configPayload(m: ConfigMsg): Uint8Array {
  const b = new Uint8Array(CONFIG_HEADER_SIZE + m.size);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, m.offset, true);
  dv.setUint32(4, m.size, true);
  dv.setUint32(8, m.flags, true);
  b.set(m.region.subarray(0, m.size), CONFIG_HEADER_SIZE);
  return b;
}
