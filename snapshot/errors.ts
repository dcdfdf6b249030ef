/**
 * The typed error every snapshot reader and writer throws.
 *
 * @module
 */

import { SkiffError } from "../hv/errors.ts";

/** What is wrong with a snapshot; lets callers (the cache) decide to discard and cold-boot. */
export type SnapshotProblem =
  /** The directory, `state.json` or `memory` does not exist. */
  | "missing"
  /** `state.json` is not a skiff snapshot (wrong magic). */
  | "magic"
  /** Written by another format version. */
  | "version"
  /** `state.json` does not parse, or its checksum does not match its content. */
  | "corrupt"
  /** `memory` is shorter (or longer) than `state.json` says. */
  | "truncated"
  /** The memory digest does not match (only checked by a full verify). */
  | "memory-digest"
  /** The snapshot does not fit the VM it is restored into (vCPU count, memory layout). */
  | "mismatch"
  /** Writing or publishing failed. */
  | "io";

/** A snapshot that cannot be read, verified, restored or written; names the path and the problem. */
export class SnapshotError extends SkiffError {
  /** The kind of problem. */
  readonly problem: SnapshotProblem;
  /** The snapshot directory (or file) concerned. */
  readonly path: string;

  constructor(problem: SnapshotProblem, path: string, detail: string, options?: ErrorOptions) {
    super(`snapshot ${path}: ${detail}`, options);
    this.name = "SnapshotError";
    this.problem = problem;
    this.path = path;
  }
}
