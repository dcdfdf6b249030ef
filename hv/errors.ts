/**
 * skiff's typed errors and its own process exit codes. They sit at the bottom
 * of the layers (hv core) so that every layer can throw them.
 *
 * @module
 */

/** Exit code of `skiff run` when `--timeout` expires (as coreutils `timeout`). */
export const EXIT_TIMEOUT = 124;

/** Exit code for skiff's own failures: bad usage, missing kernel, VM failure. */
export const EXIT_FAILURE = 125;

/** Base class of skiff's typed errors. */
export class SkiffError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The VM failed: guest stopped inside the kernel, VMM error, engine crashed. */
export class VmError extends SkiffError {}

/** The guest stopped on an exit skiff cannot continue from (emulation error, triple fault…). */
export class VmExitError extends VmError {
  /** Exit reason, e.g. `KVM_EXIT_INTERNAL_ERROR (emulation failure)`. */
  readonly reason: string;
  /** Guest RIP at the exit, when known. */
  readonly rip?: bigint;
  constructor(reason: string, rip?: bigint, detail = "") {
    const at = rip === undefined ? "" : ` at RIP 0x${rip.toString(16)}`;
    super(`guest stopped: ${reason}${at}${detail ? ` ${detail}` : ""}`);
    this.reason = reason;
    this.rip = rip;
  }
}

/**
 * A time limit expired: `--timeout` (the VM was stopped), or a command's own
 * limit ({@link CommandTimeoutError}: only the command was killed).
 */
export class VmTimeoutError extends VmError {
  /**
   * `seconds`: the limit that expired. `message` defaults to the `--timeout`
   * one ("timed out after N s; the VM was stopped").
   */
  constructor(readonly seconds: number, message?: string, options?: ErrorOptions) {
    super(message ?? `timed out after ${seconds} s; the VM was stopped`, options);
  }
}

/**
 * `exec`'s `timeoutMs` expired: the command (its process group) was killed;
 * the VM goes on and takes further calls.
 */
export class CommandTimeoutError extends VmTimeoutError {
  /** The limit `seconds` that expired. */
  constructor(seconds: number, options?: ErrorOptions) {
    super(seconds, `the command timed out after ${seconds} s and was killed`, options);
  }
}

/** No engine can run guests here, or the chosen one is unavailable. */
export class EngineUnavailableError extends SkiffError {}

/** Invalid configuration (bad share path, bad port spec, …), found before boot. */
export class ConfigError extends SkiffError {}
