import { deepStrictEqual, notStrictEqual, strictEqual, throws } from "node:assert/strict";
import { canonicalJson, fromJsonData, sha256Hex, toJsonData } from "./codec.ts";

Deno.test("canonicalJson sorts keys at every level and drops undefined", () => {
  strictEqual(
    canonicalJson({ b: 1, a: { d: [1, { z: 0, y: null }], c: "x" }, u: undefined }),
    '{"a":{"c":"x","d":[1,{"y":null,"z":0}]},"b":1}',
  );
  strictEqual(canonicalJson({ x: 1, y: 2 }), canonicalJson({ y: 2, x: 1 }));
});

Deno.test("tagged codec round-trips bytes and bigints", () => {
  const value = {
    regs: new Uint8Array([0, 1, 2, 255]),
    nested: [{ id: 0xffff_ffff_ffff_fff0n, empty: new Uint8Array(0) }],
    plain: { n: 3.5, s: "é", t: true, z: null },
  };
  const back = fromJsonData(JSON.parse(JSON.stringify(toJsonData(value))));
  deepStrictEqual(back, value);
});

Deno.test("tagged codec rejects what JSON cannot carry, naming the path", () => {
  throws(() => toJsonData({ a: [1, NaN] }), /\$\.a\[1\]: non-finite/);
  throws(() => toJsonData({ m: new Map() }), /\$\.m: cannot encode \[object Map\]/);
});

Deno.test("sha256Hex matches the known digest of 'abc'", () => {
  strictEqual(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  notStrictEqual(sha256Hex(new Uint8Array([1])), sha256Hex(new Uint8Array([2])));
});
