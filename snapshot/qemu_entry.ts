/**
 * The qemu engine's snapshot entry (FORMAT.md, "qemu-engine entries"): a
 * directory with QEMU's migration stream (`state`, device state only: guest
 * RAM is a shared file that the `x-ignore-shared` capability leaves out of
 * the stream), a sparse copy of the guest RAM file (`ram`, in the format of
 * the kvm engine's `memory` file), and `qemu.json` describing both with sizes
 * and digests. This module knows the files, not QEMU: hv/qemu/persist.ts
 * drives the migration and calls {@link writeQemuEntry} and
 * {@link readQemuEntry}.
 *
 * @module
 */

import { runtimeModuleUrl } from "../hv/module_url.ts";
import { Sha256 } from "../hv/sha256.ts";
import { join } from "node:path";
import { close, libc, MAP, mmap, munmap, O, open, PROT, viewAt } from "../kvm_ffi/libc.ts";
import { sha256Hex, type StateValue, toJsonData } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import { type MemoryInfo, PAGE_SIZE } from "./format.ts";
import { digestMemoryFile, writeMemoryFile } from "./memory_file.ts";
import { fsyncPath, publishDir, type PublishResult } from "./store.ts";

/** `qemu.json` magic string. */
export const QEMU_ENTRY_MAGIC = "skiff-qemu-snapshot";
/** Format version of qemu entries; readers reject every other. */
export const QEMU_ENTRY_VERSION = 1;
/** The manifest's file name; its presence marks a qemu-engine entry. */
export const QEMU_MANIFEST = "qemu.json";
/** QEMU's migration stream (device state). */
export const QEMU_STATE_FILE = "state";
/** The sparse copy of the guest RAM file. */
export const QEMU_RAM_FILE = "ram";

/** A decoded, validated `qemu.json`. */
export interface QemuEntryManifest {
  version: number;
  /** Always `qemu`. */
  engine: "qemu";
  /** ISO 8601 creation time. */
  createdAt: string;
  /** Version of the QEMU that wrote the stream (`7.2.22`); a restore needs the same. */
  qemuVersion: string;
  /**
   * The machine as a migration target must rebuild it: QEMU's arguments with
   * host paths replaced (hv/qemu/cmdline.ts `machineDescription`).
   */
  machine: string[];
  /** The `ram` file: one region at offset 0 covering the whole RAM backend file. */
  ram: MemoryInfo;
  /** The `state` file's exact size and SHA-256. */
  state: { size: number; digest: string };
  /** What the entry was built from, for `skiff snapshot list`. */
  source: Record<string, StateValue>;
}

/** A qemu entry whose manifest, file sizes and state digest were checked. */
export interface QemuEntry {
  readonly dir: string;
  readonly manifest: QemuEntryManifest;
  /** Path of the `ram` file (never written after publication). */
  readonly ramPath: string;
  /** Path of the `state` file. */
  readonly statePath: string;
}

/** True when `dir` holds a qemu-engine entry (it has a `qemu.json`). */
export function isQemuEntry(dir: string): boolean {
  try {
    return Deno.statSync(join(dir, QEMU_MANIFEST)).isFile;
  } catch {
    return false;
  }
}

/** `sha256:<hex>` of a file's bytes. */
function fileDigest(path: string): string {
  return `sha256:${new Sha256().update(Deno.readFileSync(path)).hex()}`;
}

function bodyChecksum(body: unknown): string {
  return `sha256:${sha256Hex(JSON.stringify(body))}`;
}

