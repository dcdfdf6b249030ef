/**
 * Content digests (OCI image-spec `descriptor.md` §Digests): `ALGORITHM:ENCODED`,
 * with `sha256` (64 lowercase hex digits) and `sha512` (128) — the registered
 * algorithms. Hashing streams through `node:crypto` `createHash` (loaded on first use), which takes
 * data incrementally (WebCrypto's `digest` needs the whole input at once).
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { nativeHash } from "../hv/sha256.ts";

/** A digest skiff can verify. */
export interface Digest {
  algorithm: "sha256" | "sha512";
  /** Lowercase hex. */
  hex: string;
}

/** A digest or size that does not match the content. */
export class DigestMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DigestMismatchError";
  }
}

const HEX_LEN = { sha256: 64, sha512: 128 } as const;
/** image-spec descriptor.md: `algorithm ":" encoded`. */
const GRAMMAR = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;

/** Parses and checks a digest string; throws naming the problem. */
export function parseDigest(text: string): Digest {
  const m = GRAMMAR.exec(text);
  if (!m) throw new Error(`invalid digest '${clip(text)}' (expected ALGORITHM:HEX)`);
  const algorithm = m[1];
  if (algorithm !== "sha256" && algorithm !== "sha512") {
    throw new Error(`unsupported digest algorithm '${algorithm}' in '${clip(text)}'`);
  }
  const hex = m[2];
  if (hex.length !== HEX_LEN[algorithm] || !/^[0-9a-f]+$/.test(hex)) {
    throw new Error(
      `invalid ${algorithm} digest '${clip(text)}' (expected ${
        HEX_LEN[algorithm]
      } lowercase hex digits)`,
    );
  }
  return { algorithm, hex };
}

/** Whether `text` is a digest skiff can verify. */
export function isDigest(text: string): boolean {
  try {
    parseDigest(text);
    return true;
  } catch {
    return false;
  }
}

/** The sha256 digest of `bytes` as `sha256:HEX`. */
export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${nativeHash("sha256").update(bytes).digest("hex")}`;
}

/** Hashes bytes as they pass; {@link digest} gives `ALGORITHM:HEX`. */
export class Hasher {
  readonly algorithm: Digest["algorithm"];
  #hash: Hash;
  #bytes = 0;
  constructor(algorithm: Digest["algorithm"] = "sha256") {
    this.algorithm = algorithm;
    this.#hash = nativeHash(algorithm);
  }
  /** Bytes hashed so far. */
  get bytes(): number {
    return this.#bytes;
  }
  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
    this.#bytes += chunk.length;
  }
  /** The final digest (once). */
  digest(): string {
    return `${this.algorithm}:${this.#hash.digest("hex")}`;
  }
}

/**
 * A pass-through stream that checks its bytes against `expected` (a digest)
 * and, when given, `size`: more bytes than `size` fail at once, and at the end
 * a short count or another digest fails the stream with a
 * {@link DigestMismatchError} naming `what`.
 */
export function verifyStream(
  expected: string,
  size: number | null,
  what: string,
): TransformStream<Uint8Array, Uint8Array> {
  const { algorithm } = parseDigest(expected);
  const h = new Hasher(algorithm);
  return new TransformStream({
    transform(chunk, ctl) {
      if (size !== null && h.bytes + chunk.length > size) {
        throw new DigestMismatchError(`${what}: more than the ${size} bytes its descriptor gives`);
      }
      h.update(chunk);
      ctl.enqueue(chunk);
    },
    flush() {
      if (size !== null && h.bytes !== size) {
        throw new DigestMismatchError(
          `${what}: ${h.bytes} bytes where its descriptor gives ${size}`,
        );
      }
      const got = h.digest();
      if (got !== expected) {
        throw new DigestMismatchError(
          `${what}: digest mismatch (got ${got}, expected ${expected})`,
        );
      }
    },
  });
}

/** Checks whole `bytes` against a digest (and size); throws {@link DigestMismatchError}. */
export function verifyBytes(
  bytes: Uint8Array,
  expected: string,
  size: number | null,
  what: string,
) {
  const { algorithm } = parseDigest(expected);
  if (size !== null && bytes.length !== size) {
    throw new DigestMismatchError(
      `${what}: ${bytes.length} bytes where its descriptor gives ${size}`,
    );
  }
  const got = `${algorithm}:${nativeHash(algorithm).update(bytes).digest("hex")}`;
  if (got !== expected) {
    throw new DigestMismatchError(`${what}: digest mismatch (got ${got}, expected ${expected})`);
  }
}

/** A short form for messages: `sha256:0123456789ab`. */
export function shortDigest(digest: string): string {
  const i = digest.indexOf(":");
  return i < 0 ? digest.slice(0, 12) : digest.slice(0, i + 13);
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
