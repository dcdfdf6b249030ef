/**
 * The init's command/config record: one self-contained little-endian blob the
 * host encodes and the one-shot guest init reads from `/skiff/record` in
 * the initramfs. Pointers inside it are stored as offsets from the record's start;
 * the init's `relocate` runtime routine turns them into addresses in place
 * (the table of pointer slots sits at the end), so the init then follows
 * plain pointers. The layout is documented in `init/RECORD.md`.
 *
 * The host is trusted: the init checks the magic, the version and that every
 * relocated slot lies inside the record, not where each pointer points.
 *
 * @module
 */

import { RECORD_MAGIC } from "./ir/record_magic.ts";
import { type Fragment, ipv4, seq, v, type Val } from "./ir/mod.ts";

/** Format version in the header (offset 8). */
export const RECORD_VERSION = 1;

/** Header field offsets (bytes from the record start); `ptr` fields are relocated. */
export const REC = {
  /** u64 "SKIFFREC" ({@link RECORD_MAGIC}). */
  MAGIC: 0,
  /** u32 {@link RECORD_VERSION}. */
  VERSION: 8,
  /** u32 total size in bytes. */
  SIZE: 12,
  /** u32 number of relocation entries. */
  NRELOCS: 16,
  /** u32 offset of the relocation table (u32 offsets of pointer slots). */
  RELOCS: 20,
  /** u64 flags ({@link REC_FLAGS}). */
  FLAGS: 24,
  /** ptr: virtio-fs tag of the root share, or 0: stay on the initramfs. */
  ROOT_TAG: 32,
  /** ptr: host name. */
  HOSTNAME: 40,
  /** ptr: array of {@link SHARE} entries. */
  SHARES: 48,
  /** u64: number of shares. */
  NSHARES: 56,
  /** ptr: NULL-terminated array of module paths (initramfs), in load order. */
  MODULES: 64,
  /** ptr ×4: virtio-console port names for stdin, stdout, stderr, status. */
  PORT_STDIN: 72,
  PORT_STDOUT: 80,
  PORT_STDERR: 88,
  PORT_STATUS: 96,
  /** ptr: NULL-terminated argv array. */
  ARGV: 104,
  /** ptr: NULL-terminated envp array ("K=V"). */
  ENVP: 112,
  /** ptr: working directory. */
  CWD: 120,
  /** ptr: colon-separated search list for argv[0] (PATH). */
  PATH: 128,
  /** u32 ×3: eth0 IPv4 address, netmask, gateway (network byte order in memory). */
  NET_ADDRESS: 136,
  NET_NETMASK: 140,
  NET_GATEWAY: 144,
  /** ptr + u64: /etc/resolv.conf content and length. */
  RESOLV: 152,
  RESOLV_LEN: 160,
  /** ptr + u64: /etc/hosts content and length. */
  HOSTS: 168,
  HOSTS_LEN: 176,
  /** u32 ×2: uid and gid the command runs as (with {@link REC_FLAGS.USER}). */
  UID: 184,
  GID: 188,
  /** u64 + ptr: number of supplementary groups and the u32 array of them. */
  NGROUPS: 192,
  GROUPS: 200,
  /** Size of the header. */
  HEADER_SIZE: 208,
} as const;

/** Flag bits of {@link REC.FLAGS}. */
export const REC_FLAGS = {
  /** Configure eth0 (address, route, resolv.conf, hosts). */
  NET: 1,
  /** Run the command as UID/GID with GROUPS (`skiff run --user`); else as the init (root). */
  USER: 2,
} as const;

/** Most supplementary groups a record carries. */
export const MAX_GROUPS = 1024;

/** A share entry (32 bytes): tag ptr, guest path ptr, mount flags, fstype ptr. */
export const SHARE = {
  TAG: 0,
  PATH: 8,
  /** u64 mount(2) flags (MS_RDONLY for read-only shares). */
  MOUNT_FLAGS: 16,
  /** ptr: file system type ("virtiofs"). */
  FSTYPE: 24,
  SIZE: 32,
} as const;

/** Everything a record holds (host side). */
export interface RecordSpec {
  rootTag: string | null;
  hostname: string;
  shares: { tag: string; guestPath: string; readOnly: boolean; fsType?: string }[];
  modules: string[];
  ports: { stdin: string; stdout: string; stderr: string; status: string };
  argv: string[];
  env: string[];
  cwd: string;
  /** PATH search list for argv[0]. */
  path: string;
  net: {
    address: string;
    prefixLength: number;
    gateway: string;
    resolvConf: string;
    hosts: string;
  } | null;
  /** The user the command runs as; absent or null: root, as the init. */
  user?: { uid: number; gid: number; groups: number[] } | null;
}

