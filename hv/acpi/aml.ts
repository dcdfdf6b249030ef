/**
 * A small AML encoder (ACPI 6.5 §20, "ACPI Machine Language (AML)
 * Specification"): enough to build a DSDT that declares devices with names,
 * integers, strings, packages and resource templates.
 *
 * Each function returns the encoded bytes of one term; compose them by
 * passing terms into {@link scope}, {@link device} and {@link pkg}.
 *
 * @module
 */

/** AML opcodes used here (ACPI 6.5 §20.2.5 "Term Objects Encoding", §20.3 opcode table). */
export const AML = {
  ZERO_OP: 0x00,
  ONE_OP: 0x01,
  NAME_OP: 0x08,
  BYTE_PREFIX: 0x0a,
  WORD_PREFIX: 0x0b,
  DWORD_PREFIX: 0x0c,
  STRING_PREFIX: 0x0d,
  QWORD_PREFIX: 0x0e,
  SCOPE_OP: 0x10,
  BUFFER_OP: 0x11,
  PACKAGE_OP: 0x12,
  DUAL_NAME_PREFIX: 0x2e,
  MULTI_NAME_PREFIX: 0x2f,
  ROOT_CHAR: 0x5c,
  PARENT_PREFIX: 0x5e,
  EXT_OP_PREFIX: 0x5b,
  /** Second byte of DeviceOp (0x5B 0x82). */
  DEVICE_OP: 0x82,
  ONES_OP: 0xff,
} as const;

/** Large resource item tags (ACPI 6.5 §6.4.3) and the small End Tag (§6.4.2.9). */
export const RESOURCE = {
  /** 32-Bit Fixed Memory Range Descriptor (§6.4.3.4), item name 0x06. */
  MEMORY32_FIXED: 0x86,
  /** Extended Interrupt Descriptor (§6.4.3.6), item name 0x09. */
  EXTENDED_INTERRUPT: 0x89,
  /** End Tag (§6.4.2.9): small item 0x0F, length 1. */
  END_TAG: 0x79,
} as const;

/** Bad input to the encoder (a name or value AML cannot represent). */
export class AmlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AmlError";
  }
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * PkgLength (§20.2.4) for a package whose body is `bodyLength` bytes. The
 * encoded value counts the PkgLength bytes themselves. One byte holds up to
 * 63; otherwise bits 7:6 of the lead byte give the number of following bytes
 * (1–3), its bits 3:0 the low nibble, and each following byte 8 more bits.
 */
export function pkgLength(bodyLength: number): Uint8Array {
  if (!Number.isInteger(bodyLength) || bodyLength < 0) {
    throw new AmlError(`bad package body length ${bodyLength}`);
  }
  if (bodyLength + 1 <= 0x3f) return Uint8Array.of(bodyLength + 1);
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLength + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = new Uint8Array(1 + extra);
      out[0] = (extra << 6) | (total & 0x0f);
      let v = Math.floor(total / 16);
      for (let i = 1; i <= extra; i++) {
        out[i] = v & 0xff;
        v = Math.floor(v / 256);
      }
      return out;
    }
  }
  throw new AmlError(`package body of ${bodyLength} bytes exceeds PkgLength's 2^28 limit`);
}

/** One NameSeg (§20.2.2): 4 characters from [A-Z0-9_], first not a digit; shorter names pad with '_'. */
export function nameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) {
    throw new AmlError(`bad AML name segment ${JSON.stringify(seg)}`);
  }
  return new TextEncoder().encode(seg.padEnd(4, "_"));
}

/**
 * A NameString (§20.2.2): optional root (`\`) or parent (`^`) prefixes, then
 * one, two (DualNamePrefix) or more (MultiNamePrefix) dot-separated segments.
 */
export function nameString(name: string): Uint8Array {
  const prefix: number[] = [];
  let rest = name;
  if (rest.startsWith("\\")) {
    prefix.push(AML.ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith("^")) {
      prefix.push(AML.PARENT_PREFIX);
      rest = rest.slice(1);
    }
  }
  const segs = rest === "" ? [] : rest.split(".").map(nameSeg);
  let head: number[];
  if (segs.length === 0) head = [AML.ZERO_OP]; // NullName
  else if (segs.length === 1) head = [];
  else if (segs.length === 2) head = [AML.DUAL_NAME_PREFIX];
  else if (segs.length <= 255) head = [AML.MULTI_NAME_PREFIX, segs.length];
  else throw new AmlError(`name ${name} has too many segments`);
  return concat([Uint8Array.from([...prefix, ...head]), ...segs]);
}

/** An integer constant with the shortest encoding (§20.2.3 ComputationalData). */
export function integer(value: number | bigint): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new AmlError(`integer ${value} out of range`);
  if (v === 0n) return Uint8Array.of(AML.ZERO_OP);
  if (v === 1n) return Uint8Array.of(AML.ONE_OP);
  const n = Number(v);
  if (v <= 0xffn) return Uint8Array.of(AML.BYTE_PREFIX, n);
  if (v <= 0xffffn) return Uint8Array.of(AML.WORD_PREFIX, n & 0xff, n >> 8);
  const bytes = (len: number) => {
    const out = new Uint8Array(len);
    let x = v;
    for (let i = 0; i < len; i++) {
      out[i] = Number(x & 0xffn);
      x >>= 8n;
    }
    return out;
  };
  if (v <= 0xffff_ffffn) return concat([Uint8Array.of(AML.DWORD_PREFIX), bytes(4)]);
  return concat([Uint8Array.of(AML.QWORD_PREFIX), bytes(8)]);
}

