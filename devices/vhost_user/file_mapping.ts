/**
 * One `MAP_SHARED` mapping per guest-RAM file in the process, shared by every
 * vhost-user back-end (and every region) that is given that file.
 *
 * Why: a mapping becomes a Uint8Array over the whole RAM, and V8 counts such
 * an ArrayBuffer as external memory: each new 512 MiB view started a major GC
 * (measured with `--trace-gc` on a cache hit: an incremental mark-compact
 * after each SET_MEM_TABLE, 2.5–3.5 ms of pause plus ~4 ms of steps with a
 * 10 MB heap; 12 ms with 18 MB). QEMU sends the same RAM file to each device
 * (vsock, virtio-fs, net), while the guest's vCPU waits for the replies. One
 * view per file makes that one GC, taken when the first device starts.
 *
 * A file is known by its device and inode number (`stat` of
 * `/proc/self/fd/N`): while a mapping lives it holds the inode, so the number
 * cannot pass to another file.
 *
 * @module
 */

import { close, MAP, mmap, munmap, O, open, PROT, viewAt } from "../../kvm_ffi/libc.ts";

/** A reference to a shared mapping; release it when done. */
export interface FileMapping {
  /** Start of the mapping (file offset 0). */
  readonly base: Deno.PointerObject;
  /** Mapped length in bytes. */
  readonly size: number;
  /** The mapping's bytes. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Drops this reference; the last one unmaps. Idempotent. */
  release(): void;
}

interface Entry {
  base: Deno.PointerObject;
  size: number;
  bytes: Uint8Array<ArrayBuffer>;
  refs: number;
}

const live = new Map<string, Entry>();

/** Mappings currently held (tests). */
export function liveFileMappings(): number {
  return live.size;
}

/**
 * A shared read-write mapping of the file open at `fd`, at least `need` bytes
 * from offset 0: the existing one when it is long enough, else a new one of
 * the file's size (or `need`, when the file is shorter: as `mmap` itself, an
 * access past the end of the file then faults). `fd` stays the caller's.
 */
export function mapFile(fd: number, need: number): FileMapping {
  return acquire(Deno.statSync(`/proc/self/fd/${fd}`), need, () => fd);
}

/**
 * {@link mapFile} by path, the whole file: what a VMM that made the guest's
 * RAM file calls before its devices start, so that their mappings are this
 * one and the GC it starts runs while nothing waits on this thread (the
 * qemu engine: during the incoming migration).
 */
export function mapPath(path: string): FileMapping {
  let fd = -1;
  try {
    return acquire(Deno.statSync(path), 0, () => fd = open(path, O.RDWR | O.CLOEXEC));
  } finally {
    if (fd >= 0) close(fd); // the mapping holds the file
  }
}

function acquire(st: Deno.FileInfo, need: number, fdOf: () => number): FileMapping {
  const key = `${st.dev}:${st.ino}`;
  let e = live.get(key);
  if (!e || e.size < need) {
    const size = Math.max(need, st.size);
    if (size <= 0) throw new RangeError(`cannot map an empty file (${key})`);
    const base = mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.NORESERVE, fdOf(), 0);
    e = { base, size, bytes: viewAt(base, size), refs: 0 };
    // A shorter one still in use keeps its own entry alive through its references.
    live.set(key, e);
  }
  const entry = e;
  entry.refs++;
  let released = false;
  return {
    base: entry.base,
    size: entry.size,
    bytes: entry.bytes,
    release() {
      if (released) return;
      released = true;
      if (--entry.refs > 0) return;
      if (live.get(key) === entry) live.delete(key);
      munmap(entry.base, entry.size);
    },
  };
}
