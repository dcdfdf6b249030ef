/**
 * Copying a sparse file so that its holes stay holes: the data ranges come
 * from `lseek(SEEK_DATA/SEEK_HOLE)` and each is moved by `sendfile(2)`, the
 * kernel copying page-cache pages from one file to the other with no user
 * buffer. `copy_file_range(2)` would be the obvious call, but it fails with
 * EXDEV between ext4 and tmpfs on the kernels skiff runs on (measured: the
 * host's 6.1), and a plain read/write loop through JS costs a copy more.
 *
 * Used for the qemu engine's RAM file: cache (ext4) → a fresh tmpfs file per
 * restore. The capture side writes through `writeMemoryFile`, which also
 * drops zero pages and digests what it writes.
 *
 * @module
 */

import {
  check,
  checkSyscall,
  close,
  errno,
  ftruncate,
  libc,
  O,
  open,
  SysError,
} from "../kvm_ffi/libc.ts";
import { dataRanges } from "./memory_file.ts";

/** x86-64 syscall number of sendfile (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_SENDFILE = 40n;
/** x86-64 syscall number of fallocate (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_FALLOCATE = 285n;
/** fallocate(2) mode: deallocate the range, keep the file's size (linux/falloc.h). */
const FALLOC_FL_KEEP_SIZE = 1n;
const FALLOC_FL_PUNCH_HOLE = 2n;
/** lseek(2) whence. */
const SEEK_SET = 0;
const SEEK_END = 2;
/** errno: interrupted by a signal; retry. */
const EINTR = 4;
/** Bytes per sendfile call: the kernel caps one call at 0x7ffff000 anyway. */
const STEP = 1 << 30;

/** What {@link copySparse} copied. */
export interface SparseCopyResult {
  /** Logical size of the file (`dst` gets the same). */
  size: number;
  /** Bytes of data ranges copied (the rest stays holes). */
  dataBytes: number;
}

/** Both files open, `dst` created at `src`'s size (all a hole), and the data ranges to move. */
interface CopyPlan {
  inFd: number;
  outFd: number;
  size: number;
  ranges: [number, number][];
  /** Bytes in `ranges`. */
  dataBytes: number;
}

/** How {@link plan} finds `dst`: created, there as a hole, or there with other data to drop. */
type Target = "create" | "hole" | "reset";

/**
 * Opens `src`, creates `dst` (0600, must not exist) at its size — or opens
 * an existing `dst` at `src`'s size (checked) that is all a hole or, with
 * `"reset"`, is made one first — and lists the data ranges.
 */
function plan(src: string, dst: string, target: Target): CopyPlan {
  const inFd = open(src, O.RDONLY);
  let outFd = -1;
  try {
    const size = check(`lseek(${src})`, libc.lseek(inFd, 0n, SEEK_END));
    if (target !== "create") {
      outFd = open(dst, O.WRONLY);
      const has = check(`lseek(${dst})`, libc.lseek(outFd, 0n, SEEK_END));
      if (has !== size) {
        throw new RangeError(`cannot copy ${src} (${size} bytes) into ${dst} (${has} bytes)`);
      }
      // A punched hole reads as zeros, as a fresh file does; the size stays,
      // so a process that has the file mapped cannot fault past its end.
      if (target === "reset") {
        const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        checkSyscall(
          `fallocate(${dst})`,
          libc.syscall(SYS_FALLOCATE, BigInt(outFd), mode, 0n, BigInt(size), 0n, 0n),
        );
      }
    } else {
      outFd = open(dst, O.WRONLY | O.CREAT | O.EXCL, 0o600);
      ftruncate(outFd, size);
    }
    const ranges = dataRanges(inFd, 0, size);
    return { inFd, outFd, size, ranges, dataBytes: ranges.reduce((n, [a, b]) => n + b - a, 0) };
  } catch (e) {
    if (outFd >= 0) {
      close(outFd);
      removeQuietly(dst);
    }
    close(inFd);
    throw e;
  }
}

