/**
 * Unpacks one layer tar into a layer directory (`devices/fuse/layer_index.ts`
 * describes the result): regular files and directories on the host, every
 * entry's metadata in `index.json`. Runs as the invoking user and never
 * needs root.
 *
 * Hostile archives are contained (each refusal is one line naming the entry):
 * - paths: leading `/` is dropped (as tar and Docker do); a `..` component, a
 *   NUL, an over-long component or a non-directory root is refused;
 * - nothing is written through a link: the host tree holds only directories
 *   and regular files this function created, every file is created with
 *   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and `O_CREAT | O_EXCL |
 *   O_NOFOLLOW`, and an entry whose parent is a symlink, file, device… of the
 *   same layer is refused (the classic "symlink then write through it" attack);
 * - symlinks are never created on the host: the target is kept as data (the
 *   guest resolves it inside its own root; the FUSE server never follows it);
 * - hard links point at a path of the image (cleaned as above, resolved in the
 *   merged image by the FUSE backend), never at a host file; links to a
 *   directory of the same layer are refused;
 * - device nodes and FIFOs are metadata only; setuid/setgid/sticky bits and
 *   owners are kept as metadata, host files are 0644/0755 of the invoking user;
 * - duplicate entries: a directory may be repeated (the last metadata wins);
 *   any other repeated path is refused;
 * - sizes: a cap on each entry, on the layer's total data, on the entry count
 *   and on extended headers; a truncated tar fails.
 *
 * @module
 */

import { O } from "../kvm_ffi/libc.ts";
import { Errno, errnoName } from "../kvm_ffi/errno.ts";
import { AT, cpath, openat2, r, RESOLVE_SAFE, sys } from "../devices/fuse/sys.ts";
import {
  encodeDev,
  encodeLayerIndex,
  LAYER_INDEX,
  LAYER_ROOT,
  type LayerEntry,
  type LayerKind,
} from "../devices/fuse/layer_index.ts";
import { binaryToBytes, showName, type TarEntry, TarError, TarReader } from "./tar.ts";

/** Caps of one layer. */
export interface UnpackLimits {
  /** Total bytes of regular-file data (default 64 GiB). */
  layerMax?: number;
  /** Bytes of one entry (default 16 GiB). */
  entryMax?: number;
  /** Number of entries (default 2 000 000). */
  entriesMax?: number;
}

/** What an unpack produced. */
export interface UnpackResult {
  entries: number;
  /** Regular-file bytes written. */
  bytes: number;
}

/** A layer that was refused; the message names the layer and the entry. */
export class UnpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnpackError";
  }
}

/** xattrs the guest may see: file capabilities and user attributes (not trusted.*, not SELinux labels). */
function keepXattr(name: string): boolean {
  return name === "security.capability" || name.startsWith("user.");
}
const XATTR_TOTAL_MAX = 64 << 10;

/** Host modes: nothing special, readable by the invoking user and group. */
const HOST_FILE_MODE = 0o644;
const HOST_DIR_MODE = 0o755;

interface Known {
  kind: LayerKind;
  /** Its row in the index (-1: the implicit root). */
  row: number;
}

/**
 * Unpacks the tar `stream` into the empty directory `dir` (creating
 * `dir/root/` and `dir/index.json`). `what` names the layer in errors. On
 * failure `dir` holds a partial tree: the caller removes it.
 */
