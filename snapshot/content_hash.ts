/**
 * Content hashes of large inputs (kernel, initramfs) for the snapshot key,
 * memoised by file identity so a cache hit does not re-read an 8 MiB kernel
 * on every run.
 *
 * The memo (`<skiff cache>/content-hashes.json`) maps
 * `path|dev|ino|size|mtime|ctime` to the SHA-256; any change to the file
 * (rewrite, replace, touch) changes the identity and forces a re-hash.
 *
 * @module
 */

import { join } from "node:path";
import { writeFileAtomic } from "../hv/atomic_file.ts";
import { nativeHash } from "../hv/sha256.ts";
import { skiffCacheDir } from "./cache.ts";
import { fileIdentity } from "./file_identity.ts";

const MEMO_LIMIT = 256;

function identity(path: string, st: Deno.FileInfo): string {
  return `${path}|${fileIdentity(st)}`;
}

/** SHA-256 (hex) of a file's bytes, streamed. */
export async function fileSha256(path: string): Promise<string> {
  const h = nativeHash("sha256");
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(1 << 20);
  for (;;) {
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
  }
  return h.digest("hex");
}

/**
 * Memos read in this process, by memo path: a key is a file identity, so an
 * entry never goes stale; a miss re-reads the file (another process may have
 * hashed it since). Saves parsing the memo again for each of the ≈20 files a
 * snapshot key hashes (kernel, modules, QEMU).
 */
const loaded = new Map<string, Record<string, string>>();

async function readMemo(memoPath: string): Promise<Record<string, string>> {
  try {
    const parsed = JSON.parse(await Deno.readTextFile(memoPath));
    if (typeof parsed === "object" && parsed !== null) return parsed;
  } catch {
    // no memo yet, or unreadable: hash the file
  }
  return {};
}

function isHash(h: unknown): h is string {
  return typeof h === "string" && /^[0-9a-f]{64}$/.test(h);
}

/**
 * SHA-256 (hex) of the file at `path`, from the memo when the file's identity
 * is unchanged. `memoDir` defaults to skiff's cache directory; memo failures
 * (read-only cache, corrupt memo) only cost a re-hash.
 */
export async function contentHash(path: string, memoDir?: string): Promise<string> {
  const st = await Deno.stat(path);
  const id = identity(path, st);
  let memoPath: string | null = null;
  try {
    memoPath = join(memoDir ?? skiffCacheDir(), "content-hashes.json");
  } catch {
    // no cache directory: hash the file
  }
  const seen = memoPath ? loaded.get(memoPath)?.[id] : undefined;
  if (isHash(seen)) return seen;
  const memo = memoPath ? await readMemo(memoPath) : {};
  if (memoPath) loaded.set(memoPath, memo);
  const known = memo[id];
  if (isHash(known)) return known;
  const hash = await fileSha256(path);
  if (memoPath) {
    const keys = Object.keys(memo);
    for (const k of keys.slice(0, Math.max(0, keys.length - MEMO_LIMIT + 1))) delete memo[k];
    for (const k of Object.keys(memo)) if (k.startsWith(`${path}|`)) delete memo[k];
    memo[id] = hash;
    try {
      await writeFileAtomic(memoPath, JSON.stringify(memo));
    } catch {
      // a read-only cache only costs a re-hash next time
    }
  }
  return hash;
}
