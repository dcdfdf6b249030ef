/**
 * Wire formats of the user-mode network stack: byte helpers, the Internet
 * checksum (RFC 1071), IPv4 address conversions and the Ethernet / IPv4 / TCP /
 * UDP header layouts the stack reads and writes.
 *
 * Everything here works on plain `Uint8Array`s at an offset so a frame is
 * parsed in place without copies.
 *
 * @module
 */

/** Ethernet header length (IEEE 802.3, no VLAN tag). */
export const ETH_HLEN = 14;
/** EtherType of IPv4. */
export const ETHERTYPE_IPV4 = 0x0800;
/** EtherType of ARP (RFC 826). */
export const ETHERTYPE_ARP = 0x0806;
/** Minimum IPv4 header length (RFC 791 §3.1: IHL ≥ 5 words). */
export const IPV4_HLEN = 20;
/** Minimum TCP header length (RFC 9293 §3.1: data offset ≥ 5 words). */
export const TCP_HLEN = 20;
/** UDP header length (RFC 768). */
export const UDP_HLEN = 8;
/** IP protocol numbers (IANA). */
export const PROTO = { ICMP: 1, TCP: 6, UDP: 17 } as const;
/** TCP flag bits (RFC 9293 §3.1). */
export const TCP_FLAG = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16, URG: 32 } as const;

/** Big-endian u16 at `o`. */
export function u16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

/** Big-endian u32 at `o` (as an unsigned number). */
export function u32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** Writes a big-endian u16 at `o`. */
export function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v;
}

/** Writes a big-endian u32 at `o`. */
export function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}

/** Folds a running sum to 16 bits with end-around carry (RFC 1071 §4.1). */
export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * The ones' complement sum (RFC 1071) of `len` bytes at `off`, folded to 16
 * bits, in network byte order. Sums 32-bit little-endian words when the data
 * is 4-byte aligned (the byte order of the result is swapped at the end: the
 * ones' complement sum commutes with byte swapping, RFC 1071 §2(B)).
 */
export function sum16(b: Uint8Array, off: number, len: number): number {
  let s = 0;
  let i = 0;
  const start = b.byteOffset + off;
  if (len >= 64 && (start & 3) === 0) {
    const words = len >>> 2;
    const w = new Uint32Array(b.buffer, start, words);
    let a = 0, c = 0;
    let k = 0;
    for (; k + 4 <= words; k += 4) {
      a += w[k] + w[k + 1];
      c += w[k + 2] + w[k + 3];
    }
    for (; k < words; k++) a += w[k];
    s = fold(a + c);
    // s is the little-endian sum: swap to network order.
    s = ((s & 0xff) << 8) | (s >>> 8);
    i = words << 2;
  }
  for (; i + 1 < len; i += 2) s += (b[off + i] << 8) | b[off + i + 1];
  if (i < len) s += b[off + i] << 8;
  return fold(s);
}

/** The Internet checksum of `len` bytes at `off` plus an initial (pseudo-header) sum. */
export function checksum(b: Uint8Array, off: number, len: number, initial = 0): number {
  return ~fold(sum16(b, off, len) + initial) & 0xffff;
}

/** Sum of the IPv4 pseudo-header (RFC 9293 §3.1, RFC 768) for `proto` and `len`. */
export function pseudoSum(src: number, dst: number, proto: number, len: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
}

/** Parses dotted-quad IPv4 text into a u32; throws naming the bad value. */
export function parseIpv4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: '${text}'`);
  let v = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) throw new Error(`not an IPv4 address: '${text}'`);
    v = v * 256 + Number(p);
  }
  return v >>> 0;
}

/** Formats a u32 IPv4 address as dotted quad. */
export function formatIpv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** Parses `aa:bb:cc:dd:ee:ff` into 6 bytes; throws naming the bad value. */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(":");
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new Error(`not a MAC address: '${text}'`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

/** Formats 6 bytes as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(m: Uint8Array): string {
  return Array.from(m.subarray(0, 6), (x) => x.toString(16).padStart(2, "0")).join(":");
}

/** The broadcast MAC address. */
export const BROADCAST_MAC: Uint8Array = new Uint8Array([255, 255, 255, 255, 255, 255]);

/** Writes an Ethernet header (dst, src, type) at offset 0. */
export function writeEth(f: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  // Byte stores: two subarrays and set() calls cost ~10× more per frame.
  for (let i = 0; i < 6; i++) {
    f[i] = dst[i];
    f[6 + i] = src[i];
  }
  put16(f, 12, type);
}

/**
 * Writes an IPv4 header (no options) at `o` and its checksum; `totalLen`
 * includes the header. DF is set: the stack never sends fragments.
 */
export function writeIpv4(
  f: Uint8Array,
  o: number,
  src: number,
  dst: number,
  proto: number,
  totalLen: number,
  id: number,
  ttl = 64,
): void {
  f[o] = 0x45;
  f[o + 1] = 0;
  put16(f, o + 2, totalLen);
  put16(f, o + 4, id & 0xffff);
  put16(f, o + 6, 0x4000);
  f[o + 8] = ttl;
  f[o + 9] = proto;
  put16(f, o + 10, 0);
  put32(f, o + 12, src);
  put32(f, o + 16, dst);
  put16(f, o + 10, checksum(f, o, IPV4_HLEN));
}

/** A TCP segment as parsed from a guest frame (payload is a view into the frame). */
export interface TcpSegment {
  /** Source IPv4 address. */
  src: number;
  /** Destination IPv4 address. */
  dst: number;
  /** Source port. */
  sport: number;
  /** Destination port. */
  dport: number;
  /** Sequence number. */
  seq: number;
  /** Acknowledgment number. */
  ack: number;
  /** Flag bits ({@link TCP_FLAG}). */
  flags: number;
  /** Raw (unscaled) window field. */
  wnd: number;
  /** MSS option, or 0 when absent. */
  mss: number;
  /** Window-scale option shift, or -1 when absent. */
  wscale: number;
  /** Payload bytes (a view into the frame; copy before keeping). */
  payload: Uint8Array;
}

/**
 * Parses TCP options (RFC 9293 §3.2) into `seg.mss` / `seg.wscale`. Returns
 * false on malformed options (bad lengths); unknown kinds are skipped.
 */
export function parseTcpOptions(b: Uint8Array, o: number, end: number, seg: TcpSegment): boolean {
  while (o < end) {
    const kind = b[o];
    if (kind === 0) break; // end of option list
    if (kind === 1) { // no-op
      o++;
      continue;
    }
    if (o + 1 >= end) return false;
    const len = b[o + 1];
    if (len < 2 || o + len > end) return false;
    if (kind === 2) {
      if (len !== 4) return false;
      seg.mss = u16(b, o + 2);
    } else if (kind === 3) {
      if (len !== 3) return false;
      seg.wscale = Math.min(b[o + 2], 14); // RFC 7323 §2.3: clamp to 14
    }
    o += len;
  }
  return true;
}
