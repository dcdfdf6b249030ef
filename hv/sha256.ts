/**
 * SHA-256 (FIPS 180-4 §6.2) in TypeScript, synchronous, for the small inputs
 * of a snapshot-cache hit: key parts, the init generator's source files, a
 * QEMU entry's state stream (a few hundred KiB). `node:crypto` computes the
 * same digest natively, but loading it costs 15–30 ms of every skiff process
 * here (measured: `await import("node:crypto")` after node:util, node:path
 * and node:url), more than this code takes for everything a hit hashes
 * (≈0.6 MB). Large inputs (RAM files, image layers, kernels) keep the native
 * hash through {@link nativeHash}, loaded on first use.
 *
 * @module
 */

import type { Hash } from "node:crypto";

/** FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
const K = new Int32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

/** §5.3.3: the initial hash value. */
const H0 = [
  0x6a09e667,
  0xbb67ae85,
  0x3c6ef372,
  0xa54ff53a,
  0x510e527f,
  0x9b05688c,
  0x1f83d9ab,
  0x5be0cd19,
];

const encoder = new TextEncoder();

/** An incremental SHA-256: {@link update} any number of times, then {@link digest} once. */
export class Sha256 {
  #h = new Int32Array(H0);
  #w = new Int32Array(64);
  /** The partial block. */
  #block = new Uint8Array(64);
  #used = 0;
  /** Bytes hashed so far (a double: exact up to 2^53). */
  #length = 0;
  #done = false;

  /** Adds `data` (a string is hashed as its UTF-8 bytes, as node:crypto's `update` does). */
  update(data: string | Uint8Array): this {
    if (this.#done) throw new Error("Sha256: update after digest");
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    this.#length += bytes.length;
    let i = 0;
    if (this.#used > 0) {
      const take = Math.min(64 - this.#used, bytes.length);
      this.#block.set(bytes.subarray(0, take), this.#used);
      this.#used += take;
      i = take;
      if (this.#used < 64) return this;
      this.#compress(this.#block, 0);
      this.#used = 0;
    }
    for (; i + 64 <= bytes.length; i += 64) this.#compress(bytes, i);
    if (i < bytes.length) {
      this.#block.set(bytes.subarray(i));
      this.#used = bytes.length - i;
    }
    return this;
  }

  /** The 32-byte digest (§5.1.1 padding: 0x80, zeros, the bit length as a 64-bit big-endian). */
  digest(): Uint8Array {
    if (this.#done) throw new Error("Sha256: digest twice");
    const bits = this.#length * 8;
    const pad = new Uint8Array(((this.#used + 8) >> 6) * 64 + 64 - this.#used);
    pad[0] = 0x80;
    const v = new DataView(pad.buffer);
    v.setUint32(pad.length - 8, Math.floor(bits / 0x1_0000_0000));
    v.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    this.#done = true;
    const out = new Uint8Array(32);
    const o = new DataView(out.buffer);
    for (let j = 0; j < 8; j++) o.setInt32(j * 4, this.#h[j]);
    return out;
  }

  /** The digest as 64 lowercase hex digits. */
  hex(): string {
    return this.digest().toHex();
  }

  /** §6.2.2: one 64-byte block of `m` at `at`. */
  #compress(m: Uint8Array, at: number): void {
    const w = this.#w, h = this.#h;
    for (let t = 0; t < 16; t++) {
      const p = at + t * 4;
      w[t] = (m[p] << 24) | (m[p + 1] << 16) | (m[p + 2] << 8) | m[p + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15], y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0;
    h[1] = (h[1] + b) | 0;
    h[2] = (h[2] + c) | 0;
    h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0;
    h[5] = (h[5] + f) | 0;
    h[6] = (h[6] + g) | 0;
    h[7] = (h[7] + hh) | 0;
  }
}

/** SHA-256 of `data` (a string as its UTF-8 bytes) as 64 lowercase hex digits. */
export function sha256Hex(data: string | Uint8Array): string {
  return new Sha256().update(data).hex();
}

/**
 * SHA-256 of `data` (a string as its UTF-8 bytes) as 64 lowercase hex digits,
 * through WebCrypto: native and off this thread, for callers that can await.
 * The first {@link sha256Hex} of a process runs cold code (≈5 ms for 20 KB
 * here); this takes ≈1 ms.
 */
export async function webSha256Hex(data: string | Uint8Array<ArrayBuffer>): Promise<string> {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)).toHex();
}

/**
 * node:crypto's `createHash(algorithm)`, with node:crypto loaded on the first
 * call (synchronously, through `process.getBuiltinModule`), so a process that
 * never hashes much never pays for loading it.
 */
export function nativeHash(algorithm: string): Hash {
  const crypto = process.getBuiltinModule("node:crypto") as typeof import("node:crypto");
  return crypto.createHash(algorithm);
}
