/**
 * How tests wait: for a condition, never for a fixed time. A test's bound
 * exists only to turn a hang into a failure with a message; it is generous
 * (minutes) so that a busy machine — other tests in parallel, `deno task
 * test:stress` — is slow without failing.
 *
 * @module
 */

/** The bound on any single wait in a test: only catches a hang. */
export const HANG_MS = 5 * 60_000;

/** The bound on one guest boot and run, only to catch a hang (TCG on a loaded machine is slow). */
export const GUEST_HANG_MS = 10 * 60_000;

/**
 * Waits until `cond()` holds, polling every few milliseconds; throws naming
 * `what` only when `boundMs` passes first.
 */
export async function until(
  cond: () => boolean,
  what: string,
  boundMs = HANG_MS,
): Promise<void> {
  const give = performance.now() + boundMs;
  while (!cond()) {
    if (performance.now() > give) throw new Error(`not seen within ${boundMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Settles like `work`, or rejects with `message()` when `boundMs` passes
 * first (a hang); the timer never outlives the race.
 */
export async function hangBound<T>(
  work: Promise<T>,
  message: () => string,
  boundMs = HANG_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${message()} (no end after ${boundMs} ms)`)),
      boundMs,
    );
  });
  try {
    return await Promise.race([work, hung]);
  } finally {
    clearTimeout(timer);
  }
}
