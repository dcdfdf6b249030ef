/**
 * The guest's serial console (ttyS0) as the qemu engine reads it: kept as a
 * short tail for error messages, mirrored to the terminal with `--verbose`,
 * and watched for the guest agent's READY marker (or its boot error line).
 * Kernel messages may interleave with the marker, so it is matched as a
 * substring of the text so far.
 *
 * @module
 */

import { AGENT_READY_MARKER } from "../../init/agent/protocol.ts";
import { initFailure } from "../engine/init_failure.ts";
import { VmError } from "../errors.ts";
import { abortRace } from "../abort.ts";
import type { QemuProcess } from "./process.ts";

/** Characters of console text kept for error messages. */
const TAIL = 16384;

/** Reads a console connection until it closes. */
export class ConsoleWatch {
  #text = "";
  #seen = "";
  #readyResolve!: () => void;
  #readyReject!: (e: Error) => void;
  /** Resolves when the agent printed its READY marker; rejects on its boot error or EOF first. */
  readonly ready: Promise<void>;
  /** Resolves when the console closed (QEMU exited). */
  readonly closed: Promise<void>;

  /** Receives the console's bytes as they arrive (an interactive session's terminal). */
  tap: ((bytes: Uint8Array) => void) | null = null;

  constructor(conn: Deno.Conn, mirror?: (text: string) => void) {
    this.ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.ready.catch(() => {});
    this.closed = this.#pump(conn, mirror);
  }

  async #pump(conn: Deno.Conn, mirror?: (text: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(16384);
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        n = null;
      }
      if (n === null) break;
      this.tap?.(buf.slice(0, n));
      const s = decoder.decode(buf.subarray(0, n), { stream: true });
      mirror?.(s);
      this.#text = (this.#text + s).slice(-TAIL);
      this.#check(s);
    }
    this.#readyReject(
      new VmError(`the guest stopped before its init was ready${this.tail()}`),
    );
  }

  #check(s: string): void {
    // Only the end of what was seen can hold a marker split across reads.
    this.#seen = (this.#seen + s).slice(-(4096 + AGENT_READY_MARKER.length));
    if (this.#seen.includes(AGENT_READY_MARKER)) this.#readyResolve();
    const failed = initFailure(this.#seen);
    if (failed) this.#readyReject(failed);
  }

  /** The last lines of the console, as `; console:\n…` for an error message (or ""). */
  tail(lines = 8): string {
    const t = this.#text.trim().split("\n").slice(-lines).join("\n");
    return t ? `; console:\n${t}` : "";
  }
}

/**
 * Resolves when `watch` saw READY; rejects with a {@link VmError} when QEMU
 * exits first (with the console's tail and QEMU's own words) or after `ms`
 * (a hang), or as `signal` aborts.
 */
export async function guestReady(
  p: QemuProcess,
  watch: ConsoleWatch,
  ms: number,
  signal?: AbortSignal,
): Promise<void> {
  const exited = p.exited.then(() => {
    throw new VmError(
      `QEMU exited before the guest was ready${watch.tail()}${
        p.diagnostics ? `; QEMU: ${p.diagnostics}` : ""
      }`,
    );
  });
  exited.catch(() => {});
  // The deadline as hv/abort.ts has them (vsockReady's way): AbortSignal.timeout.
  const deadline = AbortSignal.timeout(ms);
  using late = abortRace(deadline);
  using aborted = abortRace(signal);
  try {
    await Promise.race([watch.ready, exited, late.promise, aborted.promise]);
  } catch (e) {
    if (deadline.aborted && e === deadline.reason) {
      throw new VmError(`the guest was not ready after ${ms / 1000} s${watch.tail()}`);
    }
    throw e;
  }
}
