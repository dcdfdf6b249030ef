/**
 * The snapshot format (see FORMAT.md): a directory holding `state.json` and
 * `memory`. This module defines the in-memory {@link SnapshotState}, encodes
 * it to the `state.json` text and decodes and validates that text.
 *
 * @module
 */

import { fromJsonData, sha256Hex, type StateValue, toJsonData } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import { webSha256Hex } from "../hv/sha256.ts";

/** `state.json` magic string. */
export const SNAPSHOT_MAGIC = "skiff-snapshot";
/**
 * Current format version; readers reject every other version. 2: the
 * checksum is over `JSON.stringify` of the body (native, ~0.05 ms) instead of
 * canonical JSON built in JS (~2 ms on a fresh process's first restore).
 */
export const FORMAT_VERSION = 2;
/** Name of the state file inside a snapshot directory. */
export const STATE_FILE = "state.json";
/** Name of the memory file inside a snapshot directory. */
export const MEMORY_FILE = "memory";
/** Granularity of zero-page elision and of region file offsets. */
export const PAGE_SIZE = 4096;

/** Raw KVM structs of one part of the machine, by name (e.g. `regs`, `ioapic`). */
export type RawState = Record<string, Uint8Array>;

/** One guest memory region and where its bytes live in `memory`. */
export interface MemoryLayoutRegion {
  /** Guest-physical start address. */
  guestAddr: number;
  /** Size in bytes (a multiple of {@link PAGE_SIZE}). */
  size: number;
  /** Offset of the region's first byte in `memory` (a multiple of {@link PAGE_SIZE}). */
  fileOffset: number;
}

/** The `memory` section of `state.json`. */
export interface MemoryInfo {
  /** Exact size of the `memory` file in bytes (truncation check). */
  fileSize: number;
  /** Regions in guest-address order. */
  regions: MemoryLayoutRegion[];
  /** Bytes of non-zero pages written (the rest of the file is holes). */
  dataBytes: number;
  /** SHA-256 over the non-zero page runs (see FORMAT.md), checked by a full verify only. */
  digest: string;
}

/** Everything a snapshot holds besides the memory bytes. */
export interface SnapshotState {
  /** VM-wide KVM state: irqchip (PIC master/slave, IOAPIC), PIT, clock. */
  vm: RawState;
  /** Per-vCPU KVM state, index = vCPU id. */
  vcpus: RawState[];
  /** Each device's `save()` result by device id (opaque to the snapshot layer). */
  devices: Record<string, StateValue>;
  /** What the snapshot was built from (kernel, initramfs, command line…), shown by `skiff snapshot list`. */
  source: Record<string, StateValue>;
}

/** A decoded, validated `state.json`. */
export interface SnapshotManifest extends SnapshotState {
  /** Format version (always {@link FORMAT_VERSION} once validated). */
  version: number;
  /** ISO 8601 creation time. */
  createdAt: string;
  /** Memory file description. */
  memory: MemoryInfo;
}

/** Encodes a manifest to the `state.json` text, with its checksum. */
export function encodeManifest(m: SnapshotManifest): string {
  const body = {
    magic: SNAPSHOT_MAGIC,
    version: m.version,
    createdAt: m.createdAt,
    memory: toJsonData(m.memory, "$.memory"),
    vm: toJsonData(m.vm, "$.vm"),
    vcpus: toJsonData(m.vcpus, "$.vcpus"),
    devices: toJsonData(m.devices, "$.devices"),
    source: toJsonData(m.source, "$.source"),
  };
  const checksum = bodyChecksum(body);
  return JSON.stringify({ ...body, checksum }, null, 1) + "\n";
}

/**
 * Checksum of the `state.json` body (every key but `checksum`, in file
 * order): SHA-256 of its compact `JSON.stringify` text. A parse/stringify
 * round trip gives the same text as at write time (key order is kept,
 * numbers and strings print canonically), so whitespace does not matter but
 * key order does.
 */
function bodyChecksum(body: unknown): string {
  return `sha256:${sha256Hex(JSON.stringify(body))}`;
}

/**
 * {@link bodyChecksum} of a parsed manifest through WebCrypto: native, and
 * off this thread, where the first call of the TypeScript SHA-256 in a
 * process runs cold code (about 5 ms for a 20 KB body, measured here). Pass
 * the result to {@link finishManifest}.
 */
