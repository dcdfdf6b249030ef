/**
 * Configuration of the user-mode network stack: addresses, limits, the host
 * loopback switch and `--publish` rules, plus the counters the stack keeps.
 *
 * @module
 */

import { formatIpv4, parseIpv4, parseMac } from "./wire.ts";

/** One `--publish [HOSTIP:]HOSTPORT:GUESTPORT[/udp]` rule. */
export interface PublishRule {
  /** Host address to listen on (default 127.0.0.1). */
  hostIp: string;
  /** Host port to listen on (0 picks a free one). */
  hostPort: number;
  /** Guest port the connections are forwarded to. */
  guestPort: number;
  /** Transport. */
  proto: "tcp" | "udp";
}

/** Options of {@link NetStack}; every field has a default. */
export interface NetConfig {
  /** Guest address (default 10.42.0.2). */
  guestIp?: string;
  /** Gateway address, also the host's face (default 10.42.0.1). */
  gatewayIp?: string;
  /** DNS server address the stack answers on (default: the gateway). */
  dnsIp?: string;
  /** Prefix length of the guest network (default 24). */
  prefixLength?: number;
  /** MAC address of the gateway (default 52:54:00:42:00:01). */
  gatewayMac?: string;
  /** Link MTU: bounds the MSS the stack announces and the DHCP MTU option (default 1500). */
  mtu?: number;
  /** Lets the guest reach the host's 127.0.0.1 at the gateway address (default false). */
  hostLoopback?: boolean;
  /** Host ports forwarded into the guest. */
  publish?: PublishRule[];
  /** Maximum concurrent flows (TCP connections + UDP flows), default 4096. */
  maxFlows?: number;
  /** Maximum half-open TCP connections (SYN received, not yet established), default 256. */
  maxHalfOpen?: number;
  /** Maximum bytes buffered for all flows together, default 256 MiB. */
  maxBufferedBytes?: number;
  /** Per-connection receive buffer (bounds the window offered to the guest), default 4 MiB. */
  tcpBufferBytes?: number;
  /** TIME_WAIT duration in ms (2·MSL, RFC 9293 §3.6.1), default 10 000. */
  timeWaitMs?: number;
  /** Idle timeout of UDP flows in ms, default 60 000. */
  udpIdleMs?: number;
  /** Hosts file honoured by the DNS server (default /etc/hosts). */
  hostsFile?: string;
  /** resolv.conf naming the upstream resolvers (default /etc/resolv.conf). */
  resolvConf?: string;
}

/** {@link NetConfig} with defaults applied and addresses parsed. */
export interface ResolvedNetConfig {
  guestIp: number;
  gatewayIp: number;
  dnsIp: number;
  prefixLength: number;
  netmask: number;
  gatewayMac: Uint8Array;
  mtu: number;
  hostLoopback: boolean;
  publish: PublishRule[];
  maxFlows: number;
  maxHalfOpen: number;
  maxBufferedBytes: number;
  tcpBufferBytes: number;
  timeWaitMs: number;
  udpIdleMs: number;
  hostsFile: string;
  resolvConf: string;
}

/** Applies defaults and validates `c`; throws naming the bad field and value. */
export function resolveConfig(c: NetConfig = {}): ResolvedNetConfig {
  const prefixLength = c.prefixLength ?? 24;
  if (!Number.isInteger(prefixLength) || prefixLength < 8 || prefixLength > 30) {
    throw new Error(`net: prefixLength must be 8..30, got ${prefixLength}`);
  }
  const mtu = c.mtu ?? 1500;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65521) {
    throw new Error(`net: mtu must be 576..65521, got ${mtu}`);
  }
  const netmask = (0xffffffff << (32 - prefixLength)) >>> 0;
  const guestIp = parseIpv4(c.guestIp ?? "10.42.0.2");
  const gatewayIp = parseIpv4(c.gatewayIp ?? "10.42.0.1");
  if (((guestIp ^ gatewayIp) & netmask) !== 0) {
    throw new Error(
      `net: guest ${formatIpv4(guestIp)} and gateway ${
        formatIpv4(gatewayIp)
      } are not in one /${prefixLength}`,
    );
  }
  const positive = (name: string, v: number | undefined, d: number) => {
    const x = v ?? d;
    if (!Number.isFinite(x) || x <= 0) throw new Error(`net: ${name} must be > 0, got ${x}`);
    return x;
  };
  return {
    guestIp,
    gatewayIp,
    dnsIp: parseIpv4(c.dnsIp ?? formatIpv4(gatewayIp)),
    prefixLength,
    netmask,
    gatewayMac: parseMac(c.gatewayMac ?? "52:54:00:42:00:01"),
    mtu,
    hostLoopback: c.hostLoopback ?? false,
    publish: (c.publish ?? []).map((r, i) => checkPublishRule(r, `net: publish[${i}]`)),
    maxFlows: positive("maxFlows", c.maxFlows, 4096),
    maxHalfOpen: positive("maxHalfOpen", c.maxHalfOpen, 256),
    maxBufferedBytes: positive("maxBufferedBytes", c.maxBufferedBytes, 256 << 20),
    tcpBufferBytes: positive("tcpBufferBytes", c.tcpBufferBytes, 4 << 20),
    timeWaitMs: positive("timeWaitMs", c.timeWaitMs, 10_000),
    udpIdleMs: positive("udpIdleMs", c.udpIdleMs, 60_000),
    hostsFile: c.hostsFile ?? "/etc/hosts",
    resolvConf: c.resolvConf ?? "/etc/resolv.conf",
  };
}

