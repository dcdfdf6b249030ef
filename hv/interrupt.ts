/**
 * Ctrl-C and SIGTERM for long work that is not a VM (a kernel fetch, an
 * image pull): the work gets an AbortSignal instead of the process dying
 * mid-way, so it removes its temporary files, and the CLI then exits with
 * 128 + the signal's number and one line, as `skiff run` does.
 *
 * @module
 */

import { SkiffError } from "./errors.ts";

/** The signals {@link withInterrupt} turns into an abort. */
const SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;

/** Work stopped by a signal; the CLI exits with {@link exitCode}. */
export class InterruptedError extends SkiffError {
  constructor(readonly signal: keyof typeof SIGNALS) {
    super(`stopped by ${signal}`);
    this.name = "InterruptedError";
  }

  /** 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). */
  get exitCode(): number {
    return 128 + SIGNALS[this.signal];
  }
}

/**
 * Runs `fn` with an AbortSignal that SIGINT / SIGTERM abort with an
 * {@link InterruptedError}; rejects with that error once `fn` has settled
 * after such a signal, whatever `fn` rejected with.
 */
export async function withInterrupt<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const listeners = (Object.keys(SIGNALS) as (keyof typeof SIGNALS)[]).map((sig) => {
    const stop = () => ac.abort(new InterruptedError(sig));
    Deno.addSignalListener(sig, stop);
    return () => Deno.removeSignalListener(sig, stop);
  });
  try {
    return await fn(ac.signal);
  } catch (e) {
    if (ac.signal.aborted) throw ac.signal.reason;
    throw e;
  } finally {
    for (const remove of listeners) remove();
  }
}