export async function manifestChecksum(parsed: ParsedManifest): Promise<string> {
  const { checksum: _, ...body } = parsed.doc;
  return `sha256:${await webSha256Hex(JSON.stringify(body))}`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parses and validates `state.json` text: magic, version, checksum, and the
 * shape of every section. Throws {@link SnapshotError} naming the problem.
 */
export function decodeManifest(text: string, path: string): SnapshotManifest {
  return finishManifest(parseManifest(text, path), path);
}

/**
 * `state.json` parsed, with its magic, version and `memory` section checked
 * (layout and file size), the checksum and every other section not yet: the
 * first half of {@link decodeManifest}, enough to map the memory file while
 * {@link finishManifest} verifies the rest.
 */
export interface ParsedManifest {
  /** The parsed document (not yet checksummed: use nothing but `memory` from it). */
  readonly doc: Record<string, unknown>;
  /** The checked `memory` section. */
  readonly memory: MemoryInfo;
}

/** First half of {@link decodeManifest}: parse, magic, version, the `memory` section. */
export function parseManifest(text: string, path: string): ParsedManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError("corrupt", path, `state.json does not parse: ${(e as Error).message}`);
  }
  if (!isObject(doc)) throw new SnapshotError("corrupt", path, "state.json is not an object");
  if (doc.magic !== SNAPSHOT_MAGIC) {
    throw new SnapshotError("magic", path, `bad magic ${JSON.stringify(doc.magic)}`);
  }
  if (doc.version !== FORMAT_VERSION) {
    throw new SnapshotError(
      "version",
      path,
      `format version ${JSON.stringify(doc.version)}, this skiff reads ${FORMAT_VERSION}`,
    );
  }
  const bad = (what: string): never => {
    throw new SnapshotError("corrupt", path, `state.json: bad ${what}`);
  };
  const memory = doc.memory;
  if (!isObject(memory)) return bad("memory");
  if (
    !isCount(memory.fileSize) || !isCount(memory.dataBytes) || typeof memory.digest !== "string"
  ) {
    bad("memory sizes");
  }
  if (!Array.isArray(memory.regions) || memory.regions.length === 0) bad("memory regions");
  for (const r of memory.regions as unknown[]) {
    if (
      !isObject(r) || !isCount(r.guestAddr) || !isCount(r.size) || !isCount(r.fileOffset) ||
      r.size % PAGE_SIZE !== 0 || r.fileOffset % PAGE_SIZE !== 0 ||
      r.fileOffset + r.size > (memory.fileSize as number)
    ) bad(`memory region ${JSON.stringify(r)}`);
  }
  return { doc, memory: memory as unknown as MemoryInfo };
}

/** Manifests this process has checksummed (see {@link manifestsVerified}). */
let verifiedCount = 0;

/**
 * How many manifests this process has verified so far: the first runs cold
 * code (node:crypto's first hash, the decoder; ~0.8 ms), later ones take ~0.1
 * ms. A restore uses it to decide whether there is anything to overlap.
 */
export function manifestsVerified(): number {
  return verifiedCount;
}

/**
 * Second half of {@link decodeManifest}: the checksum, then every other
 * section, decoded. `want` is the body's checksum when the caller has it
 * already ({@link manifestChecksum}).
 */
export function finishManifest(
  parsed: ParsedManifest,
  path: string,
  want?: string,
): SnapshotManifest {
  verifiedCount++;
  const { doc } = parsed;
  const { checksum, ...body } = doc;
  want ??= bodyChecksum(body);
  if (checksum !== want) {
    throw new SnapshotError("corrupt", path, `checksum mismatch (${String(checksum)} ≠ ${want})`);
  }
  const bad = (what: string): never => {
    throw new SnapshotError("corrupt", path, `state.json: bad ${what}`);
  };
  if (typeof doc.createdAt !== "string") bad("createdAt");
  if (!isObject(doc.vm)) bad("vm");
  if (!Array.isArray(doc.vcpus) || doc.vcpus.length === 0) bad("vcpus");
  if (!isObject(doc.devices)) bad("devices");
  if (!isObject(doc.source)) bad("source");
  const vm = fromJsonData(doc.vm);
  const vcpus = fromJsonData(doc.vcpus) as unknown[];
  if (!isRaw(vm)) bad("vm state");
  vcpus.forEach((v, i) => isRaw(v) || bad(`vcpu ${i} state`));
  return {
    version: FORMAT_VERSION,
    createdAt: doc.createdAt as string,
    memory: parsed.memory,
    vm: vm as RawState,
    vcpus: vcpus as RawState[],
    devices: fromJsonData(doc.devices) as Record<string, StateValue>,
    source: fromJsonData(doc.source) as Record<string, StateValue>,
  };
}

function isRaw(v: unknown): v is RawState {
  return isObject(v) && Object.values(v).every((x) => x instanceof Uint8Array);
}
