import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { decodeLz4Block, decodeLz4Legacy, Lz4Error } from "./lz4.ts";
import { lz4LegacyLiterals } from "./testdata.ts";

const enc = new TextEncoder();

Deno.test("lz4 block: literals then an overlapping match repeat the last bytes", () => {
  // token 0x24: 2 literals "ab", match length 4+4=8 at offset 2 → "ab" + "abababab"
  const src = new Uint8Array([0x24, 0x61, 0x62, 0x02, 0x00, 0x10, 0x7a]);
  const dst = new Uint8Array(11);
  const n = decodeLz4Block(src, 0, src.length, dst, 0);
  strictEqual(n, 11);
  strictEqual(new TextDecoder().decode(dst), "abababababz");
});

Deno.test("lz4 block: extended literal and match lengths", () => {
  const lit = new Uint8Array(300).map((_, i) => i & 0xff);
  // 300 literals: 15 + 255 + 30; then match 4+15+255+6=280 at offset 256, then 1 literal end
  const src = new Uint8Array([0xff, 255, 30, ...lit, 0x00, 0x01, 255, 6, 0x10, 0x41]);
  const dst = new Uint8Array(300 + 280 + 1);
  strictEqual(decodeLz4Block(src, 0, src.length, dst, 0), dst.length);
  deepStrictEqual(dst.subarray(0, 300), lit);
  deepStrictEqual(dst.subarray(300, 556), lit.subarray(44, 300));
  strictEqual(dst[580], 0x41);
});

Deno.test("lz4 block: bad offsets and truncation are errors, not crashes", () => {
  throws(
    () => decodeLz4Block(new Uint8Array([0x10, 0x61, 0x05, 0x00]), 0, 4, new Uint8Array(64), 0),
    Lz4Error,
  );
  throws(
    () => decodeLz4Block(new Uint8Array([0x10, 0x61, 0x00, 0x00]), 0, 4, new Uint8Array(64), 0),
    Lz4Error,
  );
  throws(() => decodeLz4Block(new Uint8Array([0xf0]), 0, 1, new Uint8Array(64), 0), Lz4Error);
  throws(() => decodeLz4Block(new Uint8Array([0x50, 1, 2]), 0, 3, new Uint8Array(64), 0), Lz4Error);
  // output overflow
  throws(
    () => decodeLz4Block(new Uint8Array([0x30, 1, 2, 3]), 0, 4, new Uint8Array(2), 0),
    Lz4Error,
  );
});

Deno.test("lz4 legacy: multi-block frame, trailing size, expected size mismatch", () => {
  const data = enc.encode("hello, legacy frame ".repeat(50));
  const frame = lz4LegacyLiterals(data, 100);
  deepStrictEqual(decodeLz4Legacy(frame), data);
  deepStrictEqual(decodeLz4Legacy(frame, data.length), data);
  const withSize = new Uint8Array(frame.length + 4);
  withSize.set(frame);
  new DataView(withSize.buffer).setUint32(frame.length, data.length, true);
  deepStrictEqual(decodeLz4Legacy(withSize), data);
  throws(() => decodeLz4Legacy(frame, data.length + 1), /expected/);
  throws(() => decodeLz4Legacy(enc.encode("not lz4")), /magic/);
  throws(() => decodeLz4Legacy(frame.subarray(0, frame.length - 10)), Lz4Error);
});

hostTest("lz4 legacy: matches the lz4 CLI on compressible data (reference decoder)", [
  "lz4",
], async () => {
  const data = new Uint8Array(3 << 20);
  let x = 1;
  for (let i = 0; i < data.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = (i % 4096 < 2048) ? (x >>> 24) & 0x0f : i & 0xff; // mixed entropy
  }
  const child = new Deno.Command("lz4", {
    args: ["-l", "-c", "-9"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(data);
  await w.close();
  const out = await child.output();
  strictEqual(out.code, 0);
  deepStrictEqual(decodeLz4Legacy(out.stdout, data.length), data);
});
