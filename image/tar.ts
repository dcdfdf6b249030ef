/**
 * A streaming reader of tar archives (POSIX.1-2001 pax interchange format,
 * ustar, and the GNU long-name extensions), written for untrusted input.
 *
 * Formats: `pax` (`x` extended headers: path, linkpath, size, uid, gid, mtime
 * with fractions, `SCHILY.xattr.*`; `g` global headers are read and ignored),
 * ustar (`prefix` + `name`), GNU `L`/`K` long names and link names, and GNU
 * base-256 numbers. Sparse files (GNU `S`, pax `GNU.sparse.*`), multi-volume
 * (`M`) and dump-dir (`D`) entries are refused: container layers do not use
 * them and their semantics would bypass the size accounting.
 *
 * Limits: header checksums are verified; extended headers and long names are
 * capped ({@link TarLimits.metaMax}); names at 4095 bytes; an entry's data at
 * {@link TarLimits.entryMax}. A stream that ends inside a header or an
 * entry's data is truncated and fails naming the entry; a stream that ends at
 * a block boundary without the two zero blocks is accepted (as Go's
 * archive/tar does) — callers verify a digest of the whole stream anyway.
 * After the end-of-archive blocks the rest of the stream is drained, so a
 * digest computed over it covers every byte.
 *
 * Names are "binary strings": one UTF-16 code unit per byte (Latin-1), so any
 * Linux file name round-trips exactly and can key a Map.
 *
 * @module
 */

/** Entry types (POSIX `typeflag`), normalised. */
export type TarType = "file" | "hardlink" | "symlink" | "char" | "block" | "dir" | "fifo";

/** One archive entry as its headers describe it. */
export interface TarEntry {
  /** The path as stored (binary string; not yet cleaned). */
  name: string;
  type: TarType;
  /** Permission and special bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  /** Data bytes (0 for everything but regular files). */
  size: number;
  /** Modification time, seconds since the epoch (may be negative). */
  mtime: number;
  /** Nanoseconds of the modification time (from a pax `mtime` with a fraction). */
  mtimeNsec: number;
  /** Link target for symlinks and hard links (binary string). */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** `SCHILY.xattr.NAME` records (name as a UTF-8 string, raw value bytes). */
  xattrs: Map<string, Uint8Array>;
}

/** Limits of a {@link TarReader}. */
export interface TarLimits {
  /** Largest data of one entry, bytes (default 16 GiB). */
  entryMax?: number;
  /** Largest pax extended header or GNU long name, bytes (default 1 MiB). */
  metaMax?: number;
}

/** A malformed, truncated or refused archive. */
export class TarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TarError";
  }
}

const BLOCK = 512;
/** PATH_MAX less the NUL. */
const NAME_MAX_BYTES = 4095;