/** Encodes a manifest to `qemu.json` text with its checksum (same rule as `state.json`). */
export function encodeQemuManifest(m: QemuEntryManifest): string {
  const body = {
    magic: QEMU_ENTRY_MAGIC,
    version: m.version,
    engine: m.engine,
    createdAt: m.createdAt,
    qemuVersion: m.qemuVersion,
    machine: m.machine,
    ram: toJsonData(m.ram, "$.ram"),
    state: m.state,
    source: toJsonData(m.source, "$.source"),
  };
  return JSON.stringify({ ...body, checksum: bodyChecksum(body) }, null, 1) + "\n";
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates `qemu.json` text; throws {@link SnapshotError} naming the problem. */
export function decodeQemuManifest(text: string, dir: string): QemuEntryManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError(
      "corrupt",
      dir,
      `${QEMU_MANIFEST} does not parse: ${(e as Error).message}`,
    );
  }
  if (!isObject(doc)) throw new SnapshotError("corrupt", dir, `${QEMU_MANIFEST} is not an object`);
  if (doc.magic !== QEMU_ENTRY_MAGIC) {
    throw new SnapshotError(
      "magic",
      dir,
      `bad magic ${JSON.stringify(doc.magic)} in ${QEMU_MANIFEST}`,
    );
  }
  if (doc.version !== QEMU_ENTRY_VERSION) {
    throw new SnapshotError(
      "version",
      dir,
      `qemu entry version ${JSON.stringify(doc.version)}, this skiff reads ${QEMU_ENTRY_VERSION}`,
    );
  }
  const { checksum, ...body } = doc;
  const want = bodyChecksum(body);
  if (checksum !== want) {
    throw new SnapshotError(
      "corrupt",
      dir,
      `${QEMU_MANIFEST} checksum mismatch (${String(checksum)} ≠ ${want})`,
    );
  }
  const bad = (what: string): never => {
    throw new SnapshotError("corrupt", dir, `${QEMU_MANIFEST}: bad ${what}`);
  };
  if (doc.engine !== "qemu") bad("engine");
  if (typeof doc.createdAt !== "string") bad("createdAt");
  if (typeof doc.qemuVersion !== "string") bad("qemuVersion");
  if (!Array.isArray(doc.machine) || !doc.machine.every((a) => typeof a === "string")) {
    bad("machine");
  }
  const ram = doc.ram;
  if (
    !isObject(ram) || !isCount(ram.fileSize) || ram.fileSize % PAGE_SIZE !== 0 ||
    !isCount(ram.dataBytes) || typeof ram.digest !== "string" || !Array.isArray(ram.regions) ||
    ram.regions.length !== 1
  ) bad("ram");
  const region = (ram as { regions: unknown[] }).regions[0];
  if (
    !isObject(region) || region.guestAddr !== 0 || region.fileOffset !== 0 ||
    region.size !== (ram as { fileSize: number }).fileSize
  ) bad("ram region");
  const state = doc.state;
  if (!isObject(state) || !isCount(state.size) || typeof state.digest !== "string") bad("state");
  if (!isObject(doc.source)) bad("source");
  return {
    version: QEMU_ENTRY_VERSION,
    engine: "qemu",
    createdAt: doc.createdAt as string,
    qemuVersion: doc.qemuVersion as string,
    machine: doc.machine as string[],
    ram: ram as unknown as MemoryInfo,
    state: state as { size: number; digest: string },
    source: doc.source as Record<string, StateValue>,
  };
}

/** Size of a file in bytes, or -1 when it does not exist. */
function sizeOf(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return -1;
    throw e;
  }
}

/** Options of {@link readQemuEntry}. */
export interface ReadQemuEntryOptions {
  /** Also recompute the RAM digest (reads every data page: ~0.3 s for 100 MiB here). */
  verifyRam?: boolean;
}

/**
 * Opens a qemu entry and checks it: manifest magic, version and checksum,
 * the exact sizes of `ram` and `state`, and the state digest (a few hundred
 * KiB). The RAM digest only with `verifyRam`. Throws {@link SnapshotError}
 * naming what is wrong.
 */
export function readQemuEntry(dir: string, o: ReadQemuEntryOptions = {}): QemuEntry {
  let text: string;
  try {
    text = Deno.readTextFileSync(join(dir, QEMU_MANIFEST));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new SnapshotError("missing", dir, `${QEMU_MANIFEST} not found`);
    }
    throw new SnapshotError(
      "corrupt",
      dir,
      `cannot read ${QEMU_MANIFEST}: ${(e as Error).message}`,
    );
  }
  const manifest = decodeQemuManifest(text, dir);
  const ramPath = join(dir, QEMU_RAM_FILE);
  const statePath = join(dir, QEMU_STATE_FILE);
  const ramSize = sizeOf(ramPath);
  if (ramSize < 0) throw new SnapshotError("missing", dir, `${QEMU_RAM_FILE} not found`);
  if (ramSize !== manifest.ram.fileSize) {
    throw new SnapshotError(
      "truncated",
      dir,
      `${QEMU_RAM_FILE} is ${ramSize} bytes, ${QEMU_MANIFEST} says ${manifest.ram.fileSize}`,
    );
  }
  const stateSize = sizeOf(statePath);
  if (stateSize < 0) throw new SnapshotError("missing", dir, `${QEMU_STATE_FILE} not found`);
  if (stateSize !== manifest.state.size) {
    throw new SnapshotError(
      "truncated",
      dir,
      `${QEMU_STATE_FILE} is ${stateSize} bytes, ${QEMU_MANIFEST} says ${manifest.state.size}`,
    );
  }
  const stateDigest = fileDigest(statePath);
  if (stateDigest !== manifest.state.digest) {
    throw new SnapshotError(
      "corrupt",
      dir,
      `${QEMU_STATE_FILE} digest ${stateDigest} ≠ ${manifest.state.digest}`,
    );
  }
  if (o.verifyRam) {
    const got = digestMemoryFile(ramPath, manifest.ram);
    if (got !== manifest.ram.digest) {
      throw new SnapshotError(
        "memory-digest",
        dir,
        `${QEMU_RAM_FILE} digest ${got} ≠ ${manifest.ram.digest}`,
      );
    }
  }
  return { dir, manifest, ramPath, statePath };
}

