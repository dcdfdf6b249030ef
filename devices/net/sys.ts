/**
 * Socket plumbing of the network stack's poll loop: socket(2) constants
 * (x86-64 Linux), `struct sockaddr_in` and `struct sockaddr_un`, a cheap
 * errno reader, and the listeners the host side binds before the loop starts
 * (so a taken `--publish` port is an error before the guest runs).
 *
 * @module
 */

import { check, cstr, libc, SysError } from "../../kvm_ffi/libc.ts";
import { formatIpv4, parseIpv4 } from "./wire.ts";

/** socket(2) domains, types and flags (linux/socket.h, linux/net.h). */
export const AF_UNIX = 1, AF_INET = 2;
/** socket(2) types. */
export const SOCK_STREAM = 1, SOCK_DGRAM = 2;
/** socket(2) type flags: non-blocking and close-on-exec. */
export const SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
/** setsockopt(2) levels and options (asm-generic/socket.h, linux/tcp.h). */
export const SOL_SOCKET = 1, SO_REUSEADDR = 2, SO_ERROR = 4, IPPROTO_TCP = 6, TCP_NODELAY = 1;
/** shutdown(2) how: no more sends (FIN). */
export const SHUT_WR = 1;
/** send(2) flags: never SIGPIPE, never block. */
export const MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000;
/** errno values the loop handles (asm-generic/errno*.h). */
export const EINTR = 4, EAGAIN = 11, EINPROGRESS = 115;

/**
 * The calling thread's errno location, looked up once per isolate (every
 * Worker imports this module itself, and a Worker keeps its thread).
 */
const errnoView = new Deno.UnsafePointerView(libc.__errno_location()!);

/** The calling thread's errno (read right after the failing call). */
export function lastErrno(): number {
  return errnoView.getInt32();
}

/** A `struct sockaddr_in` (16 bytes) for `ip:port`. */
export function sockaddrIn(ip: number, port: number): Uint8Array<ArrayBuffer> {
  const sa = new Uint8Array(16);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, AF_INET, true);
  dv.setUint16(2, port); // network byte order
  dv.setUint32(4, ip);
  return sa;
}

/** The address and port of a `struct sockaddr_in`. */
export function parseSockaddrIn(sa: Uint8Array): { ip: number; port: number } {
  return {
    ip: ((sa[4] << 24) | (sa[5] << 16) | (sa[6] << 8) | sa[7]) >>> 0,
    port: (sa[2] << 8) | sa[3],
  };
}

/** A `struct sockaddr_un` for `path` (at most 107 bytes). */
export function sockaddrUn(path: string): Uint8Array<ArrayBuffer> {
  const p = cstr(path);
  if (p.length > 108) throw new RangeError(`socket path is longer than 107 bytes: ${path}`);
  const sa = new Uint8Array(2 + 108);
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(p, 2);
  return sa;
}

/** Sets an integer socket option; throws naming it. */
export function setIntOption(fd: number, level: number, opt: number, value: number, what: string) {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, value, true);
  check(`setsockopt(${what})`, libc.setsockopt(fd, level, opt, v, 4));
}

/** The bound address of an AF_INET socket. */
export function localAddr(fd: number): { ip: number; port: number } {
  const sa = new Uint8Array(16);
  const len = new Uint32Array([16]);
  check("getsockname", libc.getsockname(fd, sa, new Uint8Array(len.buffer)));
  return parseSockaddrIn(sa);
}

/** A socket bound before the loop starts, handed to it by number. */
export interface BoundSocket {
  /** The file descriptor (the loop owns it once handed over). */
  fd: number;
  /** The bound address (the kernel's choice for port 0). */
  addr: Deno.NetAddr;
}

/**
 * Binds a non-blocking IPv4 socket of `type` to `hostname:port` (TCP also
 * listens). Throws naming the address and the errno (`EADDRINUSE`, …).
 */
export function bindInet(
  type: typeof SOCK_STREAM | typeof SOCK_DGRAM,
  hostname: string,
  port: number,
): BoundSocket {
  const proto = type === SOCK_STREAM ? "tcp" : "udp";
  const ip = parseIpv4(hostname);
  const fd = check(
    `socket(${proto})`,
    libc.socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0),
  );
  try {
    // A listener may reuse a port whose old connections sit in TIME_WAIT (as every server does).
    if (type === SOCK_STREAM) setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    const sa = sockaddrIn(ip, port);
    if (libc.bind(fd, sa, sa.length) < 0) {
      throw new SysError(`bind(${hostname}:${port}/${proto})`, lastErrno());
    }
    if (type === SOCK_STREAM) check(`listen(${hostname}:${port})`, libc.listen(fd, 128));
    const a = localAddr(fd);
    return { fd, addr: { transport: proto, hostname: formatIpv4(a.ip), port: a.port } };
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/**
 * A non-blocking listening Unix stream socket at `path` (an existing socket
 * file there is replaced). Returns its fd.
 */
export function listenUnix(path: string): number {
  try {
    if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
  } catch {
    // does not exist
  }
  const fd = check(
    "socket(AF_UNIX)",
    libc.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0),
  );
  try {
    const sa = sockaddrUn(path);
    check(`bind(${path})`, libc.bind(fd, sa, sa.length));
    check(`listen(${path})`, libc.listen(fd, 4));
  } catch (e) {
    libc.close(fd);
    throw e;
  }
  return fd;
}
