/**
 * Writing and reading snapshot directories: atomic publish (temp dir in the
 * same parent, fsync, rename), and a reader that validates magic, version,
 * checksum and the memory file's size before anything is restored.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import type { GuestMemory } from "../hv/memory.ts";
import type { RegionMemory } from "../hv/memory.ts";
import { check, close, libc, O, open } from "../kvm_ffi/libc.ts";
import { SnapshotError } from "./errors.ts";
import {
  encodeManifest,
  finishManifest,
  FORMAT_VERSION,
  MEMORY_FILE,
  type MemoryInfo,
  type ParsedManifest,
  parseManifest,
  type SnapshotManifest,
  type SnapshotState,
  STATE_FILE,
} from "./format.ts";
import { digestMemoryFile, mapMemoryFile, writeMemoryFile } from "./memory_file.ts";

/** lseek(2) whence: end of file. */
const SEEK_END = 2;

/** Size in bytes of the file at `path` (open, lseek to the end, close). */
function fileSize(path: string): number {
  const fd = open(path, O.RDONLY);
  try {
    return check(`lseek(${path})`, libc.lseek(fd, 0n, SEEK_END));
  } finally {
    close(fd);
  }
}

/** fsync(2) of a file or directory by path. */
export function fsyncPath(path: string): void {
  const fd = open(path, O.RDONLY);
  try {
    check(`fsync(${path})`, libc.fsync(fd));
  } finally {
    close(fd);
  }
}

/** Outcome of {@link publishDir}. */
export type PublishResult = "published" | "exists";

/**
 * Builds a directory atomically: `fill` writes into a fresh temp directory in
 * `target`'s parent (it must fsync the files it writes); the temp directory is
 * fsynced and renamed to `target`, then the parent is fsynced. When `target`
 * already exists (another process won the race) ours is discarded and the
 * result is `"exists"`. On any failure the temp directory is removed.
 */
export async function publishDir(
  target: string,
  fill: (tmpDir: string) => void | Promise<void>,
): Promise<PublishResult> {
  const parent = dirname(target);
  Deno.mkdirSync(parent, { recursive: true, mode: 0o700 });
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  const tmp = join(parent, `.tmp-${basename(target)}-${Deno.pid}-${rand}`);
  Deno.mkdirSync(tmp, { mode: 0o700 });
  try {
    await fill(tmp);
    fsyncPath(tmp);
    try {
      Deno.renameSync(tmp, target);
    } catch (e) {
      if (existsDir(target)) {
        Deno.removeSync(tmp, { recursive: true });
        return "exists";
      }
      throw e;
    }
    fsyncPath(parent);
    return "published";
  } catch (e) {
    try {
      Deno.removeSync(tmp, { recursive: true });
    } catch {
      // already gone
    }
    if (e instanceof SnapshotError) throw e;
    throw new SnapshotError("io", target, `writing failed: ${(e as Error).message}`, { cause: e });
  }
}

function existsDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/** What {@link writeSnapshot} needs: the state and the guest memory. */
export interface SnapshotContents extends SnapshotState {
  /** Guest memory; regions with a backing fd are scanned with SEEK_DATA/SEEK_HOLE. */
  memory: Pick<GuestMemory, "regions">;
}

/**
 * Writes a snapshot directory at `dir` atomically: the sparse `memory` file,
 * then `state.json`. Resolves to `"exists"` when another writer published
 * `dir` first (ours is discarded).
 */
export function writeSnapshot(dir: string, contents: SnapshotContents): Promise<PublishResult> {
  return publishDir(dir, (tmp) => {
    const memory = writeMemoryFile(join(tmp, MEMORY_FILE), contents.memory);
    const text = encodeManifest({
      version: FORMAT_VERSION,
      createdAt: new Date().toISOString(),
      memory,
      vm: contents.vm,
      vcpus: contents.vcpus,
      devices: contents.devices,
      source: contents.source,
    });
    const statePath = join(tmp, STATE_FILE);
    Deno.writeTextFileSync(statePath, text, { createNew: true, mode: 0o600 });
    fsyncPath(statePath);
  });
}

/** A snapshot directory whose `state.json` and memory size were validated. */
export interface Snapshot {
  /** The snapshot directory. */
  readonly dir: string;
  /** The decoded state. */
  readonly manifest: SnapshotManifest;
  /** Path of the `memory` file. */
  readonly memoryPath: string;
}

/** Options of {@link readSnapshot}. */
export interface ReadOptions {
  /** Also recompute the memory digest (reads every data page; slow for big snapshots). */
  verifyMemory?: boolean;
}

