/**
 * Checked reading of saved device state. A snapshot's device state comes
 * back from a file, so every device's persist code reads it through these
 * checks and gets typed values — or a {@link StateError} naming the bad
 * field (`$.queues[2].size: 3 is not a power of two`) — never a half-read
 * object. The engine turns a StateError into a `SnapshotError` naming the
 * device.
 *
 * @module
 */

/** A saved state that does not have the expected shape; `path` names the field. */
export class StateError extends Error {
  /** Where in the state: `$` is the root, e.g. `$.ports[1].pending`. */
  readonly path: string;
  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = "StateError";
    this.path = path;
  }
}

function show(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v);
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v === null) return "null";
  if (typeof v === "object") return "an object";
  return String(v);
}

/** A plain object (not null, not an array). */
export function object(v: unknown, path: string): Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    throw new StateError(path, `expected an object, got ${show(v)}`);
  }
  return v as Record<string, unknown>;
}

/** An integer in `[min, max]`. */
export function int(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new StateError(path, `expected an integer in ${min}..${max}, got ${show(v)}`);
  }
  return v;
}

/** An unsigned 32-bit integer. */
export function u32(v: unknown, path: string): number {
  return int(v, path, 0, 0xffff_ffff);
}

/** An unsigned 16-bit integer. */
export function u16(v: unknown, path: string): number {
  return int(v, path, 0, 0xffff);
}

/** An unsigned 8-bit integer. */
export function u8(v: unknown, path: string): number {
  return int(v, path, 0, 0xff);
}

/** A boolean. */
export function bool(v: unknown, path: string): boolean {
  if (typeof v !== "boolean") throw new StateError(path, `expected true or false, got ${show(v)}`);
  return v;
}

/** A string of at most `maxLength` characters. */
export function string(v: unknown, path: string, maxLength = 4096): string {
  if (typeof v !== "string" || v.length > maxLength) {
    throw new StateError(path, `expected a string of at most ${maxLength}, got ${show(v)}`);
  }
  return v;
}

/** An array, of exactly `length` elements when given, else of at most `maxLength`. */
export function array(
  v: unknown,
  path: string,
  opts: { length?: number; maxLength?: number } = {},
): unknown[] {
  if (!Array.isArray(v)) throw new StateError(path, `expected an array, got ${show(v)}`);
  if (opts.length !== undefined && v.length !== opts.length) {
    throw new StateError(path, `expected ${opts.length} elements, got ${v.length}`);
  }
  if (opts.maxLength !== undefined && v.length > opts.maxLength) {
    throw new StateError(path, `expected at most ${opts.maxLength} elements, got ${v.length}`);
  }
  return v;
}

/** Bytes: a `Uint8Array`, or an array of byte values (older states), of at most `maxLength`. */
export function bytes(v: unknown, path: string, maxLength: number): Uint8Array {
  if (v instanceof Uint8Array) {
    if (v.length > maxLength) {
      throw new StateError(path, `expected at most ${maxLength} bytes, got ${v.length}`);
    }
    return v.slice();
  }
  const a = array(v, path, { maxLength });
  return Uint8Array.from(a, (b, i) => u8(b, `${path}[${i}]`));
}

/** A 64-bit unsigned value written as a decimal string (bigint does not survive plain JSON). */
export function u64String(v: unknown, path: string): bigint {
  if (typeof v !== "string" || !/^(0|[1-9][0-9]{0,19})$/.test(v) || BigInt(v) >= 1n << 64n) {
    throw new StateError(path, `expected a decimal 64-bit value, got ${show(v)}`);
  }
  return BigInt(v);
}

/** A field of `o` checked by `check`, with the path extended by the key. */
export function field<T>(
  o: Record<string, unknown>,
  key: string,
  path: string,
  check: (v: unknown, path: string) => T,
): T {
  return check(o[key], `${path}.${key}`);
}
