import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { nativeHash, Sha256, sha256Hex, webSha256Hex } from "./sha256.ts";

const native = (d: string | Uint8Array) => createHash("sha256").update(d).digest("hex");

/** Deterministic bytes (xorshift), so a failure reproduces. */
function bytes(n: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

Deno.test("sha256: FIPS 180-4 examples (abc, the two-block message) and the empty input", () => {
  assert.equal(
    sha256Hex("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assert.equal(
    sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  assert.equal(sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
});

Deno.test("sha256: equals node:crypto for every length 0-300 (each padding case) and 1 MiB+3", () => {
  for (let n = 0; n <= 300; n++) {
    const b = bytes(n, n + 1);
    assert.equal(sha256Hex(b), native(b), `length ${n}`);
  }
  const big = bytes((1 << 20) + 3, 7);
  assert.equal(sha256Hex(big), native(big));
});

Deno.test("sha256: strings hash as UTF-8, as node:crypto's update does", () => {
  for (const s of ["ü", "snapshot key — ✓", "\u{1F600}x", JSON.stringify({ a: "é" })]) {
    assert.equal(sha256Hex(s), native(s));
  }
});

Deno.test("sha256: chunked updates at uneven sizes equal one update", () => {
  const b = bytes(5000, 3);
  for (const step of [1, 7, 63, 64, 65, 1000]) {
    const h = new Sha256();
    for (let i = 0; i < b.length; i += step) h.update(b.subarray(i, i + step));
    assert.equal(h.hex(), native(b), `step ${step}`);
  }
});

Deno.test("sha256: a digest ends the hash (update or digest again throw)", () => {
  const h = new Sha256().update("x");
  h.digest();
  assert.throws(() => h.update("y"), /after digest/);
  assert.throws(() => h.digest(), /twice/);
});

Deno.test("sha256: nativeHash is node:crypto's hash", () => {
  assert.equal(nativeHash("sha256").update("abc").digest("hex"), native("abc"));
  assert.equal(
    nativeHash("sha512").update("abc").digest("hex"),
    createHash("sha512").update("abc").digest("hex"),
  );
});

Deno.test("webSha256Hex (WebCrypto) equals sha256Hex for strings and bytes", async () => {
  for (const n of [0, 1, 55, 56, 64, 1000]) {
    const b = bytes(n, n + 3);
    assert.equal(await webSha256Hex(b), sha256Hex(b), `length ${n}`);
  }
  assert.equal(await webSha256Hex("héllo\n"), sha256Hex("héllo\n"));
});