export async function unpackLayer(
  stream: ReadableStream<Uint8Array>,
  dir: string,
  what: string,
  limits: UnpackLimits = {},
): Promise<UnpackResult> {
  const layerMax = limits.layerMax ?? 64 * 2 ** 30;
  const entriesMax = limits.entriesMax ?? 2_000_000;
  const tar = new TarReader(stream, { entryMax: limits.entryMax ?? 16 * 2 ** 30 });
  await Deno.mkdir(`${dir}/${LAYER_ROOT}`, { mode: HOST_DIR_MODE });
  const rootFd = r(
    sys.openat(AT.FDCWD, cpath(`${dir}/${LAYER_ROOT}`), O.PATH | O.DIRECTORY | O.CLOEXEC, 0),
  );
  if (rootFd < 0) {
    throw new UnpackError(`${what}: cannot open ${dir}/${LAYER_ROOT}: ${errnoName(-rootFd)}`);
  }
  const rows: LayerEntry[] = [];
  const known = new Map<string, Known>([["", { kind: "implicit-dir", row: -1 }]]);
  let bytes = 0;
  const refuse = (e: TarEntry, why: string): never => {
    throw new UnpackError(`${what}: entry "${showName(e.name)}": ${why}`);
  };
  try {
    for (let e = await tar.next(); e; e = await tar.next()) {
      if (tar.count > entriesMax) refuse(e, `more than ${entriesMax} entries in one layer`);
      const path = cleanPath(e.name, (why) => refuse(e!, why));
      const meta = (kind: LayerKind, extra: Partial<LayerEntry> = {}): LayerEntry => ({
        path,
        kind,
        mode: e!.mode & 0o7777,
        uid: e!.uid,
        gid: e!.gid,
        size: 0,
        mtime: e!.mtime,
        mtimeNsec: e!.mtimeNsec,
        link: "",
        rdev: 0,
        ...xattrsOf(e!, refuse),
        ...extra,
      });
      const base = path.slice(path.lastIndexOf("/") + 1);
      const parent = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";

      // OCI image-spec layer.md, "Whiteouts": .wh.NAME hides NAME of lower layers,
      // .wh..wh..opq makes the directory opaque; other .wh..wh.* names are AUFS
      // bookkeeping and are skipped.
      if (base.startsWith(".wh.")) {
        ensureParents(path, known, rows, rootFd, (why) => refuse(e!, why));
        if (base === ".wh..wh..opq") {
          rows.push({ ...meta("opaque"), path: parent });
        } else if (!base.startsWith(".wh..wh.")) {
          const hidden = base.slice(4);
          if (hidden === "" || hidden === "." || hidden === "..") refuse(e, "whiteout of nothing");
          rows.push({ ...meta("whiteout"), path: parent ? `${parent}/${hidden}` : hidden });
        }
        continue;
      }
      if (path === "") {
        if (e.type !== "dir") refuse(e, `the layer's root is a ${e.type}, not a directory`);
        const root = known.get("")!;
        if (root.row >= 0) rows[root.row] = meta("dir");
        else {
          root.row = rows.length;
          rows.push(meta("dir"));
        }
        root.kind = "dir";
        continue;
      }
      ensureParents(path, known, rows, rootFd, (why) => refuse(e!, why));
      const have = known.get(path);
      if (e.type === "dir") {
        if (have) {
          if (have.kind !== "dir" && have.kind !== "implicit-dir") {
            refuse(e, `duplicate entry (already a ${have.kind})`);
          }
          rows[have.row] = meta("dir");
          have.kind = "dir";
        } else {
          mkdirBeneath(rootFd, path, (why) => refuse(e!, why));
          known.set(path, { kind: "dir", row: rows.length });
          rows.push(meta("dir"));
        }
        continue;
      }
      if (have) refuse(e, `duplicate entry (already a ${have.kind})`);
      switch (e.type) {
        case "file": {
          if (bytes + e.size > layerMax) {
            refuse(e, `the layer's data exceeds the ${layerMax}-byte limit per layer`);
          }
          await writeFile(tar, rootFd, path, e.size, (why) => refuse(e!, why));
          bytes += e.size;
          known.set(path, { kind: "file", row: rows.length });
          rows.push(meta("file", { size: e.size }));
          break;
        }
        case "symlink":
          if (e.linkname === "") refuse(e, "symlink with an empty target");
          if (e.linkname.includes("\0")) refuse(e, "symlink target contains NUL");
          known.set(path, { kind: "symlink", row: rows.length });
          rows.push(meta("symlink", { link: e.linkname }));
          break;
        case "hardlink": {
          const target = cleanPath(e.linkname, (why) => refuse(e!, `hard link target: ${why}`));
          if (target === "" || target === path) refuse(e, "hard link to itself or to the root");
          const t = known.get(target);
          if (t && (t.kind === "dir" || t.kind === "implicit-dir")) {
            refuse(e, `hard link to a directory ("${showName(e.linkname)}")`);
          }
          known.set(path, { kind: "hardlink", row: rows.length });
          rows.push(meta("hardlink", { link: target }));
          break;
        }
        case "char":
        case "block":
          // Never created on the host: the guest sees the node through the metadata.
          known.set(path, { kind: e.type, row: rows.length });
          rows.push(meta(e.type, { rdev: encodeDev(e.devmajor, e.devminor) }));
          break;
        case "fifo":
          known.set(path, { kind: "fifo", row: rows.length });
          rows.push(meta("fifo"));
          break;
      }
    }
  } catch (e) {
    await tar.cancel(e);
    if (e instanceof TarError) throw new UnpackError(`${what}: ${e.message}`);
    throw e;
  } finally {
    sys.close(rootFd);
  }
  await Deno.writeFile(`${dir}/${LAYER_INDEX}`, encodeLayerIndex(rows), { mode: HOST_FILE_MODE });
  return { entries: rows.length, bytes };
}

