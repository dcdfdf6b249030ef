/**
 * The one bridge from an `AbortSignal` to a promise, for racing a signal
 * against work that takes no signal itself (a VM's stop, a device's wait).
 * Deadlines are `AbortSignal.timeout(ms)`, combined with `AbortSignal.any`.
 *
 * @module
 */

/** A promise that rejects with the signal's reason when it aborts; dispose to stop listening. */
export interface AbortRace extends Disposable {
  /** Rejects once `signal` aborts (never settles otherwise); marked handled. */
  readonly promise: Promise<never>;
}

/**
 * `promise` rejects with `signal.reason` when `signal` aborts (at once when
 * it already has). Without a signal it never settles. Use with `using`, so
 * that the listener goes when the race is over.
 */
export function abortRace(signal?: AbortSignal): AbortRace {
  let onAbort = () => {};
  const promise = new Promise<never>((_, reject) => {
    if (!signal) return;
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  promise.catch(() => {});
  return { promise, [Symbol.dispose]: () => signal?.removeEventListener("abort", onAbort) };
}