/** Shows a binary-string name in messages (UTF-8 where it decodes, escaped otherwise). */
export function showName(name: string): string {
  const s = new TextDecoder().decode(binaryToBytes(name));
  // JSON escapes quotes, backslashes and control characters: one printable line.
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 197)}...` : s).slice(1, -1);
}

/** Bytes → binary string (one char per byte). */
export function bytesToBinary(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 8192) {
    s += String.fromCharCode.apply(null, b.subarray(i, i + 8192) as unknown as number[]);
  }
  return s;
}

/** Binary string → bytes. */
export function binaryToBytes(s: string): Uint8Array {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}

/** Where a {@link TarReader} gets its bytes: a stream, or a file it can seek in. */
interface ByteSource {
  /** Bytes consumed so far (the offset in the archive). */
  readonly position: number;
  /**
   * The next 512-byte block (a view valid until the next call), or null at a
   * clean end. A partial block is an error.
   */
  block(what: () => string): Promise<Uint8Array | null>;
  /** Delivers the next `n` bytes to `sink` in pieces (views valid during the call). */
  run(n: number, sink: (piece: Uint8Array) => void, what: () => string): Promise<void>;
  /** Skips `n` bytes (they must exist). */
  skip(n: number, what: () => string): Promise<void>;
  /** Consumes everything left. */
  drain(): Promise<void>;
  cancel(reason?: unknown): Promise<void>;
}

/** The bytes a stream delivers. */
class StreamSource implements ByteSource {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array(0);
  #pos = 0;
  #eof = false;
  #block = new Uint8Array(BLOCK);
  position = 0;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  /** Makes bytes available; false at the end of the stream. */
  async #fill(): Promise<boolean> {
    while (this.#pos >= this.#chunk.length) {
      if (this.#eof) return false;
      const r = await this.#reader.read();
      if (r.done) {
        this.#eof = true;
        return false;
      }
      this.#chunk = r.value;
      this.#pos = 0;
    }
    return true;
  }

  async block(what: () => string): Promise<Uint8Array | null> {
    if (this.#pos + BLOCK <= this.#chunk.length) {
      const b = this.#chunk.subarray(this.#pos, this.#pos + BLOCK);
      this.#pos += BLOCK;
      this.position += BLOCK;
      return b;
    }
    let got = 0;
    while (got < BLOCK) {
      if (!(await this.#fill())) {
        if (got === 0) return null;
        throw new TarError(`truncated archive: the stream ends inside ${what()}`);
      }
      const n = Math.min(BLOCK - got, this.#chunk.length - this.#pos);
      this.#block.set(this.#chunk.subarray(this.#pos, this.#pos + n), got);
      this.#pos += n;
      got += n;
    }
    this.position += BLOCK;
    return this.#block;
  }

  async run(n: number, sink: (piece: Uint8Array) => void, what: () => string): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!(await this.#fill())) {
        throw new TarError(
          `truncated archive: the stream ends inside ${what()} (${left} bytes short)`,
        );
      }
      const take = Math.min(left, this.#chunk.length - this.#pos);
      sink(this.#chunk.subarray(this.#pos, this.#pos + take));
      this.#pos += take;
      this.position += take;
      left -= take;
    }
  }

  skip(n: number, what: () => string): Promise<void> {
    return this.run(n, () => {}, what);
  }

  async drain(): Promise<void> {
    this.#pos = this.#chunk.length;
    while (await this.#fill()) this.#pos = this.#chunk.length;
  }

  async cancel(reason?: unknown): Promise<void> {
    await this.#reader.cancel(reason).catch(() => {});
  }
}

/** A file read with seeks: skipping data costs nothing (for indexing archives). */
class FileSource implements ByteSource {
  #file: Deno.FsFile;
  #size: number;
  #block = new Uint8Array(BLOCK);
  position = 0;

  constructor(file: Deno.FsFile, size: number) {
    this.#file = file;
    this.#size = size;
  }

  #readFull(buf: Uint8Array, what: () => string): void {
    let got = 0;
    while (got < buf.length) {
      const n = this.#file.readSync(buf.subarray(got));
      if (n === null || n === 0) {
        throw new TarError(`truncated archive: the file ends inside ${what()}`);
      }
      got += n;
    }
    this.position += buf.length;
  }

  block(what: () => string): Promise<Uint8Array | null> {
    if (this.position >= this.#size) return Promise.resolve(null);
    this.#readFull(this.#block, what);
    return Promise.resolve(this.#block);
  }

  run(n: number, sink: (piece: Uint8Array) => void, what: () => string): Promise<void> {
    const buf = new Uint8Array(Math.min(n, 1 << 20));
    let left = n;
    while (left > 0) {
      const piece = buf.subarray(0, Math.min(left, buf.length));
      this.#readFull(piece, what);
      sink(piece);
      left -= piece.length;
    }
    return Promise.resolve();
  }

  skip(n: number, what: () => string): Promise<void> {
    if (this.position + n > this.#size) {
      return Promise.reject(new TarError(`truncated archive: the file ends inside ${what()}`));
    }
    this.position += n;
    this.#file.seekSync(this.position, Deno.SeekMode.Start);
    return Promise.resolve();
  }

  drain(): Promise<void> {
    this.position = this.#size;
    return Promise.resolve();
  }

  cancel(): Promise<void> {
    return Promise.resolve();
  }
}

/** Reads entries from a tar stream; see the module documentation. */
export class TarReader {
  #src: ByteSource;
  #entryMax: number;
  #metaMax: number;
  /** Data bytes (plus padding) of the current entry not yet read. */
  #pending = 0;
  #pendingPad = 0;
  #current: TarEntry | null = null;
  #ended = false;
  #count = 0;
  #dataOffset = 0;

  constructor(
    stream: ReadableStream<Uint8Array> | { file: Deno.FsFile; size: number },
    limits: TarLimits = {},
  ) {
    this.#src = stream instanceof ReadableStream
      ? new StreamSource(stream)
      : new FileSource(stream.file, stream.size);
    this.#entryMax = limits.entryMax ?? 16 * 2 ** 30;
    this.#metaMax = limits.metaMax ?? 1 << 20;
  }

  /** The next entry, or null at the end of the archive (the rest of the stream is drained). */
  async next(): Promise<TarEntry | null> {
    if (this.#ended) return null;
    await this.skip();
    let pax: Map<string, Uint8Array> | null = null;
    let longName: string | null = null;
    let longLink: string | null = null;
    const after = () =>
      this.#current ? `the header after ${showName(this.#current.name)}` : "the first header";
    for (;;) {
      const h = await this.#src.block(after);
      if (h === null) return this.#end(pax !== null || longName !== null || longLink !== null);
      if (isZero(h)) {
        // End of archive: a second zero block follows (or the stream ends).
        const h2 = await this.#src.block(() => "the end-of-archive blocks");
        if (h2 !== null && !isZero(h2)) {
          throw new TarError(
            `a zero block is followed by a header at ${after()} (corrupt archive)`,
          );
        }
        return this.#end(pax !== null || longName !== null || longLink !== null);
      }
      checkChecksum(h, after);
      const flag = h[156];
      const ustar = h[257] === 0x75 && h[258] === 0x73 && h[259] === 0x74 && h[260] === 0x61 &&
        h[261] === 0x72;
      const posix = ustar && h[262] === 0; // "ustar\0"; GNU writes "ustar  \0"
      let name = cstr(h, 0, 100);
      if (posix && h[345] !== 0) name = `${cstr(h, 345, 155)}/${name}`;
      const size = num(h, 124, 12, "size", name);
      const what = () => showName(longName ?? name);
      switch (flag) {
        case 0x78: // 'x': pax extended header for the next entry
        case 0x67: { // 'g': pax global header (read, checked, ignored)
          const data = await this.#meta(size, `the pax header at ${after()}`);
          const recs = parsePax(data, what);
          if (flag === 0x78) pax = recs;
          continue;
        }
        case 0x4c: // 'L': GNU long name of the next entry
          longName = trimNul(
            bytesToBinary(await this.#meta(size, `the GNU long name at ${after()}`)),
          );
          continue;
        case 0x4b: // 'K': GNU long link name of the next entry
          longLink = trimNul(
            bytesToBinary(await this.#meta(size, `the GNU long link name at ${after()}`)),
          );
          continue;
      }
      const type = typeOf(flag, name, what);
      const e: TarEntry = {
        name: longName ?? name,
        type,
        mode: num(h, 100, 8, "mode", name) & 0o7777,
        uid: num(h, 108, 8, "uid", name),
        gid: num(h, 116, 8, "gid", name),
        size: 0,
        mtime: num(h, 136, 12, "mtime", name, true),
        mtimeNsec: 0,
        linkname: longLink ?? cstr(h, 157, 100),
        devmajor: ustar ? num(h, 329, 8, "devmajor", name) : 0,
        devminor: ustar ? num(h, 337, 8, "devminor", name) : 0,
        xattrs: new Map(),
      };
      let dataSize = size;
      if (pax) dataSize = applyPax(e, pax, dataSize, what);
      if (e.name.length > NAME_MAX_BYTES) {
        throw new TarError(
          `entry name longer than ${NAME_MAX_BYTES} bytes: ${showName(e.name.slice(0, 100))}…`,
        );
      }
      if (e.linkname.length > NAME_MAX_BYTES) {
        throw new TarError(`${showName(e.name)}: link target longer than ${NAME_MAX_BYTES} bytes`);
      }
      // Only regular files carry data: the others are header-only whatever their size
      // field says (POSIX ustar; Go's archive/tar reads them the same way).
      if (type === "file") {
        if (dataSize > this.#entryMax) {
          throw new TarError(
            `${
              showName(e.name)
            }: ${dataSize} bytes is more than the ${this.#entryMax}-byte limit per entry`,
          );
        }
        e.size = dataSize;
      } else dataSize = 0;
      this.#pending = dataSize;
      this.#pendingPad = pad(dataSize);
      this.#dataOffset = this.#src.position;
      this.#current = e;
      this.#count++;
      return e;
    }
  }

  /** Offset in the archive of the current entry's data. */
  get dataOffset(): number {
    return this.#dataOffset;
  }

  /** Number of entries returned so far. */
  get count(): number {
    return this.#count;
  }

  /**
   * Delivers the current entry's data to `sink` in pieces (views valid only
   * during the call). Call at most once per entry; {@link next} skips unread data.
   */
  async read(sink: (piece: Uint8Array) => void): Promise<void> {
    const e = this.#current;
    const n = this.#pending;
    this.#pending = 0;
    if (n > 0) await this.#src.run(n, sink, () => `the data of ${showName(e!.name)}`);
    await this.#padding();
  }

  /** Skips the rest of the current entry's data. */
  async skip(): Promise<void> {
    const e = this.#current;
    const n = this.#pending + this.#pendingPad;
    this.#pending = this.#pendingPad = 0;
    if (n > 0) await this.#src.skip(n, () => `the data of ${showName(e!.name)}`);
  }

  /** Stops reading (cancels the stream). */
  async cancel(reason?: unknown): Promise<void> {
    this.#ended = true;
    await this.#src.cancel(reason);
  }

  async #padding(): Promise<void> {
    const p = this.#pendingPad;
    this.#pendingPad = 0;
    if (p > 0) {
      const e = this.#current;
      await this.#src.skip(p, () => `the padding of ${showName(e!.name)}`);
    }
  }

  async #end(dangling: boolean): Promise<null> {
    if (dangling) throw new TarError("truncated archive: an extended header has no entry after it");
    this.#ended = true;
    await this.#src.drain();
    return null;
  }

  async #meta(size: number, what: string): Promise<Uint8Array> {
    if (size > this.#metaMax) {
      throw new TarError(`${what}: ${size} bytes is more than the ${this.#metaMax}-byte limit`);
    }
    const out = new Uint8Array(size);
    let at = 0;
    await this.#src.run(size, (p) => {
      out.set(p, at);
      at += p.length;
    }, () => what);
    await this.#src.skip(pad(size), () => what);
    return out;
  }
}

