/**
 * Where an image comes from: an OCI layout directory, a `docker save`
 * archive, or a registry. A source resolves its reference to one image
 * manifest (following an image index to `linux/amd64`) and serves blobs; the
 * puller ({@link pullImage}) verifies every digest and size.
 *
 * @module
 */

import type { Descriptor, ImageManifest } from "./manifest.ts";

/** An image's manifest as a source resolved it. */
export interface ResolvedManifest {
  /** Digest of `bytes` (verified by the source against what named it). */
  digest: string;
  bytes: Uint8Array;
  manifest: ImageManifest;
}

/** One place images come from. */
export interface ImageSource {
  /** The canonical reference, for records and messages. */
  readonly name: string;
  /** The image manifest for the guest platform. */
  manifest(): Promise<ResolvedManifest>;
  /**
   * A blob's bytes as they are stored (not yet verified: the caller checks
   * the digest and size while reading).
   */
  blob(d: Descriptor): Promise<ReadableStream<Uint8Array>>;
  /** Releases files and connections. */
  close(): void;
}

/** Reads a whole stream, failing past `max` bytes. */
export async function readAll(
  stream: ReadableStream<Uint8Array>,
  max: number,
  what: string,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    // Leaving the loop by a throw cancels the stream.
    if (n > max) throw new Error(`${what}: larger than ${max} bytes`);
    parts.push(c);
  }
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
