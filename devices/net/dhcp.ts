/**
 * A DHCP server for the one guest (RFC 2131, options from RFC 2132): answers
 * DISCOVER with an OFFER and REQUEST with an ACK for the configured guest
 * address, with netmask, router, DNS server, lease time and MTU.
 *
 * @module
 */

import type { ResolvedNetConfig } from "./config.ts";
import { put16, put32, u32 } from "./wire.ts";

/** RFC 2131 §3: fixed BOOTP header length before the options. */
const BOOTP_LEN = 236;
/** RFC 2131 §3: the magic cookie that starts the options. */
const MAGIC = 0x63825363;
/** DHCP message types (RFC 2132 §9.6). */
const DISCOVER = 1, OFFER = 2, REQUEST = 3, DECLINE = 4, ACK = 5, NAK = 6, RELEASE = 7, INFORM = 8;

/**
 * The reply (UDP payload) to the DHCP message `req`, or null when none is due
 * (malformed, not a request, DECLINE/RELEASE). Never throws on bad input.
 */
export function dhcpReply(cfg: ResolvedNetConfig, req: Uint8Array): Uint8Array | null {
  if (req.length < BOOTP_LEN + 4 || req[0] !== 1 || req[1] !== 1 || req[2] !== 6) return null;
  if (u32(req, BOOTP_LEN) !== MAGIC) return null;
  let type = 0;
  let requested = -1;
  let server = -1;
  for (let o = BOOTP_LEN + 4; o < req.length;) {
    const code = req[o];
    if (code === 255) break;
    if (code === 0) {
      o++;
      continue;
    }
    if (o + 1 >= req.length) return null;
    const len = req[o + 1];
    if (o + 2 + len > req.length) return null;
    if (code === 53 && len === 1) type = req[o + 2];
    if (code === 50 && len === 4) requested = u32(req, o + 2);
    if (code === 54 && len === 4) server = u32(req, o + 2);
    o += 2 + len;
  }
  let replyType: number;
  switch (type) {
    case DISCOVER:
      replyType = OFFER;
      break;
    case REQUEST:
      if (server >= 0 && server !== cfg.gatewayIp) return null; // another server was chosen
      replyType = requested >= 0 && requested !== cfg.guestIp ? NAK : ACK;
      break;
    case INFORM:
      replyType = ACK;
      break;
    case DECLINE:
    case RELEASE:
    default:
      return null;
  }
  const out = new Uint8Array(BOOTP_LEN + 4 + 64);
  out[0] = 2; // BOOTREPLY
  out[1] = 1;
  out[2] = 6;
  out.set(req.subarray(4, 8), 4); // xid
  out.set(req.subarray(10, 12), 10); // flags
  out.set(req.subarray(12, 16), 12); // ciaddr
  if (replyType !== NAK && type !== INFORM) put32(out, 16, cfg.guestIp); // yiaddr
  put32(out, 20, cfg.gatewayIp); // siaddr
  out.set(req.subarray(28, 44), 28); // chaddr
  put32(out, BOOTP_LEN, MAGIC);
  let o = BOOTP_LEN + 4;
  const opt = (code: number, bytes: number[]) => {
    out[o++] = code;
    out[o++] = bytes.length;
    for (const b of bytes) out[o++] = b;
  };
  const ip = (v: number) => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
  opt(53, [replyType]);
  opt(54, ip(cfg.gatewayIp));
  if (replyType !== NAK) {
    if (type !== INFORM) opt(51, ip(86400)); // lease time (s)
    opt(1, ip(cfg.netmask));
    opt(3, ip(cfg.gatewayIp));
    opt(6, ip(cfg.dnsIp));
    out[o++] = 26; // interface MTU (RFC 2132 §5.1)
    out[o++] = 2;
    put16(out, o, cfg.mtu);
    o += 2;
  }
  out[o++] = 255;
  return out.subarray(0, Math.max(o, 300)); // BOOTP minimum message size
}