/**
 * Opens a snapshot directory and validates it: `state.json` magic, format
 * version and checksum, and the `memory` file's exact size. Cheap (one small
 * JSON file and a stat) unless `verifyMemory` is set. Throws
 * {@link SnapshotError} naming the problem.
 */
export function readSnapshot(dir: string, options: ReadOptions = {}): Snapshot {
  const snap = readSnapshotState(dir);
  // open + lseek(SEEK_END) through the libc FFI already in use: the first
  // Deno.statSync of a process costs 1.4–2.8 ms here, ~25% of a restore.
  let size: number;
  try {
    size = fileSize(snap.memoryPath);
  } catch {
    throw new SnapshotError("missing", dir, `${MEMORY_FILE} not found`);
  }
  checkMemorySize(dir, snap.manifest.memory, size);
  if (options.verifyMemory) verifySnapshotMemory(snap);
  return snap;
}

/** Throws {@link SnapshotError} (`truncated`) unless the memory file is `size` bytes. */
function checkMemorySize(dir: string, info: MemoryInfo, size: number): void {
  if (size !== info.fileSize) {
    throw new SnapshotError(
      "truncated",
      dir,
      `${MEMORY_FILE} is ${size} bytes, state.json says ${info.fileSize}`,
    );
  }
}

/**
 * {@link readSnapshot} without the memory file's size check: for a restore,
 * whose {@link openSnapshotMemory} checks the size on the descriptor it maps
 * (one open of `memory` instead of two).
 */
export function readSnapshotState(dir: string): Snapshot {
  return finishSnapshotState(parseSnapshotState(dir));
}

/**
 * A snapshot directory whose `state.json` is read and parsed, with only its
 * magic, version and `memory` section checked: enough to map the memory
 * while {@link finishSnapshotState} verifies the checksum and the rest.
 */
export interface ParsedSnapshot {
  /** The snapshot directory. */
  readonly dir: string;
  /** Path of the `memory` file. */
  readonly memoryPath: string;
  /** The parsed `state.json`. */
  readonly parsed: ParsedManifest;
}

/**
 * `name` inside `dir`, by concatenation: the restore path's only use of
 * `node:path` `join` cost ~0.14 ms of a fresh process's first restore (its
 * first call runs cold code), for names that never need normalizing.
 */
function inDir(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/** First half of {@link readSnapshotState}: read and parse `state.json`, check `memory`. */
export function parseSnapshotState(dir: string): ParsedSnapshot {
  let text: string;
  const statePath = inDir(dir, STATE_FILE);
  try {
    text = Deno.readTextFileSync(statePath);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new SnapshotError("missing", dir, `${STATE_FILE} not found`);
    }
    throw new SnapshotError("corrupt", dir, `cannot read ${STATE_FILE}: ${(e as Error).message}`);
  }
  return { dir, memoryPath: inDir(dir, MEMORY_FILE), parsed: parseManifest(text, dir) };
}

/**
 * Second half of {@link readSnapshotState}: the checksum and every other
 * section (`checksum`: the body's, when computed already; `manifestChecksum`).
 */
export function finishSnapshotState(p: ParsedSnapshot, checksum?: string): Snapshot {
  return {
    dir: p.dir,
    manifest: finishManifest(p.parsed, p.dir, checksum),
    memoryPath: p.memoryPath,
  };
}

/** Recomputes the memory digest; throws {@link SnapshotError} (`memory-digest`) on mismatch. */
export function verifySnapshotMemory(snap: Snapshot): void {
  const got = digestMemoryFile(snap.memoryPath, snap.manifest.memory);
  if (got !== snap.manifest.memory.digest) {
    throw new SnapshotError(
      "memory-digest",
      snap.dir,
      `memory digest ${got} ≠ ${snap.manifest.memory.digest}`,
    );
  }
}

/** The snapshot's memory section, decoded or only parsed. */
export function memoryInfoOf(snap: Snapshot | ParsedSnapshot): MemoryInfo {
  return "manifest" in snap ? snap.manifest.memory : snap.parsed.memory;
}

/**
 * Maps the snapshot's memory `MAP_PRIVATE` (copy-on-write; no bytes copied),
 * after checking the file's size on the descriptor it maps: a
 * {@link SnapshotError} (`missing` or `truncated`) otherwise.
 */
export function openSnapshotMemory(snap: Snapshot | ParsedSnapshot): RegionMemory {
  const info = "manifest" in snap ? snap.manifest.memory : snap.parsed.memory;
  return mapMemoryFile(snap.memoryPath, info, (size) => {
    if (size < 0) throw new SnapshotError("missing", snap.dir, `${MEMORY_FILE} not found`);
    checkMemorySize(snap.dir, info, size);
  });
}