/** What {@link writeQemuEntry} publishes. */
export interface QemuEntryContents {
  /** The migration stream QEMU wrote (copied into the entry; the caller removes it). */
  statePath: string;
  /**
   * The guest RAM file (a tmpfs file nobody writes while this runs: the
   * paused guest's, or a staging copy of it).
   */
  ramPath: string;
  /** QEMU's version (`major.minor.micro`). */
  qemuVersion: string;
  /** The machine description (hv/qemu/cmdline.ts `machineDescription`). */
  machine: string[];
  /** What the entry was built from. */
  source: Record<string, StateValue>;
}

/**
 * Writes a qemu entry at `dir` atomically (temp directory, fsync, rename;
 * `"exists"` when another writer published it first): `ram` written sparse
 * with zero pages left as holes and digested, `state` copied and digested,
 * then `qemu.json`.
 */
export function writeQemuEntry(dir: string, c: QemuEntryContents): Promise<PublishResult> {
  return publishDir(dir, (tmp) => {
    const ram = writeRamCopy(c.ramPath, join(tmp, QEMU_RAM_FILE));
    const statePath = join(tmp, QEMU_STATE_FILE);
    Deno.copyFileSync(c.statePath, statePath);
    fsyncPath(statePath);
    const manifestPath = join(tmp, QEMU_MANIFEST);
    Deno.writeTextFileSync(
      manifestPath,
      encodeQemuManifest({
        version: QEMU_ENTRY_VERSION,
        engine: "qemu",
        createdAt: new Date().toISOString(),
        qemuVersion: c.qemuVersion,
        machine: c.machine,
        ram,
        state: { size: Deno.statSync(statePath).size, digest: fileDigest(statePath) },
        source: c.source,
      }),
      { createNew: true, mode: 0o600 },
    );
    fsyncPath(manifestPath);
  });
}

/** lseek(2) whence. */
const SEEK_END = 2;

/** Maps the RAM file read-only and writes it with writeMemoryFile (zero pages dropped, digest). */
function writeRamCopy(src: string, dst: string): MemoryInfo {
  const fd = open(src, O.RDONLY);
  try {
    const size = Number(libc.lseek(fd, 0n, SEEK_END));
    if (size <= 0 || size % PAGE_SIZE !== 0) {
      throw new SnapshotError("io", src, `RAM file is ${size} bytes, not a positive page multiple`);
    }
    const ptr = mmap(size, PROT.READ, MAP.SHARED | MAP.NORESERVE, fd, 0);
    try {
      return writeMemoryFile(dst, {
        regions: [{ guestAddr: 0, size, bytes: viewAt(ptr, size), fd, fdOffset: 0 }],
      });
    } finally {
      munmap(ptr, size);
    }
  } finally {
    close(fd);
  }
}

/**
 * {@link writeQemuEntry} on a Worker, so the main thread keeps serving the
 * running guest while the RAM is written to disk. Same result and errors
 * (a {@link SnapshotError}, problem `io` unless the writer said otherwise).
 */
export function writeQemuEntryInWorker(
  dir: string,
  contents: QemuEntryContents,
): Promise<PublishResult> {
  const worker = new Worker(runtimeModuleUrl("snapshot/qemu_entry_worker.ts"), {
    type: "module",
  });
  return new Promise<PublishResult>((resolve, reject) => {
    worker.onmessage = (ev) => {
      const m = ev.data as
        | { ok: true; result: PublishResult }
        | { ok: false; problem: SnapshotError["problem"]; path: string; message: string };
      if (m.ok) resolve(m.result);
      else {
        // The worker's message already starts with "snapshot <path>: ".
        const detail = m.message.replace(/^snapshot .*?: /, "");
        reject(new SnapshotError(m.problem, m.path, detail));
      }
    };
    worker.onerror = (ev) => {
      ev.preventDefault();
      reject(new SnapshotError("io", dir, `entry writer failed: ${ev.message}`));
    };
    worker.postMessage({ dir, contents });
  }).finally(() => worker.terminate());
}