/** A record the init cannot use. */
export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

/** The IPv4 netmask for a prefix length (0–32), dotted. */
export function netmaskOf(prefixLength: number): string {
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) {
    throw new RecordError(`bad prefix length ${prefixLength} (want 0..32)`);
  }
  const m = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  return [24, 16, 8, 0].map((s) => (m >>> s) & 0xff).join(".");
}

/**
 * Builds a relocatable blob in the record style: pointer slots hold offsets
 * and are listed in the relocation table that {@link RecordWriter.finish}
 * appends, so the init's `relocate` routine can turn them into addresses.
 * The first {@link REC.HEADER_SIZE}… bytes are the caller's: it reserves its
 * header (at least the 24-byte common part) before anything else.
 */
export class RecordWriter {
  #buf = new Uint8Array(4096);
  #len = 0;
  /** Offsets of the pointer slots written so far. */
  readonly relocs: number[] = [];

  /** Bytes written so far. */
  get length(): number {
    return this.#len;
  }
  /** Appends `n` zero bytes; returns their offset. */
  reserve(n: number): number {
    const at = this.#len;
    this.#grow(at + n);
    this.#len += n;
    return at;
  }
  /** Pads with zeros to a multiple of `n`. */
  align(n: number) {
    this.reserve((n - (this.#len % n)) % n);
  }
  #grow(to: number) {
    if (to <= this.#buf.length) return;
    let size = this.#buf.length;
    while (size < to) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.#buf.subarray(0, this.#len));
    this.#buf = b;
  }
  /** A view of the whole buffer (valid until the next append). */
  get view(): DataView {
    return new DataView(this.#buf.buffer);
  }
  /** Stores a u32 at `at`. */
  u32(at: number, x: number) {
    this.view.setUint32(at, x >>> 0, true);
  }
  /** Stores a u64 at `at`. */
  u64(at: number, x: number | bigint) {
    this.view.setBigUint64(at, BigInt(x), true);
  }
  /** Stores a pointer (an offset, relocated by the init) at `at`. */
  ptr(at: number, target: number) {
    this.u64(at, target);
    this.relocs.push(at);
  }
  /** Appends bytes (plus a NUL) and returns their offset. */
  data(b: Uint8Array): number {
    const at = this.reserve(b.length + 1);
    this.#buf.set(b, at);
    return at;
  }
  /** Appends a NUL-terminated UTF-8 string; `what` names it in the error for a NUL inside. */
  str(s: string, what: string): number {
    if (s.includes("\0")) {
      throw new RecordError(`${what} contains a NUL byte: ${JSON.stringify(s)}`);
    }
    return this.data(new TextEncoder().encode(s));
  }
  /** Appends a NULL-terminated pointer array of strings; returns its offset. */
  strv(list: readonly string[], what: string): number {
    this.align(8);
    const at = this.reserve(8 * (list.length + 1));
    list.forEach((s, i) => this.ptr(at + 8 * i, this.str(s, `${what}[${i}]`)));
    return at;
  }
  /** A copy of the bytes written. */
  bytes(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
  /**
   * Writes the common header fields (magic, `version`), appends the
   * relocation table, pads to 8 bytes, stores the size and returns the blob.
   */
  finish(version: number): Uint8Array {
    this.u64(REC.MAGIC, RECORD_MAGIC);
    this.u32(REC.VERSION, version);
    this.align(4);
    const relocs = this.reserve(4 * this.relocs.length);
    this.u32(REC.NRELOCS, this.relocs.length);
    this.u32(REC.RELOCS, relocs);
    this.relocs.forEach((r, i) => this.u32(relocs + 4 * i, r));
    this.align(8);
    this.u32(REC.SIZE, this.length);
    return this.bytes();
  }
}

/** Encodes a record (see `init/RECORD.md`). Throws {@link RecordError} on bad input. */
export function encodeRecord(spec: RecordSpec): Uint8Array {
  if (spec.argv.length === 0) throw new RecordError("command argv is empty");
  if (spec.argv[0] === "") throw new RecordError("command argv[0] is empty");
  for (const e of spec.env) {
    if (!e.includes("=")) throw new RecordError(`environment entry without '=': ${e}`);
  }
  if (!spec.cwd.startsWith("/")) throw new RecordError(`cwd must be absolute: ${spec.cwd}`);
  for (const s of spec.shares) {
    if (!s.guestPath.startsWith("/")) {
      throw new RecordError(`share ${s.tag}: guest path must be absolute: ${s.guestPath}`);
    }
    if (s.tag === "") throw new RecordError(`share at ${s.guestPath}: empty tag`);
  }
  if (spec.rootTag === "") throw new RecordError("root tag is empty (use null for none)");
  if (spec.hostname === "" || new TextEncoder().encode(spec.hostname).length > 64) {
    throw new RecordError(`bad hostname '${spec.hostname}' (1..64 bytes)`);
  }
  const w = new RecordWriter();
  w.reserve(REC.HEADER_SIZE);
  w.u64(REC.FLAGS, (spec.net ? REC_FLAGS.NET : 0) | (spec.user ? REC_FLAGS.USER : 0));
  if (spec.rootTag !== null) w.ptr(REC.ROOT_TAG, w.str(spec.rootTag, "root tag"));
  w.ptr(REC.HOSTNAME, w.str(spec.hostname, "hostname"));
  w.align(8);
  const shares = w.reserve(SHARE.SIZE * spec.shares.length);
  w.ptr(REC.SHARES, shares);
  w.u64(REC.NSHARES, spec.shares.length);
  spec.shares.forEach((s, i) => {
    const at = shares + SHARE.SIZE * i;
    w.ptr(at + SHARE.TAG, w.str(s.tag, "share tag"));
    w.ptr(at + SHARE.PATH, w.str(s.guestPath, "share path"));
    w.u64(at + SHARE.MOUNT_FLAGS, s.readOnly ? 1 /* MS_RDONLY */ : 0);
    w.ptr(at + SHARE.FSTYPE, w.str(s.fsType ?? "virtiofs", "share fstype"));
  });
  w.ptr(REC.MODULES, w.strv(spec.modules, "module"));
  w.ptr(REC.PORT_STDIN, w.str(spec.ports.stdin, "stdin port"));
  w.ptr(REC.PORT_STDOUT, w.str(spec.ports.stdout, "stdout port"));
  w.ptr(REC.PORT_STDERR, w.str(spec.ports.stderr, "stderr port"));
  w.ptr(REC.PORT_STATUS, w.str(spec.ports.status, "status port"));
  w.ptr(REC.ARGV, w.strv(spec.argv, "argv"));
  w.ptr(REC.ENVP, w.strv(spec.env, "env"));
  w.ptr(REC.CWD, w.str(spec.cwd, "cwd"));
  w.ptr(REC.PATH, w.str(spec.path, "PATH"));
  if (spec.net) {
    const n = spec.net;
    w.u32(REC.NET_ADDRESS, ipv4(n.address));
    w.u32(REC.NET_NETMASK, ipv4(netmaskOf(n.prefixLength)));
    w.u32(REC.NET_GATEWAY, ipv4(n.gateway));
    const resolv = new TextEncoder().encode(n.resolvConf);
    w.ptr(REC.RESOLV, w.data(resolv));
    w.u64(REC.RESOLV_LEN, resolv.length);
    const hosts = new TextEncoder().encode(n.hosts);
    w.ptr(REC.HOSTS, w.data(hosts));
    w.u64(REC.HOSTS_LEN, hosts.length);
  }
  if (spec.user) {
    const u = spec.user;
    const id = (x: number, what: string) => {
      if (!Number.isInteger(x) || x < 0 || x > 0xfffffffe) {
        throw new RecordError(`bad ${what} ${x}`);
      }
      return x;
    };
    if (u.groups.length > MAX_GROUPS) {
      throw new RecordError(`${u.groups.length} supplementary groups (at most ${MAX_GROUPS})`);
    }
    w.u32(REC.UID, id(u.uid, "uid"));
    w.u32(REC.GID, id(u.gid, "gid"));
    w.u64(REC.NGROUPS, u.groups.length);
    w.align(8);
    const groups = w.reserve(4 * Math.max(1, u.groups.length));
    u.groups.forEach((g, i) => w.u32(groups + 4 * i, id(g, "group")));
    w.ptr(REC.GROUPS, groups);
  }
  return w.finish(RECORD_VERSION);
}

/**
 * Decodes a record (host-side check and tests); the inverse of
 * {@link encodeRecord} for the fields it wrote.
 */
export function decodeRecord(b: Uint8Array): RecordSpec {
  if (b.length < REC.HEADER_SIZE) throw new RecordError(`record too short: ${b.length} bytes`);
  const d = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (d.getBigUint64(REC.MAGIC, true) !== RECORD_MAGIC) throw new RecordError("bad record magic");
  const version = d.getUint32(REC.VERSION, true);
  if (version !== RECORD_VERSION) throw new RecordError(`unsupported record version ${version}`);
  if (d.getUint32(REC.SIZE, true) !== b.length) {
    throw new RecordError(`record size field ${d.getUint32(REC.SIZE, true)} ≠ ${b.length}`);
  }
  const off = (at: number) => {
    const x = Number(d.getBigUint64(at, true));
    if (x >= b.length) throw new RecordError(`pointer at ${at} out of range: ${x}`);
    return x;
  };
  const str = (at: number): string => {
    const p = off(at);
    const end = b.indexOf(0, p);
    if (end < 0) throw new RecordError(`unterminated string at ${p}`);
    return new TextDecoder().decode(b.subarray(p, end));
  };
  const strv = (at: number): string[] => {
    const out: string[] = [];
    for (let p = off(at); d.getBigUint64(p, true) !== 0n; p += 8) out.push(str(p));
    return out;
  };
  const shares: RecordSpec["shares"] = [];
  const n = Number(d.getBigUint64(REC.NSHARES, true));
  for (let i = 0; i < n; i++) {
    const at = off(REC.SHARES) + SHARE.SIZE * i;
    shares.push({
      tag: str(at + SHARE.TAG),
      guestPath: str(at + SHARE.PATH),
      readOnly: (d.getBigUint64(at + SHARE.MOUNT_FLAGS, true) & 1n) !== 0n,
      fsType: str(at + SHARE.FSTYPE),
    });
  }
  const ip = (at: number) => [0, 1, 2, 3].map((i) => b[at + i]).join(".");
  const netOn = (d.getBigUint64(REC.FLAGS, true) & BigInt(REC_FLAGS.NET)) !== 0n;
  const mask = d.getUint32(REC.NET_NETMASK, false);
  const text = (at: number, lenAt: number) => {
    const p = off(at);
    return new TextDecoder().decode(b.subarray(p, p + Number(d.getBigUint64(lenAt, true))));
  };
  return {
    rootTag: d.getBigUint64(REC.ROOT_TAG, true) === 0n ? null : str(REC.ROOT_TAG),
    hostname: str(REC.HOSTNAME),
    shares,
    modules: strv(REC.MODULES),
    ports: {
      stdin: str(REC.PORT_STDIN),
      stdout: str(REC.PORT_STDOUT),
      stderr: str(REC.PORT_STDERR),
      status: str(REC.PORT_STATUS),
    },
    argv: strv(REC.ARGV),
    env: strv(REC.ENVP),
    cwd: str(REC.CWD),
    path: str(REC.PATH),
    net: netOn
      ? {
        address: ip(REC.NET_ADDRESS),
        prefixLength: 32 - Math.log2((~mask >>> 0) + 1),
        gateway: ip(REC.NET_GATEWAY),
        resolvConf: text(REC.RESOLV, REC.RESOLV_LEN),
        hosts: text(REC.HOSTS, REC.HOSTS_LEN),
      }
      : null,
    ...((d.getBigUint64(REC.FLAGS, true) & BigInt(REC_FLAGS.USER)) !== 0n
      ? {
        user: {
          uid: d.getUint32(REC.UID, true),
          gid: d.getUint32(REC.GID, true),
          groups: Array.from(
            { length: Number(d.getBigUint64(REC.NGROUPS, true)) },
            (_, i) => d.getUint32(off(REC.GROUPS) + 4 * i, true),
          ),
        },
      }
      : {}),
  };
}

/** Loads the record's user fields (at `rec`) into variables for {@link SpawnOptions.user}. */
export function recordUser(rec: Val, prefix: string): {
  load: Fragment;
  user: { enabled: Val; uid: Val; gid: Val; ngroups: Val; groups: Val };
} {
  const enabled = v(`${prefix}_user_on`);
  const uid = v(`${prefix}_uid`);
  const gid = v(`${prefix}_gid`);
  const ngroups = v(`${prefix}_ngroups`);
  const groups = v(`${prefix}_groups`);
  return {
    load: seq(
      { op: "load", dst: enabled, addr: rec, offset: REC.FLAGS, size: 8 },
      { op: "arith", kind: "and", dst: enabled, a: enabled, b: REC_FLAGS.USER },
      { op: "load", dst: uid, addr: rec, offset: REC.UID, size: 4 },
      { op: "load", dst: gid, addr: rec, offset: REC.GID, size: 4 },
      { op: "load", dst: ngroups, addr: rec, offset: REC.NGROUPS, size: 8 },
      { op: "load", dst: groups, addr: rec, offset: REC.GROUPS, size: 8 },
    ),
    user: { enabled, uid, gid, ngroups, groups },
  };
}