/**
 * Checks one publish rule as {@link resolveConfig} takes it (from the CLI's
 * {@link parsePublish} or a library caller's object): host port 0..65535 (0
 * picks a free one), guest port 1..65535, protocol tcp or udp, host address
 * an IPv4 address (default 127.0.0.1, as `--publish` without HOSTIP).
 * Returns the rule with its defaults; throws an `Error` whose one-line
 * message starts with `what` (the rule's name, e.g. `net.publish[0]`).
 */
export function checkPublishRule(r: Partial<PublishRule>, what: string): PublishRule {
  const bad = (why: string) => new Error(`${what}: ${why}`);
  if (typeof r !== "object" || r === null) throw bad(`expected a rule object, got ${show(r)}`);
  const hostIp = r.hostIp ?? "127.0.0.1";
  let ipOk = typeof hostIp === "string";
  if (ipOk) {
    try {
      parseIpv4(hostIp);
    } catch {
      ipOk = false;
    }
  }
  if (!ipOk) throw bad(`host address ${show(hostIp)} is not an IPv4 address`);
  const port = (v: unknown, name: string, min: number) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > 65535) {
      throw bad(`${name} ${show(v)}: expected a whole number from ${min} to 65535`);
    }
    return v;
  };
  const hostPort = port(r.hostPort, "host port", 0);
  const guestPort = port(r.guestPort, "guest port", 1);
  const proto = r.proto ?? "tcp";
  if (proto !== "tcp" && proto !== "udp") {
    throw bad(`protocol ${show(proto)}: expected "tcp" or "udp"`);
  }
  return { hostIp, hostPort, guestPort, proto };
}

/**
 * A rule as the VM configuration writes it (`protocol` where the stack says
 * `proto`): what `--publish` and the library's `net.publish` both become.
 */
export function publishOption(
  r: PublishRule,
): { hostIp: string; hostPort: number; guestPort: number; protocol: "tcp" | "udp" } {
  return { hostIp: r.hostIp, hostPort: r.hostPort, guestPort: r.guestPort, protocol: r.proto };
}

/** A value for an error message, on one line (strings quoted, control characters escaped). */
export function show(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v == null) return String(v);
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Parses a `--publish` value: `[HOSTIP:]HOSTPORT:GUESTPORT[/udp|/tcp]`.
 * Throws naming the value when it is malformed.
 */
export function parsePublish(text: string): PublishRule {
  const bad = (why: string) => new Error(`bad --publish '${text}': ${why}`);
  let spec = text;
  let proto: "tcp" | "udp" = "tcp";
  const slash = spec.lastIndexOf("/");
  if (slash >= 0) {
    const p = spec.slice(slash + 1);
    if (p !== "tcp" && p !== "udp") throw bad(`protocol must be tcp or udp, got '${p}'`);
    proto = p;
    spec = spec.slice(0, slash);
  }
  const parts = spec.split(":");
  if (parts.length < 2 || parts.length > 3) throw bad("expected [HOSTIP:]HOSTPORT:GUESTPORT");
  const hostIp = parts.length === 3 ? parts[0] : "127.0.0.1";
  try {
    parseIpv4(hostIp);
  } catch {
    throw bad(`host address '${hostIp}' is not IPv4`);
  }
  const port = (s: string, what: string, min: number) => {
    if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > 65535) {
      throw bad(`${what} '${s}' must be ${min}..65535`);
    }
    return Number(s);
  };
  return {
    hostIp,
    hostPort: port(parts[parts.length - 2], "host port", 0),
    guestPort: port(parts[parts.length - 1], "guest port", 1),
    proto,
  };
}

/**
 * One line per `--publish` rule saying where it listens, e.g.
 * `published 127.0.0.1:41234 → guest :80/tcp` (`ports`: the bound host port
 * of each rule, in rule order). Every rule when `all` (`--verbose`); else
 * only those that asked for port 0, whose port the OS picked and nothing
 * else shows.
 */