/**
 * The cleaned form of a tar path: leading `/` dropped, `.` and empty
 * components dropped, `..`, NUL and components over 255 bytes refused.
 */
export function cleanPath(name: string, refuse: (why: string) => never): string {
  if (name.includes("\0")) refuse("the path contains NUL");
  const parts: string[] = [];
  for (const c of name.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") refuse("the path contains '..' (it would leave the layer)");
    if (c.length > 255) refuse("a path component is longer than 255 bytes");
    parts.push(c);
  }
  return parts.join("/");
}

function xattrsOf(e: TarEntry, refuse: (e: TarEntry, why: string) => never): Partial<LayerEntry> {
  if (e.xattrs.size === 0) return {};
  const out: Record<string, string> = {};
  let total = 0;
  for (const [name, value] of e.xattrs) {
    if (!keepXattr(name)) continue;
    total += name.length + value.length;
    if (total > XATTR_TOTAL_MAX) refuse(e, `more than ${XATTR_TOTAL_MAX} bytes of xattrs`);
    out[name] = btoa(String.fromCharCode(...value));
  }
  return Object.keys(out).length ? { xattrs: out } : {};
}

/** Makes every missing parent of `path` an implicit directory; refuses a non-directory parent. */
function ensureParents(
  path: string,
  known: Map<string, Known>,
  rows: LayerEntry[],
  rootFd: number,
  refuse: (why: string) => never,
): void {
  let at = path.indexOf("/");
  while (at >= 0) {
    const p = path.slice(0, at);
    const k = known.get(p);
    if (!k) {
      mkdirBeneath(rootFd, p, refuse);
      known.set(p, { kind: "implicit-dir", row: rows.length });
      rows.push({
        path: p,
        kind: "implicit-dir",
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        mtimeNsec: 0,
        link: "",
        rdev: 0,
      });
    } else if (k.kind !== "dir" && k.kind !== "implicit-dir") {
      refuse(
        `its parent "${showName(p)}" is a ${k.kind} of this layer, not a directory` +
          (k.kind === "symlink" ? " (no writing through symlinks)" : ""),
      );
    }
    at = path.indexOf("/", at + 1);
  }
}

/** mkdir of `path` beneath the layer root, resolving the parent without following any link. */
function mkdirBeneath(rootFd: number, path: string, refuse: (why: string) => never): void {
  const slash = path.lastIndexOf("/");
  let dirFd = rootFd;
  if (slash >= 0) {
    dirFd = openat2(
      rootFd,
      cpath(binaryToBytes(path.slice(0, slash))),
      O.PATH | O.DIRECTORY | O.NOFOLLOW | O.CLOEXEC,
      0,
      RESOLVE_SAFE,
    );
    if (dirFd < 0) refuse(`cannot open its parent directory: ${errnoName(-dirFd)}`);
  }
  try {
    const rc = r(sys.mkdirat(dirFd, cpath(binaryToBytes(path.slice(slash + 1))), HOST_DIR_MODE));
    if (rc < 0) refuse(`mkdir failed: ${errnoName(-rc)}`);
  } finally {
    if (dirFd !== rootFd) sys.close(dirFd);
  }
}

/** Creates `path` (exclusively, beneath the root, no links followed) and writes the entry's data. */
async function writeFile(
  tar: TarReader,
  rootFd: number,
  path: string,
  size: number,
  refuse: (why: string) => never,
): Promise<void> {
  const fd = openat2(
    rootFd,
    cpath(binaryToBytes(path)),
    O.WRONLY | O.CREAT | O.EXCL | O.NOFOLLOW | O.CLOEXEC,
    HOST_FILE_MODE,
    RESOLVE_SAFE,
  );
  if (fd < 0) {
    refuse(fd === -Errno.EEXIST ? "duplicate entry" : `cannot create the file: ${errnoName(-fd)}`);
  }
  let failed = 0;
  try {
    if (size > 0) {
      await tar.read((piece) => {
        if (failed) return;
        let done = 0;
        while (done < piece.length) {
          const n = r(
            sys.write(
              fd,
              piece.subarray(done) as Uint8Array<ArrayBuffer>,
              BigInt(piece.length - done),
            ),
          );
          if (n < 0) {
            if (n === -Errno.EINTR) continue;
            failed = -n;
            return;
          }
          done += n;
        }
      });
    }
    if (failed) refuse(`write failed: ${errnoName(failed)}`);
  } finally {
    sys.close(fd);
  }
}
