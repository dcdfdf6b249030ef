/**
 * A cpio "newc" archive writer (the format the kernel unpacks as an
 * initramfs: `Documentation/driver-api/early-userspace/buffer-format.rst`):
 * per entry a 110-byte ASCII header (`070701` and 13 eight-digit hex fields),
 * the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes;
 * the archive ends with the entry `TRAILER!!!`. Entries get fixed inode
 * numbers, owner root and mtime 0, so the same input gives the same bytes.
 *
 * @module
 */

/** File type bits of `st_mode` (`include/uapi/linux/stat.h`). */
export const S_IF = { DIR: 0o040000, REG: 0o100000, LNK: 0o120000, CHR: 0o020000 } as const;

/** One archive entry. */
export type CpioEntry =
  | { kind: "dir"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array; mode?: number }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; major: number; minor: number; mode?: number };

const MAGIC = "070701";
const enc = new TextEncoder();

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new RangeError(`cpio field out of range: ${n}`);
  }
  return n.toString(16).padStart(8, "0");
}

/** Path as stored: relative, no leading "/" or "./", no empty or ".." parts. */
export function cpioPath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0 || parts.includes("..")) {
    throw new RangeError(`bad archive path '${path}'`);
  }
  return parts.join("/");
}

/** Builds a newc archive (uncompressed) from `entries`, in order. */
export function writeCpio(entries: readonly CpioEntry[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    chunks.push(b);
    size += b.length;
    const pad = (4 - (size % 4)) % 4;
    if (pad) {
      chunks.push(new Uint8Array(pad));
      size += pad;
    }
  };
  const header = (
    ino: number,
    mode: number,
    nlink: number,
    fileSize: number,
    rdev: [number, number],
    name: string,
  ) => {
    const nameBytes = enc.encode(name + "\0");
    const fields = [
      ino,
      mode,
      0, // uid
      0, // gid
      nlink,
      0, // mtime
      fileSize,
      0, // devmajor
      0, // devminor
      rdev[0],
      rdev[1],
      nameBytes.length,
      0, // check (newc: unused)
    ];
    const h = enc.encode(MAGIC + fields.map(hex8).join(""));
    const b = new Uint8Array(h.length + nameBytes.length);
    b.set(h);
    b.set(nameBytes, h.length);
    push(b);
  };
  const seen = new Set<string>();
  entries.forEach((e, i) => {
    const name = cpioPath(e.path);
    if (seen.has(name)) throw new RangeError(`duplicate archive path '${name}'`);
    seen.add(name);
    const ino = i + 1;
    switch (e.kind) {
      case "dir":
        header(ino, S_IF.DIR | (e.mode ?? 0o755), 2, 0, [0, 0], name);
        return;
      case "file":
        header(ino, S_IF.REG | (e.mode ?? 0o644), 1, e.data.length, [0, 0], name);
        if (e.data.length) push(e.data);
        return;
      case "symlink": {
        const t = enc.encode(e.target);
        header(ino, S_IF.LNK | 0o777, 1, t.length, [0, 0], name);
        push(t);
        return;
      }
      case "chardev":
        header(ino, S_IF.CHR | (e.mode ?? 0o600), 1, 0, [e.major, e.minor], name);
        return;
    }
  });
  header(0, 0, 1, 0, [0, 0], "TRAILER!!!");
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** gzip through the runtime's `CompressionStream`. */
export async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Adds a "dir" entry for every missing parent directory of the entries'
 * paths, placed before the first entry below it.
 */
export function withParents(entries: readonly CpioEntry[]): CpioEntry[] {
  const have = new Set(entries.filter((e) => e.kind === "dir").map((e) => cpioPath(e.path)));
  const out: CpioEntry[] = [];
  for (const e of entries) {
    const parts = cpioPath(e.path).split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!have.has(d)) {
        have.add(d);
        out.push({ kind: "dir", path: d });
      }
    }
    out.push(e);
  }
  return out;
}
