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

import { check, close, errno, ftruncate, libc, O, open, SysError } from "../kvm_ffi/libc.ts";
import { dataRanges } from "./memory_file.ts";

/** x86-64 syscall number of sendfile (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_SENDFILE = 40n;
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

/**
 * Copies `src` to a new file `dst` (created with mode 0600; must not exist),
 * keeping holes. `dst` is removed again if the copy fails. No fsync: the
 * restore side writes to tmpfs, where it means nothing.
 */
export function copySparse(src: string, dst: string): SparseCopyResult {
  const inFd = open(src, O.RDONLY);
  let outFd = -1;
  let created = false;
  try {
    const size = check(`lseek(${src})`, libc.lseek(inFd, 0n, SEEK_END));
    outFd = open(dst, O.WRONLY | O.CREAT | O.EXCL, 0o600);
    created = true;
    ftruncate(outFd, size);
    let dataBytes = 0;
    // sendfile's in-offset is passed by pointer and advanced by the kernel.
    const offset = new BigInt64Array(1);
    const offsetPtr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(offset)));
    for (const [from, to] of dataRanges(inFd, 0, size)) {
      check(`lseek(${dst})`, libc.lseek(outFd, BigInt(from), SEEK_SET));
      offset[0] = BigInt(from);
      while (Number(offset[0]) < to) {
        const want = Math.min(STEP, to - Number(offset[0]));
        const n = libc.syscall(
          SYS_SENDFILE,
          BigInt(outFd),
          BigInt(inFd),
          offsetPtr,
          BigInt(want),
          0n,
          0n,
        );
        if (n < 0n) {
          const e = errno();
          if (e === EINTR) continue;
          throw new SysError(`sendfile(${src} → ${dst})`, e);
        }
        if (n === 0n) {
          throw new SysError(`sendfile(${src} → ${dst}) hit the end at ${offset[0]} of ${size}`, 5);
        }
      }
      dataBytes += to - from;
    }
    return { size, dataBytes };
  } catch (e) {
    if (created) {
      try {
        Deno.removeSync(dst);
      } catch {
        // already gone
      }
    }
    throw e;
  } finally {
    if (outFd >= 0) close(outFd);
    close(inFd);
  }
}