export function publishLines(
  rules: readonly PublishRule[],
  ports: readonly number[],
  all: boolean,
): string[] {
  return rules.flatMap((r, i) =>
    all || r.hostPort === 0
      ? [`published ${r.hostIp}:${ports[i] ?? r.hostPort} → guest :${r.guestPort}/${r.proto}`]
      : []
  );
}

/** What the stack counted; a snapshot is returned by {@link NetStack.counters}. */
export interface NetCounters {
  /** Frames received from the guest. */
  rxFrames: number;
  /** Bytes received from the guest. */
  rxBytes: number;
  /** Frames sent to the guest. */
  txFrames: number;
  /** Bytes sent to the guest. */
  txBytes: number;
  /** Frames dropped as malformed: truncated, bogus lengths, bad header fields, bad options. */
  dropMalformed: number;
  /** Frames dropped for a wrong IPv4, TCP, UDP or ICMP checksum. */
  dropChecksum: number;
  /** Frames dropped as unsupported (IPv6, other EtherTypes or protocols, not for us). */
  dropUnsupported: number;
  /** Packets dropped whose source was not the guest's address. */
  dropSpoofed: number;
  /** Flows refused because the flow cap was reached. */
  dropFlowLimit: number;
  /** SYNs dropped because too many connections were half-open. */
  dropSynFlood: number;
  /** Fragments dropped (overlaps, too many reassemblies, timeouts). */
  dropFragment: number;
  /** TCP resets sent to the guest. */
  tcpResetsSent: number;
  /** TCP connections refused (not allowed, host refused). */
  tcpRefused: number;
  /** TCP connections established. */
  tcpOpened: number;
  /** TCP segments retransmitted to the guest (timeout or fast retransmit). */
  tcpRetransmits: number;
  /** UDP flows opened. */
  udpFlows: number;
  /** IPv4 datagrams reassembled from fragments. */
  reassembled: number;
  /** ARP replies sent. */
  arpReplies: number;
  /** ICMP echo replies sent. */
  icmpEchoReplies: number;
  /** DHCP replies sent. */
  dhcpReplies: number;
  /** DNS queries answered. */
  dnsQueries: number;
  /** Host connections accepted on published ports. */
  publishAccepted: number;
  /** Currently open TCP connections. */
  tcpActive: number;
  /** Currently open UDP flows. */
  udpActive: number;
  /** Bytes currently buffered across all flows. */
  bufferedBytes: number;
  /** Internal errors caught while processing a guest frame (a bug if non-zero). */
  internalErrors: number;
}

/** A zeroed {@link NetCounters}. */
export function zeroCounters(): NetCounters {
  return {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    dropMalformed: 0,
    dropChecksum: 0,
    dropUnsupported: 0,
    dropSpoofed: 0,
    dropFlowLimit: 0,
    dropSynFlood: 0,
    dropFragment: 0,
    tcpResetsSent: 0,
    tcpRefused: 0,
    tcpOpened: 0,
    tcpRetransmits: 0,
    udpFlows: 0,
    reassembled: 0,
    arpReplies: 0,
    icmpEchoReplies: 0,
    dhcpReplies: 0,
    dnsQueries: 0,
    publishAccepted: 0,
    tcpActive: 0,
    udpActive: 0,
    bufferedBytes: 0,
    internalErrors: 0,
  };
}

/** The counter names in a fixed order (how the loop publishes them in shared memory). */
export const COUNTER_KEYS: readonly (keyof NetCounters)[] = Object.keys(
  zeroCounters(),
) as (keyof NetCounters)[];

/**
 * Copies `c` into `out` in {@link COUNTER_KEYS} order. Written out (not a
 * loop over the keys) so each read is a monomorphic property load: the loop
 * publishes after every turn. `config_test.ts` checks the order.
 */
export function packCounters(c: NetCounters, out: Float64Array): void {
  out[0] = c.rxFrames;
  out[1] = c.rxBytes;
  out[2] = c.txFrames;
  out[3] = c.txBytes;
  out[4] = c.dropMalformed;
  out[5] = c.dropChecksum;
  out[6] = c.dropUnsupported;
  out[7] = c.dropSpoofed;
  out[8] = c.dropFlowLimit;
  out[9] = c.dropSynFlood;
  out[10] = c.dropFragment;
  out[11] = c.tcpResetsSent;
  out[12] = c.tcpRefused;
  out[13] = c.tcpOpened;
  out[14] = c.tcpRetransmits;
  out[15] = c.udpFlows;
  out[16] = c.reassembled;
  out[17] = c.arpReplies;
  out[18] = c.icmpEchoReplies;
  out[19] = c.dhcpReplies;
  out[20] = c.dnsQueries;
  out[21] = c.publishAccepted;
  out[22] = c.tcpActive;
  out[23] = c.udpActive;
  out[24] = c.bufferedBytes;
  out[25] = c.internalErrors;
}
