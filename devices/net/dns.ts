/**
 * The DNS server at the gateway (RFC 1035): names in the host's hosts file
 * are answered directly (A and AAAA), everything else is forwarded to the
 * host's resolvers from resolv.conf over a host UDP socket. Answers SERVFAIL
 * when no resolver replies. Never throws on bad queries.
 *
 * @module
 */

import { eventLoopScheduler, type HostSockets, type HostUdp, type Scheduler } from "./host.ts";
import { put16, put32, u16 } from "./wire.ts";

/** RFC 1035 §4.1.1 header length. */
const HDR = 12;
/** Record types (RFC 1035 §3.2.2, RFC 3596). */
const TYPE_A = 1, TYPE_AAAA = 28;
/** How long to wait for an upstream resolver. */
const UPSTREAM_TIMEOUT = 2000;
/** Cap on concurrent upstream queries. */
const MAX_PENDING = 64;

/** A parsed question. */
interface Question {
  name: string;
  type: number;
  cls: number;
  /** Offset just past the question. */
  end: number;
}

/** Parses the first question of `q`; null when malformed or compressed. */
function parseQuestion(q: Uint8Array): Question | null {
  if (q.length < HDR + 5) return null;
  if (q[2] & 0x80) return null; // a response, not a query
  if (u16(q, 4) !== 1) return null; // exactly one question
  const labels: string[] = [];
  let o = HDR;
  for (;;) {
    if (o >= q.length) return null;
    const len = q[o];
    if (len === 0) {
      o++;
      break;
    }
    if (len > 63 || o + 1 + len > q.length) return null;
    labels.push(String.fromCharCode(...q.subarray(o + 1, o + 1 + len)));
    o += 1 + len;
    if (o - HDR > 255) return null;
  }
  if (o + 4 > q.length) return null;
  return { name: labels.join(".").toLowerCase(), type: u16(q, o), cls: u16(q, o + 2), end: o + 4 };
}

/** Parses hosts-file text into name → addresses (IPv4 dotted, IPv6 text). */
export function parseHosts(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (!line) continue;
    const [addr, ...names] = line.split(/\s+/);
    for (const n of names) {
      const k = n.toLowerCase();
      if (!map.has(k)) map.set(k, []);
      map.get(k)!.push(addr);
    }
  }
  return map;
}

/** Nameserver addresses from resolv.conf text (IPv4 only). */
export function parseResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
    if (m) out.push(m[1]);
  }
  return out;
}

function ipv6Bytes(text: string): Uint8Array | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const parse = (s: string) => s ? s.split(":").map((x) => parseInt(x, 16)) : [];
  const a = parse(halves[0]);
  const b = halves.length === 2 ? parse(halves[1]) : [];
  const fill = 8 - a.length - b.length;
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return null;
  const words = [...a, ...new Array(fill).fill(0), ...b];
  if (words.some((w) => !(w >= 0 && w <= 0xffff))) return null;
  const out = new Uint8Array(16);
  words.forEach((w, i) => put16(out, i * 2, w));
  return out;
}

function ipv4Bytes(text: string): Uint8Array | null {
  const p = text.split(".").map(Number);
  if (p.length !== 4 || p.some((x) => !(x >= 0 && x <= 255))) return null;
  return Uint8Array.from(p);
}

/** Builds a response to `q` with `rcode` and the given answer records' data. */
function respond(
  q: Uint8Array,
  question: Question,
  rcode: number,
  rdatas: Uint8Array[],
): Uint8Array {
  const qlen = question.end - HDR;
  const size = HDR + qlen + rdatas.reduce((s, r) => s + 12 + r.length, 0);
  const out = new Uint8Array(size);
  out.set(q.subarray(0, 2), 0); // id
  out[2] = 0x80 | (q[2] & 0x79); // QR; opcode and RD copied
  out[3] = 0x80 | rcode; // RA
  put16(out, 4, 1);
  put16(out, 6, rdatas.length);
  out.set(q.subarray(HDR, question.end), HDR);
  let o = HDR + qlen;
  for (const r of rdatas) {
    put16(out, o, 0xc000 | HDR); // name: pointer to the question (RFC 1035 §4.1.4)
    put16(out, o + 2, question.type);
    put16(out, o + 4, 1);
    put32(out, o + 6, 60); // TTL
    put16(out, o + 10, r.length);
    out.set(r, o + 12);
    o += 12 + r.length;
  }
  return out;
}

