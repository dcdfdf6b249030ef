/**
 * Errors of the agent client.
 *
 * @module
 */

/** Base class of every error the agent client raises. */
export class AgentError extends Error {
  /** Creates an error with `message`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AgentError";
  }
}

/** A request the host refused to send (a limit of `AGENT.md` exceeded, a bad value). */
export class AgentRequestError extends AgentError {
  /** Creates an error with `message`. */
  constructor(message: string) {
    super(message);
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
