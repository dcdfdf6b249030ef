/**
 * Unix stream sockets through libc, because vhost-user passes file
 * descriptors (memory regions, eventfds) as SCM_RIGHTS ancillary data, which
 * Deno's socket API does not expose. Sockets are non-blocking; waiting
 * happens in `poll` on a thread-pool thread (`nonblocking: true` FFI), so the
 * event loop never blocks (kvm_ffi/eventfd.ts). Every wait also watches a
 * "stop" eventfd: writing to it wakes and ends all pending waits.
 *
 * @module
 */

import { StopSignal, waitReadable } from "../../kvm_ffi/eventfd.ts";
import { check, close, cstr, errno, libc, SysError } from "../../kvm_ffi/libc.ts";

/** socket(2) constants (x86-64 Linux). */
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
/** recvmsg(2) flag: received fds get O_CLOEXEC. */
const MSG_CMSG_CLOEXEC = 0x40000000;
/** `SOL_SOCKET` / `SCM_RIGHTS` (asm-generic/socket.h, linux/socket.h). */
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const EAGAIN = 11;
const EINTR = 4;

function sockaddrUn(path: string): Uint8Array<ArrayBuffer> {
  const p = cstr(path);
  if (p.length > 108) throw new RangeError(`socket path is longer than 107 bytes: ${path}`);
  const sa = new Uint8Array(2 + 108);
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(p, 2);
  return sa;
}

/** A listening Unix stream socket at `path` (created; an existing socket file is replaced). */
export class UnixListener implements Disposable {
  /** Socket path. */
  readonly path: string;
  /** Listening fd. */
  readonly fd: number;
  #closed = false;

  constructor(path: string) {
    this.path = path;
    try {
      if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
    } catch {
      // does not exist
    }
    const fd = check("socket(AF_UNIX)", libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    try {
      const sa = sockaddrUn(path);
      check(`bind(${path})`, libc.bind(fd, sa, sa.length));
      check(`listen(${path})`, libc.listen(fd, 4));
    } catch (e) {
      close(fd);
      throw e;
    }
    this.fd = fd;
  }

  /** Accepts one connection (non-blocking fd), or null once `stop` fires. */
  async accept(stop: StopSignal): Promise<UnixConn | null> {
    for (;;) {
      if ((await waitReadable(this.fd, stop)) === "stopped") return null;
      const c = libc.accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c >= 0) return new UnixConn(c);
      const e = errno();
      if (e !== EAGAIN && e !== EINTR) throw new SysError(`accept(${this.path})`, e);
    }
  }

  /** Closes the socket and removes its path. Idempotent. */
  [Symbol.dispose](): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
    libc.unlink(cstr(this.path));
  }
}

/** Control-message room for up to this many fds per message (vhost-user sends ≤ 8 regions). */
export const MAX_FDS = 16;

/** A connected non-blocking Unix stream socket. */
export class UnixConn implements Disposable {
  /** The socket fd. */
  readonly fd: number;
  #closed = false;
  #msghdr = new Uint8Array(56);
  #iov = new Uint8Array(16);
  #control = new Uint8Array(16 + 4 * MAX_FDS);

  constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Reads exactly `len` bytes into a new buffer, collecting any fds that
   * arrive with them. Resolves null on EOF (or when `stop` fires) before
   * `len` bytes; throws on a socket error. Received fds are the caller's to close.
   */
  async recvExact(
    len: number,
    stop: StopSignal,
  ): Promise<{ bytes: Uint8Array<ArrayBuffer>; fds: number[] } | null> {
    const bytes = new Uint8Array(len);
    const fds: number[] = [];
    let got = 0;
    const hdr = new DataView(this.#msghdr.buffer);
    const iov = new DataView(this.#iov.buffer);
    const ptr = (b: Uint8Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
    while (got < len) {
      if ((await waitReadable(this.fd, stop)) === "stopped") {
        for (const f of fds) libc.close(f);
        return null;
      }
      iov.setBigUint64(0, ptr(bytes) + BigInt(got), true);
      iov.setBigUint64(8, BigInt(len - got), true);
      this.#msghdr.fill(0);
      hdr.setBigUint64(16, ptr(this.#iov), true); // msg_iov
      hdr.setBigUint64(24, 1n, true); // msg_iovlen
      hdr.setBigUint64(32, ptr(this.#control), true); // msg_control
      hdr.setBigUint64(40, BigInt(this.#control.length), true); // msg_controllen
      const n = Number(libc.recvmsg(this.fd, this.#msghdr, MSG_CMSG_CLOEXEC));
      if (n < 0) {
        const e = errno();
        if (e === EAGAIN || e === EINTR) continue;
        for (const f of fds) libc.close(f);
        throw new SysError("recvmsg(vhost-user socket)", e);
      }
      fds.push(...this.#takeFds(Number(hdr.getBigUint64(40, true))));
      if (n === 0) {
        for (const f of fds) libc.close(f);
        return null;
      }
      got += n;
    }
    return { bytes, fds };
  }

  /** Parses SCM_RIGHTS control messages (cmsg(3) layout on x86-64: 16-byte header). */
  #takeFds(controllen: number): number[] {
    const out: number[] = [];
    const c = new DataView(this.#control.buffer);
    let off = 0;
    while (off + 16 <= controllen) {
      const clen = Number(c.getBigUint64(off, true));
      if (clen < 16 || off + clen > controllen) break;
      if (c.getInt32(off + 8, true) === SOL_SOCKET && c.getInt32(off + 12, true) === SCM_RIGHTS) {
        for (let p = off + 16; p + 4 <= off + clen; p += 4) out.push(c.getInt32(p, true));
      }
      off += (clen + 7) & ~7;
    }
    return out;
  }

  /** Writes all of `bytes` (replies are small; waits briefly if the socket is full). */
  send(bytes: Uint8Array<ArrayBuffer>): void {
    let off = 0;
    let spins = 0;
    while (off < bytes.length) {
      const n = Number(libc.write(this.fd, bytes.subarray(off), BigInt(bytes.length - off)));
      if (n < 0) {
        const e = errno();
        if ((e === EAGAIN || e === EINTR) && spins++ < 100000) continue;
        throw new SysError("write(vhost-user socket)", e);
      }
      off += n;
    }
  }

  /** Closes the socket. Idempotent. */
  [Symbol.dispose](): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }
}
