/**
 * JSON encoding of snapshot state: a canonical form (sorted keys, no
 * whitespace) for checksums and cache keys, and a tagged encoding so that raw
 * KVM structs (`Uint8Array`) and 64-bit values (`bigint`) survive JSON.
 *
 * Tags: a `Uint8Array` becomes `{"$b64": "<base64>"}`, a `bigint` becomes
 * `{"$bigint": "<decimal>"}`. Plain objects that happen to have exactly one
 * key named `$b64` or `$bigint` would be misread, so device state must not use
 * those key names.
 *
 * @module
 */

import { sha256Hex as sha256 } from "../hv/sha256.ts";

/** A value the tagged codec can carry: JSON plus `Uint8Array` and `bigint`. */
export type StateValue =
  | null
  | boolean
  | number
  | string
  | bigint
  | Uint8Array
  | StateValue[]
  | { [key: string]: StateValue };

/** Converts `value` to plain JSON data, tagging `Uint8Array` and `bigint`. Rejects what JSON cannot carry. */
export function toJsonData(value: unknown, path = "$"): unknown {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`${path}: non-finite number ${value}`);
    return value;
  }
  if (typeof value === "bigint") return { $bigint: value.toString() };
  if (value instanceof Uint8Array) return { $b64: value.toBase64() };
  if (Array.isArray(value)) return value.map((v, i) => toJsonData(v, `${path}[${i}]`));
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (v === undefined) continue;
      out[k] = toJsonData(v, `${path}.${k}`);
    }
    return out;
  }
  throw new TypeError(
    `${path}: cannot encode ${Object.prototype.toString.call(value)} in a snapshot`,
  );
}

/** Inverse of {@link toJsonData}: turns tags back into `Uint8Array` and `bigint`. */
export function fromJsonData(value: unknown): StateValue {
  if (value === null || typeof value !== "object") return value as StateValue;
  if (Array.isArray(value)) return value.map(fromJsonData);
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj);
  if (keys.length === 1 && keys[0] === "$b64" && typeof obj.$b64 === "string") {
    return Uint8Array.fromBase64(obj.$b64);
  }
  if (keys.length === 1 && keys[0] === "$bigint" && typeof obj.$bigint === "string") {
    return BigInt(obj.$bigint);
  }
  const out: Record<string, StateValue> = {};
  for (const k of keys) out[k] = fromJsonData(obj[k]);
  return out;
}

/** JSON with object keys sorted at every level and no whitespace: one text per value. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    const s = JSON.stringify(value);
    if (s === undefined) throw new TypeError(`cannot encode ${typeof value} as canonical JSON`);
    return s;
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
}

/**
 * SHA-256 of a string (UTF-8) or bytes, as lowercase hex — skiff's own
 * (hv/sha256.ts), so a cache hit does not load node:crypto.
 */
export function sha256Hex(data: string | Uint8Array): string {
  return sha256(data);
}
