/**
 * Reads the agent's replies from a connection: text lines (bounded by
 * `LIMITS.MAX_LINE`), then — for READ_FILE — the raw bytes after them.
 *
 * @module
 */

import { AgentProtocolError } from "./errors.ts";
import { LIMITS } from "./protocol.ts";
import { parseReply, type Reply } from "./wire.ts";

const EMPTY = new Uint8Array(0);

/** Line-then-bytes reader over a connection's readable stream. */
export class ReplyReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #buf: Uint8Array = EMPTY;
  #eof = false;

  /** Takes a reader of `readable` (the stream stays locked to this reader). */
  constructor(readable: ReadableStream<Uint8Array>) {
    this.#reader = readable.getReader();
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const r = await this.#reader.read();
    if (r.done) {
      this.#eof = true;
      return false;
    }
    if (this.#buf.length === 0) this.#buf = r.value;
    else {
      const b = new Uint8Array(this.#buf.length + r.value.length);
      b.set(this.#buf);
      b.set(r.value, this.#buf.length);
      this.#buf = b;
    }
    return true;
  }

  /**
   * The next line without its newline, or null when the stream ended before
   * any byte of it. A line cut off by the end, or longer than the limit, is a
   * protocol error.
   */
  async line(): Promise<string | null> {
    for (let scanned = 0;;) {
      const nl = this.#buf.indexOf(10, scanned);
      if (nl >= 0) {
        const text = new TextDecoder().decode(this.#buf.subarray(0, nl));
        this.#buf = this.#buf.subarray(nl + 1);
        return text;
      }
      scanned = this.#buf.length;
      if (scanned >= LIMITS.MAX_LINE) {
        throw new AgentProtocolError(`reply line longer than ${LIMITS.MAX_LINE} bytes`);
      }
      if (!(await this.#fill())) {
        if (this.#buf.length === 0) return null;
        throw new AgentProtocolError(
          `connection ended inside a reply line: ${
            JSON.stringify(new TextDecoder().decode(this.#buf))
          }`,
        );
      }
    }
  }

  /** The next reply, parsed; null at the end of the stream. */
  async reply(): Promise<Reply | null> {
    const l = await this.line();
    return l === null ? null : parseReply(l);
  }

  /** The bytes after the lines read so far, chunk by chunk, until the end of the stream. */
  async *rest(): AsyncGenerator<Uint8Array> {
    if (this.#buf.length > 0) {
      const b = this.#buf;
      this.#buf = EMPTY;
      yield b;
    }
    while (await this.#fill()) {
      const b = this.#buf;
      this.#buf = EMPTY;
      yield b;
    }
  }

  /** Cancels the stream (the connection's owner still closes it). */
  async cancel(reason?: unknown): Promise<void> {
    await this.#reader.cancel(reason).catch(() => {});
  }
}
