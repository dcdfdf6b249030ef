/**
 * The `memory` file: guest memory written sparse (holes where pages are zero)
 * and mapped back `MAP_PRIVATE` (copy-on-write) on restore.
 *
 * Writing scans each region's backing memfd with `lseek(SEEK_DATA/SEEK_HOLE)`
 * so never-touched ranges of a large guest cost nothing, then skips zero pages
 * inside the data ranges and `pwrite`s each run of non-zero pages at its
 * offset. A 4 GiB guest that touched 32 MiB therefore reads and writes about
 * 32 MiB.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { nativeHash } from "../hv/sha256.ts";
import type { MemoryRegion } from "../hv/memory.ts";
import { MappedRegion, RegionMemory } from "../hv/memory.ts";
import {
  check,
  close,
  errno,
  ftruncate,
  libc,
  MAP,
  mmap,
  munmap,
  O,
  open,
  PROT,
  SysError,
  viewAt,
} from "../kvm_ffi/libc.ts";
import { type MemoryInfo, type MemoryLayoutRegion, PAGE_SIZE } from "./format.ts";

/** lseek(2) whence values (include/uapi/linux/fs.h). */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** lseek(2) whence: the end of the file. */
const SEEK_END = 2;
/** errno of a missing file. */
const ENOENT = 2;
/** errno when SEEK_DATA finds no data after the offset. */
const ENXIO = 6;
/** errno when the file system does not support SEEK_DATA (treat the file as all data). */
const EINVAL = 22;

/** Pages scanned per step (bounds memory touched between writes). */
const CHUNK_PAGES = 256;

/**
 * The data ranges of `fd` within `[start, end)` as `[from, to)` pairs, from
 * `lseek(SEEK_DATA/SEEK_HOLE)`. Falls back to the whole range when the file
 * system cannot tell.
 */
export function dataRanges(fd: number, start: number, end: number): [number, number][] {
  const out: [number, number][] = [];
  let off = start;
  while (off < end) {
    const d = libc.lseek(fd, BigInt(off), SEEK_DATA);
    if (d < 0n) {
      const e = errno();
      if (e === ENXIO) break;
      if (e === EINVAL && out.length === 0) return [[start, end]];
      throw new SysError("lseek(SEEK_DATA)", e);
    }
    const from = Number(d);
    if (from >= end) break;
    const h = check("lseek(SEEK_HOLE)", libc.lseek(fd, d, SEEK_HOLE));
    const to = Math.min(h, end);
    out.push([from, to]);
    off = to;
  }
  return out;
}

/** True when the 4 KiB page at `off` in `words` (Int32 view of the same bytes) is all zero. */
function pageIsZero(words: Int32Array, off: number): boolean {
  const first = off >> 2;
  const last = first + (PAGE_SIZE >> 2);
  for (let i = first; i < last; i++) if (words[i] !== 0) return false;
  return true;
}

/**
 * Calls `run(offset, length)` for each maximal run of non-zero pages of
 * `region` (offsets relative to the region), in increasing order. Uses the
 * backing fd's data ranges when the region has one.
 */
export function forEachDataRun(
  region: MemoryRegion,
  run: (offset: number, length: number) => void,
): void {
  const ranges = region.fd !== undefined
    ? dataRanges(region.fd, region.fdOffset ?? 0, (region.fdOffset ?? 0) + region.size)
      .map(([a, b]) => [a - (region.fdOffset ?? 0), b - (region.fdOffset ?? 0)])
    : [[0, region.size]];
  const bytes = region.bytes;
  for (const [rawFrom, rawTo] of ranges) {
    const from = Math.floor(rawFrom / PAGE_SIZE) * PAGE_SIZE;
    const to = Math.min(region.size, Math.ceil(rawTo / PAGE_SIZE) * PAGE_SIZE);
    let runStart = -1;
    for (let chunk = from; chunk < to; chunk += CHUNK_PAGES * PAGE_SIZE) {
      const chunkEnd = Math.min(to, chunk + CHUNK_PAGES * PAGE_SIZE);
      const words = new Int32Array(bytes.buffer, bytes.byteOffset + chunk, (chunkEnd - chunk) >> 2);
      for (let p = chunk; p < chunkEnd; p += PAGE_SIZE) {
        const zero = pageIsZero(words, p - chunk);
        if (!zero && runStart < 0) runStart = p;
        else if (zero && runStart >= 0) {
          run(runStart, p - runStart);
          runStart = -1;
        }
      }
    }
    if (runStart >= 0) run(runStart, to - runStart);
  }
}