function pad(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

function trimNul(s: string): string {
  const i = s.indexOf("\0");
  return i < 0 ? s : s.slice(0, i);
}

/** A NUL-terminated field as a binary string. */
function cstr(h: Uint8Array, off: number, len: number): string {
  let end = off;
  while (end < off + len && h[end] !== 0) end++;
  return bytesToBinary(h.subarray(off, end));
}

/** POSIX: the checksum is the unsigned sum of the header with the field as spaces (signed also seen). */
function checkChecksum(h: Uint8Array, after: () => string): void {
  let u = 0, s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i];
    u += b;
    s += b > 127 ? b - 256 : b;
  }
  const want = octal(h, 148, 8);
  if (want === null || (want !== u && want !== s)) {
    throw new TarError(`bad header checksum at ${after()} (not a tar archive, or corrupt)`);
  }
}

/** An octal field (leading spaces, trailing NUL/space), or null when malformed. */
function octal(h: Uint8Array, off: number, len: number): number | null {
  let i = off;
  const end = off + len;
  while (i < end && h[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = h[i];
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) return null;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) if (h[i] !== 0 && h[i] !== 0x20) return null;
  return digits === 0 ? 0 : v;
}

/** A numeric field: octal, or GNU base-256 (high bit of the first byte set). */
function num(
  h: Uint8Array,
  off: number,
  len: number,
  field: string,
  name: string,
  signed = false,
): number {
  const first = h[off];
  if (first & 0x80) {
    // base-256, two's complement big-endian; 0xff first byte = negative
    const negative = first === 0xff;
    if (negative && !signed) throw new TarError(`${showName(name)}: negative ${field}`);
    let v = 0n;
    for (let i = 0; i < len; i++) v = (v << 8n) | BigInt(i === 0 ? first & 0x7f : h[off + i]);
    if (negative) v -= 1n << BigInt(8 * len - 1);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new TarError(`${showName(name)}: ${field} out of range`);
    }
    return Number(v);
  }
  const v = octal(h, off, len);
  if (v === null) throw new TarError(`${showName(name)}: malformed ${field} field`);
  return v;
}