/** One query waiting for an upstream resolver. */
interface Forward {
  sock: HostUdp | null;
  cancelTimer: () => void;
}

/** The DNS server. */
export class DnsServer {
  #sockets: HostSockets;
  #scheduler: Scheduler;
  #hostsFile: string;
  #resolvConf: string;
  #pending = new Set<Forward>();

  constructor(
    sockets: HostSockets,
    hostsFile: string,
    resolvConf: string,
    scheduler: Scheduler = eventLoopScheduler,
  ) {
    this.#sockets = sockets;
    this.#scheduler = scheduler;
    this.#hostsFile = hostsFile;
    this.#resolvConf = resolvConf;
  }

  /** The upstream resolvers (re-read each time: resolv.conf may change). */
  upstreams(): string[] {
    try {
      return parseResolvConf(Deno.readTextFileSync(this.#resolvConf));
    } catch {
      return [];
    }
  }

  #hosts(): Map<string, string[]> {
    try {
      return parseHosts(Deno.readTextFileSync(this.#hostsFile));
    } catch {
      return new Map();
    }
  }

  /**
   * Answers the query `q` (only read during the call): `reply` gets the
   * response, at once for hosts-file names, later for forwarded ones.
   * Returns false when the query is not worth answering (malformed, or too
   * many waiting for upstream); `reply` is then never called.
   */
  answer(q: Uint8Array, reply: (r: Uint8Array) => void): boolean {
    const question = parseQuestion(q);
    if (!question) return false;
    if (question.cls !== 1) {
      reply(respond(q, question, 4, [])); // NOTIMP
      return true;
    }
    const addrs = this.#hosts().get(question.name);
    if (addrs) {
      const want = question.type;
      const rd = addrs.map((a) =>
        want === TYPE_A ? ipv4Bytes(a) : want === TYPE_AAAA && a.includes(":") ? ipv6Bytes(a) : null
      ).filter((x): x is Uint8Array => x !== null);
      reply(respond(q, question, 0, rd)); // NOERROR (empty = NODATA)
      return true;
    }
    if (this.#pending.size >= MAX_PENDING) return false;
    const query = q.slice();
    const servers = this.upstreams();
    const next = (i: number): void => {
      if (i >= servers.length) return reply(respond(query, question, 2, [])); // SERVFAIL
      this.#forward(query, servers[i], (r) => r ? reply(r) : next(i + 1));
    };
    next(0);
    return true;
  }

  /** Asks `server`; `done` gets its answer, or null on a timeout or when no socket opens. */
  #forward(q: Uint8Array, server: string, done: (r: Uint8Array | null) => void): void {
    const f: Forward = { sock: null, cancelTimer: () => {} };
    const finish = (r: Uint8Array | null) => {
      if (!this.#pending.delete(f)) return;
      f.cancelTimer();
      f.sock?.close();
      done(r);
    };
    this.#pending.add(f);
    try {
      f.sock = this.#sockets.openUdp((data, from, port) => {
        if (from !== server || port !== 53) return;
        if (data.length < HDR || data[0] !== q[0] || data[1] !== q[1]) return;
        finish(data);
      });
    } catch {
      this.#pending.delete(f);
      return done(null);
    }
    f.cancelTimer = this.#scheduler.after(UPSTREAM_TIMEOUT, () => finish(null));
    f.sock.send(q, server, 53);
  }

  /** Drops every query waiting for upstream (their sockets and timers). */
  close(): void {
    for (const f of this.#pending) {
      f.cancelTimer();
      f.sock?.close();
    }
    this.#pending.clear();
  }
}
