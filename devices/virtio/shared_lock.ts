/**
 * A lock in a SharedArrayBuffer word, for the threads that share a
 * virtio-mmio transport (vCPU Workers and the main thread). The word holds
 * the owner's token (0: free); a second word counts waiters so a release
 * only calls `Atomics.notify` when someone sleeps. Reentrant per token: a
 * thread that already holds the lock under its token gets `false` from
 * {@link SharedLock.acquire} and must not release it (the in-process
 * transport runs both halves on one thread with one token).
 *
 * Holders never wait for anything else while holding (leaf critical
 * sections, or one device batch on the main thread), so a waiter waits at
 * most that long.
 *
 * @module
 */

/** The main thread's token (the device's host half). */
export const HOST_OWNER = 1;

/** The token of the register half in vCPU `id`'s Worker. */
export function vcpuOwner(id: number): number {
  return 2 + id;
}

/** One lock word (and its waiter count) in a shared Int32Array. */
export class SharedLock {
  readonly #w: Int32Array;
  readonly #at: number;
  readonly #waiters: number;
  readonly #owner: number;

  /**
   * @param words the shared words
   * @param at index of the lock word
   * @param waiters index of its waiter count
   * @param owner this thread's token (non-zero)
   */
  constructor(words: Int32Array, at: number, waiters: number, owner: number) {
    if (!Number.isInteger(owner) || owner <= 0) throw new RangeError(`lock owner ${owner} ≤ 0`);
    this.#w = words;
    this.#at = at;
    this.#waiters = waiters;
    this.#owner = owner;
  }

  /** Takes the lock, sleeping while another owner holds it; false when this owner already held it. */
  acquire(): boolean {
    const w = this.#w, at = this.#at, me = this.#owner;
    for (;;) {
      const cur = Atomics.compareExchange(w, at, 0, me);
      if (cur === 0) return true;
      if (cur === me) return false;
      Atomics.add(w, this.#waiters, 1);
      // Returns at once if the word already changed: no wake-up is lost.
      Atomics.wait(w, at, cur);
      Atomics.sub(w, this.#waiters, 1);
    }
  }

  /** Releases a lock {@link acquire} returned true for. */
  release(): void {
    Atomics.store(this.#w, this.#at, 0);
    if (Atomics.load(this.#w, this.#waiters) > 0) Atomics.notify(this.#w, this.#at);
  }

  /** Whether this owner holds the lock. */
  get held(): boolean {
    return Atomics.load(this.#w, this.#at) === this.#owner;
  }

  /** Runs `fn` holding the lock. */
  with<T>(fn: () => T): T {
    const took = this.acquire();
    try {
      return fn();
    } finally {
      if (took) this.release();
    }
  }
}