function u64le(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/**
 * Adds a run of non-zero pages to the memory digest, page by page: each page's
 * file offset (u64 LE) then its 4096 bytes. Per page, so the digest depends
 * only on the file's logical content, not on how runs were split.
 */
function digestRun(h: Hash, fileOffset: number, data: Uint8Array): void {
  for (let p = 0; p < data.length; p += PAGE_SIZE) {
    h.update(u64le(fileOffset + p)).update(data.subarray(p, p + PAGE_SIZE));
  }
}

/** The file layout for `regions`: packed in guest-address order, page aligned. */
export function layoutFor(regions: readonly MemoryRegion[]): MemoryLayoutRegion[] {
  let off = 0;
  return regions.map((r) => {
    if (r.size % PAGE_SIZE !== 0) {
      throw new RangeError(
        `memory region at 0x${r.guestAddr.toString(16)} size ${r.size} is not page aligned`,
      );
    }
    const out = { guestAddr: r.guestAddr, size: r.size, fileOffset: off };
    off += r.size;
    return out;
  });
}

function pwriteAll(fd: number, data: Uint8Array<ArrayBuffer>, offset: number, path: string): void {
  let done = 0;
  while (done < data.length) {
    const part = data.subarray(done);
    const n = check(
      `pwrite(${path})`,
      libc.pwrite(fd, part, BigInt(part.length), BigInt(offset + done)),
    );
    if (n === 0) throw new SysError(`pwrite(${path}) wrote 0 bytes`, 5);
    done += n;
  }
}

/**
 * Writes guest memory to a new sparse file at `path` (created, must not
 * exist), fsyncs it, and returns its description for `state.json`.
 */
export function writeMemoryFile(
  path: string,
  memory: { regions: readonly MemoryRegion[] },
): MemoryInfo {
  const layout = layoutFor(memory.regions);
  const fileSize = layout.reduce((n, r) => n + r.size, 0);
  const fd = open(path, O.WRONLY | O.CREAT | O.EXCL, 0o600);
  const h = nativeHash("sha256");
  let dataBytes = 0;
  try {
    ftruncate(fd, fileSize);
    memory.regions.forEach((region, i) => {
      const base = layout[i].fileOffset;
      forEachDataRun(region, (off, len) => {
        const data = region.bytes.subarray(off, off + len);
        pwriteAll(fd, data, base + off, path);
        digestRun(h, base + off, data);
        dataBytes += len;
      });
    });
    check(`fsync(${path})`, libc.fsync(fd));
  } finally {
    close(fd);
  }
  return { fileSize, regions: layout, dataBytes, digest: `sha256:${h.digest("hex")}` };
}

/**
 * An address range reserved `PROT_NONE` with at most one `ArrayBuffer` over
 * it, reused by successive restores in a process. Each new `ArrayBuffer` over
 * guest memory counts as V8 external memory: a fresh one per restore made V8
 * run "external memory pressure" scavenges and a 5–12 ms incremental
 * mark-compact during the next restore (4 GiB guests, `--trace-gc`). Reusing
 * the buffer keeps repeated restores in one process free of that, and making
 * it only when guest bytes are first touched keeps it out of the restore.
 */
interface Reservation {
  ptr: Deno.PointerObject;
  size: number;
  /** Made by the first restore that touches guest bytes (see `MappedRegion`), then kept. */
  buffer: ArrayBuffer | null;
}

/** The reservation's `ArrayBuffer`, made on first use. */
function reservationBuffer(r: Reservation): ArrayBuffer {
  return r.buffer ??= Deno.UnsafePointerView.getArrayBuffer(r.ptr, r.size);
}

/** Reservations not in use, any size. */
const freeReservations: Reservation[] = [];

/** The smallest free reservation of at least `size` bytes, or null. */
function takeReservation(size: number): Reservation | null {
  let best = -1;
  freeReservations.forEach((r, i) => {
    if (r.size >= size && (best < 0 || r.size < freeReservations[best].size)) best = i;
  });
  return best >= 0 ? freeReservations.splice(best, 1)[0] : null;
}

/**
 * Puts `r` back: its range is replaced by a fresh `PROT_NONE` anonymous
 * mapping (dropping the file mapping and its copied-on-write pages), so a
 * stale view faults instead of seeing the next restore's memory.
 */
function releaseReservation(r: Reservation): void {
  try {
    mmap(r.size, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE | MAP.FIXED, -1, 0, r.ptr);
  } catch {
    munmap(r.ptr, r.size); // cannot reset it: give the range back instead of reusing it
    return;
  }
  freeReservations.push(r);
}

/** Snapshot memory living in a {@link Reservation}; dispose returns the reservation. */
class ReservedMemory extends RegionMemory {
  #release: (() => void) | null;

  constructor(regions: MemoryRegion[], release: () => void) {
    super(regions);
    this.#release = release;
  }

  override [Symbol.dispose](): void {
    const release = this.#release;
    this.#release = null;
    release?.();
    super[Symbol.dispose]();
  }
}

/**
 * Maps the `memory` file `MAP_PRIVATE` (copy-on-write: guest writes never
 * reach the file) and returns it as guest memory laid out as `info` says.
 * Nothing is read: pages fault in from the page cache on first touch.
 * `checkSize`, if given, gets the file's size (-1 when it does not exist)
 * before anything is mapped and throws to refuse it.
 *
 * Disposing the memory closes the fd and turns the mapping into a
 * {@link Reservation}; a later restore of at most that size maps its file
 * `MAP_FIXED` there and reuses the `ArrayBuffer`. Views taken from a disposed memory must not
 * be used (they fault, or after a later restore see its memory).
 */
export function mapMemoryFile(
  path: string,
  info: MemoryInfo,
  checkSize?: (size: number) => void,
): RegionMemory {
  let fd: number;
  try {
    fd = open(path, O.RDONLY);
  } catch (e) {
    if (checkSize && e instanceof SysError && e.errno === ENOENT) checkSize(-1);
    throw e;
  }
  if (checkSize) {
    try {
      checkSize(check(`lseek(${path})`, libc.lseek(fd, 0n, SEEK_END)));
    } catch (e) {
      close(fd);
      throw e;
    }
  }
  const prot = PROT.READ | PROT.WRITE;
  const flags = MAP.PRIVATE | MAP.NORESERVE;
  let res: Reservation;
  try {
    const free = takeReservation(info.fileSize);
    if (free) {
      res = free;
      try {
        mmap(info.fileSize, prot, flags | MAP.FIXED, fd, 0, res.ptr);
      } catch (e) {
        releaseReservation(res);
        throw e;
      }
    } else {
      // First restore of this size: map where the kernel likes; the range
      // becomes a reservation when this memory is disposed.
      const ptr = mmap(info.fileSize, prot, flags, fd, 0);
      res = { ptr, size: info.fileSize, buffer: null };
    }
  } catch (e) {
    close(fd);
    throw e;
  }
  const release = () => {
    releaseReservation(res);
    close(fd);
  };
  const base = Deno.UnsafePointer.value(res.ptr);
  // Lazy views (MappedRegion): a restore that never touches guest bytes makes no ArrayBuffer.
  const regions: MemoryRegion[] = info.regions.map((r) =>
    new MappedRegion(
      {
        guestAddr: r.guestAddr,
        size: r.size,
        hostPtr: Deno.UnsafePointer.create(base + BigInt(r.fileOffset))!,
        fd,
        fdOffset: r.fileOffset,
      },
      () => new Uint8Array(reservationBuffer(res), r.fileOffset, r.size),
    )
  );
  try {
    return new ReservedMemory(regions, release);
  } catch (e) {
    release();
    throw e;
  }
}

/**
 * Recomputes the memory digest of the file at `path` (reading only its data
 * ranges) for a full verify.
 */
export function digestMemoryFile(path: string, info: MemoryInfo): string {
  const fd = open(path, O.RDONLY);
  const h = nativeHash("sha256");
  try {
    const ptr = mmap(info.fileSize, PROT.READ, MAP.PRIVATE | MAP.NORESERVE, fd, 0);
    try {
      const bytes = viewAt(ptr, info.fileSize);
      const region: MemoryRegion = { guestAddr: 0, size: info.fileSize, bytes, fd, fdOffset: 0 };
      forEachDataRun(region, (off, len) => digestRun(h, off, bytes.subarray(off, off + len)));
    } finally {
      munmap(ptr, info.fileSize);
    }
  } finally {
    close(fd);
  }
  return `sha256:${h.digest("hex")}`;
}