function typeOf(flag: number, name: string, what: () => string): TarType {
  switch (flag) {
    case 0x30: // '0'
    case 0: // old tar: regular file (a trailing '/' made it a directory)
      return flag === 0 && name.endsWith("/") ? "dir" : "file";
    case 0x37: // '7' contiguous file: a regular file
      return "file";
    case 0x31:
      return "hardlink";
    case 0x32:
      return "symlink";
    case 0x33:
      return "char";
    case 0x34:
      return "block";
    case 0x35:
      return "dir";
    case 0x36:
      return "fifo";
    case 0x53:
      throw new TarError(`${what()}: GNU sparse files are not supported`);
    case 0x4d:
      throw new TarError(`${what()}: multi-volume archives are not supported`);
    case 0x44:
      throw new TarError(`${what()}: GNU dump-dir entries are not supported`);
    case 0x56: // 'V' volume label: no file
      throw new TarError(`${what()}: volume labels are not supported`);
  }
  throw new TarError(
    `${what()}: unknown entry type '${String.fromCharCode(flag)}' (0x${flag.toString(16)})`,
  );
}

/** Parses pax records `LEN KEY=VALUE\n` (POSIX.1-2001 pax format). Later records win. */
function parsePax(data: Uint8Array, what: () => string): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  let p = 0;
  const dec = new TextDecoder();
  while (p < data.length) {
    if (data[p] === 0) break; // NUL padding after the records (seen in the wild)
    let len = 0;
    let q = p;
    while (q < data.length && data[q] >= 0x30 && data[q] <= 0x39 && q - p < 10) {
      len = len * 10 + (data[q] - 0x30);
      q++;
    }
    if (
      q === p || data[q] !== 0x20 || len < 5 || p + len > data.length || data[p + len - 1] !== 0x0a
    ) {
      throw new TarError(`malformed pax record in the header of ${what()}`);
    }
    const rec = data.subarray(q + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarError(`malformed pax record in the header of ${what()}`);
    out.set(dec.decode(rec.subarray(0, eq)), rec.slice(eq + 1));
    p += len;
  }
  return out;
}

