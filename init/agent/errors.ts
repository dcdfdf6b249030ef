/**
 * Errors of the agent client. They are {@link SkiffError}s, so that a
 * library caller tells skiff's failures from others with one `instanceof`.
 *
 * @module
 */

import { SkiffError } from "../../hv/errors.ts";

/** Base class of every error the agent client raises. */
export class AgentError extends SkiffError {
  /** Creates an error with `message`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AgentError";
  }
}

/** A request the host refused to send (a limit of `AGENT.md` exceeded, a bad value). */
export class AgentRequestError extends AgentError {
  /** Creates an error with `message`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AgentRequestError";
  }
}

/** The agent reported a failing step: `error STEP: ERRNO`. */
export class AgentStepError extends AgentError {
  /** The step that failed, e.g. `mount /mnt/root` or `open /etc/x`. */
  readonly step: string;
  /** The errno name, e.g. `ENOENT` (or `errno-N` for one without a name). */
  readonly errno: string;
  /** Creates the error for `what` (the request) failing at `step` with `errno`. */
  constructor(what: string, step: string, errno: string) {
    super(`${what}: ${step} failed: ${errno}`);
    this.name = "AgentStepError";
    this.step = step;
    this.errno = errno;
  }
}

/** The agent's answer was not what the protocol allows, or it ended early. */
export class AgentProtocolError extends AgentError {
  /** Creates an error with `message`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AgentProtocolError";
  }
}

/** A file read from the guest is larger than the reader's `maxBytes`; the read was stopped. */
export class FileTooLargeError extends AgentError {
  /** The file (as the request named it). */
  readonly path: string;
  /** The limit it exceeded, in bytes. */
  readonly maxBytes: number;
  /** Creates the error for `path` exceeding `maxBytes` (`size`: its announced size, when known). */
  constructor(path: string, maxBytes: number, size?: number) {
    super(
      `read ${path}: the file is larger than maxBytes (${
        size === undefined ? "" : `${size} > `
      }${maxBytes} bytes)`,
    );
    this.name = "FileTooLargeError";
    this.path = path;
    this.maxBytes = maxBytes;
  }
}
