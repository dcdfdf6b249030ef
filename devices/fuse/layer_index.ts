/**
 * The on-disk form of one unpacked image layer, as the {@link LayeredFs}
 * backend reads it and the image store (image/unpack.ts) writes it:
 *
 * ```
 * LAYER/index.json   every entry of the layer's tar, in tar order, cleaned
 * LAYER/root/…       the regular files' contents (and their directories) at their paths
 * ```
 *
 * Only directories and regular files exist on the host, created with
 * ordinary modes (0755/0644, no setuid, owned by the invoking user): what the
 * guest sees — type, mode with setuid/setgid/sticky bits, owner, times,
 * symlink targets, device numbers, hard links, xattrs, whiteouts and opaque
 * directories — comes from `index.json` alone. So unpacking never needs root,
 * never creates a device or a symlink on the host, and nothing on the host can
 * redirect a write or a read.
 *
 * `index.json` is `{"version":1,"entries":[ROW,…]}`, each ROW an array:
 *
 * | # | field | |
 * |--:|---|---|
 * | 0 | path | relative to the layer root, `/`-separated, no `.`/`..`/empty components; `""` is the root |
 * | 1 | kind | `f` file, `d` dir, `D` dir implied by a deeper entry, `l` symlink, `h` hard link, `c`/`b` char/block device, `p` fifo, `w` whiteout, `o` opaque dir marker |
 * | 2 | mode | permission bits incl. setuid/setgid/sticky (07777) |
 * | 3,4 | uid, gid | |
 * | 5 | size | bytes (regular files) |
 * | 6,7 | mtime | seconds, nanoseconds |
 * | 8 | link | symlink target (as stored) or hard-link target path (cleaned); `""` otherwise |
 * | 9 | rdev | device number in the kernel's `new_encode_dev` form, 0 otherwise |
 * | 10 | xattrs | optional `{NAME: base64}` |
 *
 * Paths, names and link targets are "binary strings" (one char per byte), so
 * names that are not UTF-8 round-trip exactly. A whiteout's path is the path
 * it hides (`a/b` for the tar entry `a/.wh.b`); an opaque marker's path is
 * the directory (`a` for `a/.wh..wh..opq`).
 *
 * @module
 */

/** The index file inside a layer directory. */
export const LAYER_INDEX = "index.json";
/** The directory with the regular files' contents inside a layer directory. */
export const LAYER_ROOT = "root";

/** What an index entry is. */
export type LayerKind =
  | "file"
  | "dir"
  | "implicit-dir"
  | "symlink"
  | "hardlink"
  | "char"
  | "block"
  | "fifo"
  | "whiteout"
  | "opaque";

/** One entry of a layer. */
export interface LayerEntry {
  /** Cleaned relative path (binary string); "" is the layer's root directory. */
  path: string;
  kind: LayerKind;
  /** Permission bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  mtimeNsec: number;
  /** Symlink target, or the hard link's target path; "" otherwise. */
  link: string;
  /** `new_encode_dev(major, minor)` for devices. */
  rdev: number;
  /** Extended attributes: name → value bytes as base64. */
  xattrs?: Record<string, string>;
}

const CODE: Record<LayerKind, string> = {
  file: "f",
  dir: "d",
  "implicit-dir": "D",
  symlink: "l",
  hardlink: "h",
  char: "c",
  block: "b",
  fifo: "p",
  whiteout: "w",
  opaque: "o",
};
const KIND = new Map(Object.entries(CODE).map(([k, c]) => [c, k as LayerKind]));

/** A layer index that cannot be read. */
export class LayerIndexError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LayerIndexError";
  }
}

/** `new_encode_dev` (include/linux/kdev_t.h), the form FUSE attributes carry. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** The JSON bytes of an index. */
export function encodeLayerIndex(entries: readonly LayerEntry[]): Uint8Array {
  const rows = entries.map((e) => {
    const row: unknown[] = [
      e.path,
      CODE[e.kind],
      e.mode,
      e.uid,
      e.gid,
      e.size,
      e.mtime,
      e.mtimeNsec,
      e.link,
      e.rdev,
    ];
    if (e.xattrs && Object.keys(e.xattrs).length) row.push(e.xattrs);
    return row;
  });
  // One row per line keeps the file readable with grep and less.
  const body = rows.map((r) => JSON.stringify(r)).join(",\n");
  return new TextEncoder().encode(`{"version":1,"entries":[\n${body}\n]}\n`);
}

function isUint(v: unknown, max = 0xffffffff): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && v <= max;
}

/** Parses and checks an index; `what` names it in errors. */
export function decodeLayerIndex(bytes: Uint8Array, what: string): LayerEntry[] {
  let doc: { version?: unknown; entries?: unknown };
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new LayerIndexError(`${what}: not valid JSON (${(e as Error).message})`);
  }
  if (doc?.version !== 1 || !Array.isArray(doc.entries)) {
    throw new LayerIndexError(`${what}: not a version 1 layer index`);
  }
  const out: LayerEntry[] = [];
  for (let i = 0; i < doc.entries.length; i++) {
    const r = doc.entries[i];
    const bad = (why: string) => new LayerIndexError(`${what}: entry ${i}: ${why}`);
    if (!Array.isArray(r) || r.length < 10 || r.length > 11) throw bad("not a row of 10–11 fields");
    const [path, code, mode, uid, gid, size, mtime, nsec, link, rdev, xattrs] = r;
    const kind = KIND.get(code);
    if (typeof path !== "string" || !validPath(path)) throw bad(`bad path ${JSON.stringify(path)}`);
    if (!kind) throw bad(`unknown kind ${JSON.stringify(code)}`);
    if (!isUint(mode, 0o7777) || !isUint(uid) || !isUint(gid)) throw bad("bad mode or owner");
    if (!isUint(size, Number.MAX_SAFE_INTEGER) || !isUint(nsec, 999_999_999)) throw bad("bad size");
    if (typeof mtime !== "number" || !Number.isSafeInteger(mtime)) throw bad("bad mtime");
    if (typeof link !== "string" || link.length > 4095 || link.includes("\0")) {
      throw bad("bad link");
    }
    if (kind === "hardlink" && !validPath(link)) throw bad("bad hard link target");
    if (!isUint(rdev)) throw bad("bad rdev");
    if (xattrs !== undefined) {
      if (typeof xattrs !== "object" || xattrs === null || Array.isArray(xattrs)) {
        throw bad("bad xattrs");
      }
      for (const v of Object.values(xattrs)) if (typeof v !== "string") throw bad("bad xattrs");
    }
    out.push({
      path,
      kind,
      mode,
      uid,
      gid,
      size,
      mtime,
      mtimeNsec: nsec,
      link,
      rdev,
      ...(xattrs ? { xattrs } : {}),
    });
  }
  return out;
}

/** Whether `p` is a cleaned relative path: components not empty, `.`, `..`, nor with NUL. */
export function validPath(p: string): boolean {
  if (p === "") return true;
  if (p.includes("\0")) return false;
  for (const c of p.split("/")) {
    if (c === "" || c === "." || c === ".." || c.length > 255) return false;
  }
  return true;
}

/** Reads `LAYER/index.json` of a layer directory. */
export function readLayerIndex(layerDir: string): LayerEntry[] {
  const path = `${layerDir}/${LAYER_INDEX}`;
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch (e) {
    throw new LayerIndexError(`cannot read layer index ${path}: ${(e as Error).message}`);
  }
  return decodeLayerIndex(bytes, path);
}