/** Applies pax records to `e`; returns the data size. */
function applyPax(
  e: TarEntry,
  pax: Map<string, Uint8Array>,
  size: number,
  what: () => string,
): number {
  const dec = new TextDecoder();
  const decimal = (key: string, v: Uint8Array, signed: boolean): number => {
    const s = dec.decode(v);
    if (!(signed ? /^-?\d{1,18}$/ : /^\d{1,18}$/).test(s)) {
      throw new TarError(`${what()}: malformed pax ${key} '${s.slice(0, 40)}'`);
    }
    return Number(s);
  };
  for (const [key, v] of pax) {
    if (key === "path") e.name = bytesToBinary(v);
    else if (key === "linkpath") e.linkname = bytesToBinary(v);
    else if (key === "size") size = decimal(key, v, false);
    else if (key === "uid") e.uid = decimal(key, v, false);
    else if (key === "gid") e.gid = decimal(key, v, false);
    else if (key === "mtime") {
      const s = dec.decode(v);
      const m = /^(-?\d{1,18})(?:\.(\d{1,30}))?$/.exec(s);
      if (!m) throw new TarError(`${what()}: malformed pax mtime '${s.slice(0, 40)}'`);
      e.mtime = Number(m[1]);
      e.mtimeNsec = m[2] ? Number((m[2] + "000000000").slice(0, 9)) : 0;
      if (e.mtime < 0 && e.mtimeNsec > 0) {
        // "-1.5" is 1.5 s before the epoch: seconds -2, nanoseconds 5e8.
        e.mtime -= 1;
        e.mtimeNsec = 1e9 - e.mtimeNsec;
      }
    } else if (key.startsWith("SCHILY.xattr.")) e.xattrs.set(key.slice(13), v);
    else if (key.startsWith("GNU.sparse.")) {
      throw new TarError(`${what()}: pax sparse files are not supported`);
    }
  }
  if (e.uid > 0xffffffff || e.gid > 0xffffffff) {
    throw new TarError(`${showName(e.name)}: uid/gid out of range`);
  }
  return size;
}