/** Removes `path` (a tree with `recursive`) if it can; whether it did. */
export function removeQuietly(path: string, recursive = false): boolean {
  try {
    Deno.removeSync(path, { recursive });
    return true;
  } catch {
    return false; // gone already, or not ours to remove
  }
}

/**
 * Moves `src`'s bytes from `offset[0]` up to `to` into `outFd` at its
 * current position, by sendfile(2) on this thread.
 */
function sendRange(p: CopyPlan, offset: BigInt64Array, to: number, what: string): void {
  const offsetPtr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(offset)));
  while (Number(offset[0]) < to) {
    const want = Math.min(STEP, to - Number(offset[0]));
    const n = libc.syscall(
      SYS_SENDFILE,
      BigInt(p.outFd),
      BigInt(p.inFd),
      offsetPtr,
      BigInt(want),
      0n,
      0n,
    );
    if (n < 0n) {
      const e = errno();
      if (e === EINTR) continue;
      throw new SysError(`sendfile(${what})`, e);
    }
    if (n === 0n) {
      throw new SysError(`sendfile(${what}) hit the end at ${offset[0]} of ${p.size}`, 5);
    }
  }
}

/**
 * Copies `src` to a new file `dst` (created with mode 0600; must not exist),
 * keeping holes. `dst` is removed again if the copy fails. No fsync: the
 * restore side writes to tmpfs, where it means nothing.
 */
export function copySparse(src: string, dst: string): SparseCopyResult {
  const p = plan(src, dst, "create");
  const what = `${src} → ${dst}`;
  let done = false;
  try {
    // sendfile's in-offset is passed by pointer and advanced by the kernel.
    const offset = new BigInt64Array(1);
    for (const to of seekEachRange(p, offset, what)) sendRange(p, offset, to, what);
    done = true;
  } finally {
    release(p, dst, done);
  }
  return { size: p.size, dataBytes: p.dataBytes };
}

/**
 * {@link copySparse} that lets this thread go on while the kernel copies:
 * `dst` exists at its full size (a hole) when this returns, so a process
 * may map it at once — QEMU's `memory-backend-file` does, and reads none of
 * it before an incoming migration, which must wait for the promise. The
 * data moves by sendfile on a thread-pool thread, one call per data range.
 * `existing`: `dst` is there already at `src`'s size and the data is copied
 * into it — `"hole"`: it is all a hole (a RAM file a QEMU started early has
 * mapped); `"reset"`: it may hold other data, which is dropped first (a
 * spare RAM copy of another entry, snapshot/ram_spares.ts).
 */
export function copySparseInBackground(
  src: string,
  dst: string,
  o: { existing?: "hole" | "reset" } = {},
): Promise<SparseCopyResult> {
  const p = plan(src, dst, o.existing ?? "create");
  const what = `${src} → ${dst}`;
  return (async () => {
    let done = false;
    try {
      const offset = new BigInt64Array(1);
      for (const to of seekEachRange(p, offset, what)) {
        const want = to - Number(offset[0]);
        const n = Number(await libc.sendfile_nb(p.outFd, p.inFd, offset, BigInt(want)));
        // Short or failed (errno is the pool thread's): the rest on this thread, which says why.
        if (n < want) sendRange(p, offset, to, what);
      }
      done = true;
    } finally {
      release(p, dst, done);
    }
    return { size: p.size, dataBytes: p.dataBytes };
  })();
}

/**
 * For each data range: points the target's file position and the source
 * offset at its start, then yields its end.
 */
function* seekEachRange(p: CopyPlan, offset: BigInt64Array, what: string): Generator<number> {
  for (const [from, to] of p.ranges) {
    check(`lseek(${what})`, libc.lseek(p.outFd, BigInt(from), SEEK_SET));
    offset[0] = BigInt(from);
    yield to;
  }
}

/** Closes both files; a copy that did not finish also loses its target. */
function release(p: CopyPlan, dst: string, done: boolean): void {
  close(p.outFd);
  close(p.inFd);
  if (!done) removeQuietly(dst);
}