/** A string constant (§20.2.3: StringPrefix, ASCII characters 0x01–0x7F, NUL). */
export function string(s: string): Uint8Array {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 1 || c > 0x7f) throw new AmlError(`string ${JSON.stringify(s)} is not plain ASCII`);
  }
  return concat([Uint8Array.of(AML.STRING_PREFIX), new TextEncoder().encode(s), Uint8Array.of(0)]);
}

/** `Name(name, value)` (§20.2.5.1 DefName := NameOp NameString DataRefObject). */
export function name(n: string, value: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(AML.NAME_OP), nameString(n), value]);
}

/** `Scope(name) { terms }` (§20.2.5.1 DefScope := ScopeOp PkgLength NameString TermList). */
export function scope(n: string, terms: readonly Uint8Array[]): Uint8Array {
  const body = concat([nameString(n), ...terms]);
  return concat([Uint8Array.of(AML.SCOPE_OP), pkgLength(body.length), body]);
}

/** `Device(name) { terms }` (§20.2.5.2 DefDevice := DeviceOp PkgLength NameString TermList). */
export function device(n: string, terms: readonly Uint8Array[]): Uint8Array {
  const body = concat([nameString(n), ...terms]);
  return concat([Uint8Array.of(AML.EXT_OP_PREFIX, AML.DEVICE_OP), pkgLength(body.length), body]);
}

/** `Package() { elements }` (§20.2.5.4 DefPackage := PackageOp PkgLength NumElements PackageElementList). */
export function pkg(elements: readonly Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new AmlError(`package of ${elements.length} elements`);
  const body = concat([Uint8Array.of(elements.length), ...elements]);
  return concat([Uint8Array.of(AML.PACKAGE_OP), pkgLength(body.length), body]);
}

/** `Buffer() { bytes }` (§20.2.5.4 DefBuffer := BufferOp PkgLength BufferSize ByteList). */
export function buffer(bytes: Uint8Array): Uint8Array {
  const body = concat([integer(bytes.length), bytes]);
  return concat([Uint8Array.of(AML.BUFFER_OP), pkgLength(body.length), body]);
}

/** `Memory32Fixed(ReadWrite|ReadOnly, base, length)` (§6.4.3.4, 12 bytes). */
export function memory32Fixed(base: number, length: number, readWrite = true): Uint8Array {
  for (const [what, v] of [["base", base], ["length", length]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
      throw new AmlError(`Memory32Fixed ${what} 0x${v.toString(16)} does not fit in 32 bits`);
    }
  }
  const out = new Uint8Array(12);
  const dv = new DataView(out.buffer);
  out[0] = RESOURCE.MEMORY32_FIXED;
  dv.setUint16(1, 9, true); // length of the data that follows
  out[3] = readWrite ? 1 : 0; // bit 0: write status (1 = read/write)
  dv.setUint32(4, base, true);
  dv.setUint32(8, length, true);
  return out;
}

/** Options of {@link extendedInterrupt} (the flag bits of §6.4.3.6, byte 3). */
export interface InterruptOptions {
  /** Bit 0: the device consumes the interrupt (ResourceConsumer). Default true. */
  consumer?: boolean;
  /** Bit 1: edge-triggered (else level). */
  edge: boolean;
  /** Bit 2: active-low (else active-high). */
  activeLow: boolean;
  /** Bit 3: shared (else exclusive). Default false. */
  shared?: boolean;
}

/** `Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) { gsi… }` (§6.4.3.6). */
export function extendedInterrupt(gsis: readonly number[], o: InterruptOptions): Uint8Array {
  if (gsis.length < 1 || gsis.length > 255) {
    throw new AmlError(`an interrupt descriptor holds 1–255 interrupts, not ${gsis.length}`);
  }
  const out = new Uint8Array(5 + 4 * gsis.length);
  const dv = new DataView(out.buffer);
  out[0] = RESOURCE.EXTENDED_INTERRUPT;
  dv.setUint16(1, 2 + 4 * gsis.length, true);
  out[3] = ((o.consumer ?? true) ? 1 : 0) | (o.edge ? 2 : 0) | (o.activeLow ? 4 : 0) |
    (o.shared ? 8 : 0);
  out[4] = gsis.length;
  gsis.forEach((g, i) => {
    if (!Number.isInteger(g) || g < 0 || g > 0xffff_ffff) throw new AmlError(`bad interrupt ${g}`);
    dv.setUint32(5 + 4 * i, g, true);
  });
  return out;
}

/**
 * `ResourceTemplate() { descriptors }`: a Buffer holding the descriptors and
 * an End Tag (§6.4.2.9) whose checksum byte is 0 ("the checksum is assumed
 * correct").
 */
export function resourceTemplate(descriptors: readonly Uint8Array[]): Uint8Array {
  return buffer(concat([...descriptors, Uint8Array.of(RESOURCE.END_TAG, 0)]));
}
