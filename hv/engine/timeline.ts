/**
 * `--verbose` timeline lines: an event stamped with the milliseconds since
 * this process started (the time origin of `performance.now()`), so one run's
 * lines read as a timeline — QEMU spawned, QMP up, guest ready or snapshot
 * restored, session ready, command started and exited, VM stopped.
 *
 * @module
 */

/** The timeline line of `event` at `now` ms since the process started. */
export function timelineLine(event: string, now = performance.now()): string {
  return `timeline +${Math.round(now)} ms: ${event}`;
}

/** Logs `event` as a timeline line through `log`, if there is one. */
export function timeline(log: ((line: string) => void) | undefined, event: string): void {
  log?.(timelineLine(event));
}
