/**
 * eventfd helpers and an fd wait that never blocks the event loop: `poll` runs
 * on a thread-pool thread (`nonblocking: true` FFI) and also watches a "stop"
 * eventfd, so one {@link StopSignal} ends every pending wait of its owner.
 *
 * @module
 */

import { close, EFD, eventfd, libc, POLL } from "./libc.ts";

/** A wake-up eventfd shared by every wait of one back-end; {@link StopSignal.fire} ends them all. */
export class StopSignal implements Disposable {
  /** The eventfd (readable once fired). */
  readonly fd: number;
  #fired = false;
  constructor() {
    this.fd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
  }
  /** True once fired. */
  get fired(): boolean {
    return this.#fired;
  }
  /** Wakes every pending wait (they return "stopped"). Idempotent. */
  fire(): void {
    if (this.#fired) return;
    this.#fired = true;
    const one = new Uint8Array(8);
    one[0] = 1;
    libc.write(this.fd, one, 8n);
  }
  /** Closes the eventfd (fire first and let waits finish). */
  [Symbol.dispose](): void {
    try {
      close(this.fd);
    } catch {
      // already closed
    }
  }
}

/**
 * Waits until `fd` is readable (or has hung up). Resolves "ready", or
 * "stopped" once `stop` fires.
 */
export async function waitReadable(fd: number, stop: StopSignal): Promise<"ready" | "stopped"> {
  const pfd = new Uint8Array(16);
  const dv = new DataView(pfd.buffer);
  for (;;) {
    if (stop.fired) return "stopped";
    dv.setInt32(0, fd, true);
    dv.setInt16(4, POLL.IN, true);
    dv.setInt16(6, 0, true);
    dv.setInt32(8, stop.fd, true);
    dv.setInt16(12, POLL.IN, true);
    dv.setInt16(14, 0, true);
    const r = await libc.poll_nb(pfd, 2n, -1);
    if (stop.fired || dv.getInt16(14, true) !== 0) return "stopped";
    if (r > 0 && dv.getInt16(6, true) !== 0) return "ready";
    // r < 0 is EINTR on the pool thread (its errno is not ours): poll again.
  }
}

/** Reads and discards an eventfd's counter (non-blocking fd or after poll); returns it. */
export function drainEventfd(fd: number): bigint {
  const buf = new Uint8Array(8);
  const n = Number(libc.read(fd, buf, 8n));
  return n === 8 ? new DataView(buf.buffer).getBigUint64(0, true) : 0n;
}

/** Adds 1 to an eventfd (a vhost-user "call": interrupt the guest). */
export function signalEventfd(fd: number): void {
  const one = new Uint8Array(8);
  one[0] = 1;
  libc.write(fd, one, 8n);
}

/**
 * Waits until at least one of `fds` is readable (or has hung up): resolves
 * with those fds, or "stopped" once `stop` fires. One pool thread waits for
 * them all (a device's queues), where {@link waitReadable} takes one per fd.
 */
export async function waitAnyReadable(
  fds: readonly number[],
  stop: StopSignal,
): Promise<number[] | "stopped"> {
  const n = fds.length + 1;
  const pfd = new Uint8Array(8 * n);
  const dv = new DataView(pfd.buffer);
  for (;;) {
    if (stop.fired) return "stopped";
    [...fds, stop.fd].forEach((fd, i) => {
      dv.setInt32(8 * i, fd, true);
      dv.setInt16(8 * i + 4, POLL.IN, true);
      dv.setInt16(8 * i + 6, 0, true);
    });
    const r = await libc.poll_nb(pfd, BigInt(n), -1);
    if (stop.fired || dv.getInt16(8 * fds.length + 6, true) !== 0) return "stopped";
    if (r > 0) {
      const ready = fds.filter((_, i) => dv.getInt16(8 * i + 6, true) !== 0);
      if (ready.length > 0) return ready;
    }
    // r < 0 is EINTR on the pool thread (its errno is not ours): poll again.
  }
}
