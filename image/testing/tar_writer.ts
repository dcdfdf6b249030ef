/**
 * A minimal tar writer for tests: ustar headers with any name, type, mode,
 * owner, link target and data, optional pax records — enough to build the
 * hostile archives the unpacker must refuse (`..`, absolute paths, links out
 * of the layer, devices, duplicates, truncation) byte for byte.
 *
 * @module
 */

/** One entry to write. */
export interface TestEntry {
  name: string;
  /** '0' file (default), '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo, or any byte. */
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  data?: Uint8Array | string;
  devmajor?: number;
  devminor?: number;
  /** pax records written in an `x` header before the entry. */
  pax?: Record<string, string>;
  /** Size field to write instead of the data length (lies for tests). */
  sizeField?: number;
}

const enc = new TextEncoder();

function field(h: Uint8Array, off: number, len: number, value: string | Uint8Array): void {
  const b = typeof value === "string" ? enc.encode(value) : value;
  if (b.length > len) throw new Error(`tar field at ${off} too long: ${b.length} > ${len}`);
  h.set(b, off);
}

function octalField(h: Uint8Array, off: number, len: number, n: number): void {
  field(h, off, len, n.toString(8).padStart(len - 1, "0") + "\0");
}

function header(e: TestEntry, size: number, typeflag: string, name = e.name): Uint8Array {
  const h = new Uint8Array(512);
  const nb = enc.encode(name);
  if (nb.length > 100) {
    // ustar prefix/name split at a '/'
    const cut = name.lastIndexOf("/", 155);
    field(h, 345, 155, name.slice(0, cut));
    field(h, 0, 100, name.slice(cut + 1));
  } else field(h, 0, 100, nb);
  octalField(h, 100, 8, e.mode ?? (typeflag === "5" ? 0o755 : 0o644));
  octalField(h, 108, 8, e.uid ?? 0);
  octalField(h, 116, 8, e.gid ?? 0);
  octalField(h, 124, 12, size);
  octalField(h, 136, 12, e.mtime ?? 1_700_000_000);
  field(h, 156, 1, typeflag);
  field(h, 157, 100, e.linkname ?? "");
  field(h, 257, 8, "ustar\x0000");
  octalField(h, 329, 8, e.devmajor ?? 0);
  octalField(h, 337, 8, e.devminor ?? 0);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  field(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

function padded(data: Uint8Array): Uint8Array[] {
  const rest = (512 - (data.length % 512)) % 512;
  return rest ? [data, new Uint8Array(rest)] : [data];
}

/** The tar bytes of `entries` (with the two end blocks unless `end` is false). */
export function makeTar(entries: TestEntry[], end = true): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    if (e.pax) {
      let body = "";
      for (const [k, v] of Object.entries(e.pax)) {
        const rec = ` ${k}=${v}\n`;
        let len = enc.encode(rec).length;
        len += String(len).length;
        if (String(len).length !== String(len - String(len).length).length) len++;
        body += `${len}${rec}`;
      }
      const data = enc.encode(body);
      parts.push(header({ name: "PaxHeader" }, data.length, "x", "PaxHeader"), ...padded(data));
    }
    const data = typeof e.data === "string" ? enc.encode(e.data) : e.data ?? new Uint8Array(0);
    const type = e.type ?? "0";
    const name = e.name.length > 255 ? "long-name-in-pax" : e.name;
    parts.push(header(e, e.sizeField ?? data.length, type, name));
    if (data.length) parts.push(...padded(data));
  }
  if (end) parts.push(new Uint8Array(1024));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** gzip of `bytes` (init/cpio.ts: the runtime's CompressionStream). */
export { gzip } from "../../init/cpio.ts";
