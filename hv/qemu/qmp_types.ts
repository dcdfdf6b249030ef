/**
 * The types, errors and small helpers of skiff's QMP client (qmp.ts): what
 * QEMU answers (QAPI shapes reduced to what skiff reads), the errors a
 * command or a migration ends with, and the version rule.
 *
 * @module
 */

/** QEMU's version from the greeting. */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** An asynchronous QMP event (e.g. `SHUTDOWN`, `STOP`). */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** A command answered with `{"error": …}`, or the connection failing. */
export class QmpError extends Error {
  /**
   * @param message what failed, naming the command and QEMU's message
   * @param errorClass QEMU's error class (e.g. `GenericError`, `DeviceNotFound`)
   * @param command the QMP command, when one failed
   * @param qemuMessage QEMU's own description (`desc`), when it sent one
   */
  constructor(
    message: string,
    readonly errorClass?: string,
    readonly command?: string,
    readonly qemuMessage?: string,
  ) {
    super(message);
    this.name = "QmpError";
  }
}

/** A migration that ended in `failed` or `cancelled`, or never ended within its bound. */
export class MigrationError extends QmpError {
  constructor(message: string, readonly status: string) {
    super(message, undefined, "migrate");
    this.name = "MigrationError";
  }
}

/** `query-migrate`'s answer, reduced to what skiff reads (QAPI `MigrationInfo`). */
export interface MigrationInfo {
  /** `none`, `setup`, `active`, `device`, `completed`, `failed`, `cancelled`, … */
  status: string;
  /** Why it failed, when it did (source side). */
  "error-desc"?: string;
  /** Milliseconds the migration took, once completed (source side). */
  "total-time"?: number;
  /** Reasons a migration is blocked right now (QEMU ≥ 6.0). */
  "blocked-reasons"?: string[];
}

/** A device on a PCI bus, from `query-pci` (QAPI `PciDeviceInfo`, reduced). */
export interface PciDeviceInfo {
  bus: number;
  slot: number;
  function: number;
  /** The device's `id`, when it has one. */
  qdev_id: string;
  class_info: { desc?: string; class: number };
  id: { vendor: number; device: number };
  /** Set on bridges and root ports: the bus behind them. */
  pci_bridge?: { bus: { number: number }; devices?: PciDeviceInfo[] };
}

/** Options of the waiting helpers: an abort signal and a bound that only catches hangs. */
export interface QmpWaitOptions {
  signal?: AbortSignal;
  /** Give up after this many ms (default 60 000: a hang, not a slow machine). */
  timeoutMs?: number;
}

/**
 * Quotes `path` for the `/bin/sh -c` that QEMU's `exec:` migration URI runs.
 * Paths with a quote or a newline are refused rather than escaped.
 */
export function shellQuotePath(path: string): string {
  if (/['\n\0]/.test(path)) throw new RangeError(`path ${JSON.stringify(path)} cannot be quoted`);
  return `'${path}'`;
}

/** Oldest QEMU skiff drives: 7.2 brought `-netdev stream` and a stable microvm ACPI. */
export const QMP_MIN_VERSION: QemuVersion = { major: 7, minor: 2, micro: 0 };

/** `a >= b` for versions. */
export function versionAtLeast(a: QemuVersion, b: QemuVersion): boolean {
  if (a.major !== b.major) return a.major > b.major;
  if (a.minor !== b.minor) return a.minor > b.minor;
  return a.micro >= b.micro;
}
