/**
 * Builds guest frames for the stack's unit and fuzz tests (the guest's side
 * of Ethernet, ARP, IPv4, ICMP, UDP and TCP), and fixes checksums of mutated
 * frames so fuzzing reaches past the checksum checks.
 *
 * @module
 */

import {
  checksum,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  PROTO,
  pseudoSum,
  put16,
  put32,
  u16,
  u32,
  writeEth,
} from "../wire.ts";

/** The guest's MAC in tests. */
export const GUEST_MAC: Uint8Array = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/** The stack's default gateway MAC. */
export const GW_MAC: Uint8Array = new Uint8Array([0x52, 0x54, 0, 0x42, 0, 1]);
/** 10.42.0.2 */
export const GUEST_IP = 0x0a2a0002;
/** 10.42.0.1 */
export const GW_IP = 0x0a2a0001;

/** An ARP request from the guest for `target`. */
export function arpRequest(target = GW_IP): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + 28);
  writeEth(f, new Uint8Array(6).fill(255), GUEST_MAC, ETHERTYPE_ARP);
  const o = ETH_HLEN;
  put16(f, o, 1);
  put16(f, o + 2, ETHERTYPE_IPV4);
  f[o + 4] = 6;
  f[o + 5] = 4;
  put16(f, o + 6, 1);
  f.set(GUEST_MAC, o + 8);
  put32(f, o + 14, GUEST_IP);
  put32(f, o + 24, target);
  return f;
}

/** An IPv4 frame from the guest carrying `l4` (checksums of the L4 header filled in). */
export function ipv4(
  proto: number,
  l4: Uint8Array,
  opts: { src?: number; dst?: number; id?: number; fragOff?: number; more?: boolean } = {},
): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + 20 + l4.length);
  writeEth(f, GW_MAC, GUEST_MAC, ETHERTYPE_IPV4);
  const o = ETH_HLEN;
  f[o] = 0x45;
  put16(f, o + 2, 20 + l4.length);
  put16(f, o + 4, opts.id ?? 1);
  put16(f, o + 6, (opts.more ? 0x2000 : 0) | ((opts.fragOff ?? 0) >> 3));
  f[o + 8] = 64;
  f[o + 9] = proto;
  put32(f, o + 12, opts.src ?? GUEST_IP);
  put32(f, o + 16, opts.dst ?? GW_IP);
  f.set(l4, o + 20);
  fixChecksums(f);
  return f;
}

/** An ICMP echo request with `payload`. */
export function icmpEcho(payload: Uint8Array, id = 7, seq = 1): Uint8Array {
  const l4 = new Uint8Array(8 + payload.length);
  l4[0] = 8;
  put16(l4, 4, id);
  put16(l4, 6, seq);
  l4.set(payload, 8);
  put16(l4, 2, checksum(l4, 0, l4.length));
  return l4;
}

/** A UDP datagram (checksum filled in by {@link ipv4}). */
export function udp(sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const l4 = new Uint8Array(8 + payload.length);
  put16(l4, 0, sport);
  put16(l4, 2, dport);
  put16(l4, 4, l4.length);
  l4.set(payload, 8);
  return l4;
}

/** TCP segment fields. */
export interface Seg {
  sport: number;
  dport: number;
  seq: number;
  ack?: number;
  flags: number;
  wnd?: number;
  opts?: number[];
  payload?: Uint8Array;
}

/** A TCP segment (checksum filled in by {@link ipv4}). */
export function tcp(s: Seg): Uint8Array {
  const opts = s.opts ?? [];
  const olen = (opts.length + 3) & ~3;
  const payload = s.payload ?? new Uint8Array();
  const l4 = new Uint8Array(20 + olen + payload.length);
  put16(l4, 0, s.sport);
  put16(l4, 2, s.dport);
  put32(l4, 4, s.seq >>> 0);
  put32(l4, 8, (s.ack ?? 0) >>> 0);
  l4[12] = ((20 + olen) / 4) << 4;
  l4[13] = s.flags;
  put16(l4, 14, s.wnd ?? 65535);
  l4.set(opts, 20);
  l4.set(payload, 20 + olen);
  return l4;
}

/** A DHCP DISCOVER (BOOTP request with option 53 = 1). */
export function dhcpDiscover(xid = 0x11223344): Uint8Array {
  const m = new Uint8Array(300);
  m[0] = 1;
  m[1] = 1;
  m[2] = 6;
  put32(m, 4, xid);
  m.set(GUEST_MAC, 28);
  put32(m, 236, 0x63825363);
  m.set([53, 1, 1, 255], 240);
  return m;
}

/**
 * Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of an
 * unfragmented IPv4 frame when its lengths are sane; leaves others alone.
 */
export function fixChecksums(f: Uint8Array): void {
  if (f.length < ETH_HLEN + 20 || u16(f, 12) !== ETHERTYPE_IPV4) return;
  const o = ETH_HLEN;
  const ihl = (f[o] & 15) * 4;
  const total = u16(f, o + 2);
  if (ihl < 20 || o + ihl > f.length) return;
  put16(f, o + 10, 0);
  put16(f, o + 10, checksum(f, o, ihl));
  if (total < ihl || o + total > f.length || (u16(f, o + 6) & 0x3fff) !== 0) return;
  const l4 = o + ihl, len = total - ihl;
  const src = u32(f, o + 12), dst = u32(f, o + 16);
  const proto = f[o + 9];
  const at = proto === PROTO.TCP ? 16 : proto === PROTO.UDP ? 6 : proto === PROTO.ICMP ? 2 : -1;
  if (at < 0 || len < at + 2) return;
  put16(f, l4 + at, 0);
  const ps = proto === PROTO.ICMP ? 0 : pseudoSum(src, dst, proto, len);
  let c = checksum(f, l4, len, ps);
  if (proto === PROTO.UDP && c === 0) c = 0xffff;
  put16(f, l4 + at, c);
}
