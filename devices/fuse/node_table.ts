/**
 * The passthrough back-end's state — nodes, open handles, the (dev, ino)
 * index, the node-fd LRU and node names — in SharedArrayBuffers, so that the
 * threads serving one FUSE connection (one per `/dev/fuse` reader, see
 * `dev_fuse.ts`) share one state instead of each keeping its own.
 *
 * Plain data: fixed-size records of Int32 fields in growable
 * SharedArrayBuffers (length-tracking views see another thread's growth), a
 * chained hash, a doubly linked LRU, a name arena with size classes, and a
 * futex-style mutex ({@link NodeTable.lock}). Everything is read and written
 * with the lock held — a coarse lock on purpose: the host calls of a node
 * operation run under it too, so a node's fd can only be closed (evicted,
 * forgotten) by the lock holder, never under another thread that is using it.
 * The one exception are handle reference counts ({@link NodeTable.hRef}),
 * which let READ/WRITE run outside the lock while RELEASE defers the close.
 *
 * Node ids and handle numbers are `generation * 2^24 + slot`: a slot freed
 * and reused gets a new id, so a stale id from a hostile client never
 * reaches the new owner of the slot.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { FuseError } from "./filesystem.ts";

/** Slots per table; ids are `gen * SLOT_SPAN + slot`. */
export const SLOT_SPAN = 2 ** 24;

// ---- header words ----------------------------------------------------------
const H_LOCK = 0;
const H_NODE_HW = 1; // next never-used node slot
const H_NODE_FREE = 2; // free list head (via N_HASH), -1
const H_NODE_COUNT = 3;
const H_HANDLE_HW = 4;
const H_HANDLE_FREE = 5; // via K_ONEXT
const H_HANDLE_COUNT = 6;
const H_LRU_HEAD = 7; // least recently used
const H_LRU_TAIL = 8; // most recently used
const H_LRU_SIZE = 9;
const H_BUCKETS = 10; // bucket count (power of two)
const H_DEVS = 11;
const H_ARENA_HW = 12; // bytes of the name arena handed out
const H_ARENA_FREE = 13; // 9 free lists (16 << class bytes), offsets, -1
const NAME_CLASSES = 9;
const H_SLOTS_MAX = 22; // node slot limit (tests lower it)
const H_TOKENS = 23; // views handed out (each view's token tells directory positions apart)
const H_EPOCH = 24; // bumped whenever a buffer grows: views re-made on the next lock
const H_WORDS = 32;

// ---- node record -------------------------------------------------------------
const NW = 16;
const N_GEN = 0;
const N_FLAGS = 1;
const N_FD = 2;
const N_LOOKUPS = 3;
const N_KIDS = 4;
const N_PARENT = 5;
const N_DEV = 6;
const N_INO_LO = 7;
const N_INO_HI = 8;
const N_NAME_OFF = 9;
const N_NAME_LEN = 10;
const N_LRU_PREV = 11;
const N_LRU_NEXT = 12;
const N_HASH = 13; // next in bucket chain, or next free slot
const N_OPEN = 14; // first open handle slot, -1
const N_BACKING = 15; // FUSE_PASSTHROUGH backing id of the node's open files, 0: none

/** Node flag bits (the file type's S_IFMT bits sit in the high half). */
export const NF = {
  USED: 1,
  DETACHED: 2,
  STALE: 4,
  FOREIGN: 8,
  /** In the (dev, ino) hash. */
  KEYED: 16,
  /** In the fd LRU. */
  LRU: 32,
} as const;

// ---- handle record -------------------------------------------------------------
const KW = 13;
const K_GEN = 0;
const K_FLAGS = 1;
const K_FD = 2;
const K_NODE = 3;
const K_OFLAGS = 4;
const K_REFS = 5;
const K_ONEXT = 6; // next handle of the same node, or next free slot
const K_OPREV = 7;
const K_OFF_LO = 8;
const K_OFF_HI = 9;
const K_POS_OWNER = 10;
const K_POS_SEQ = 11;
const K_NODE_GEN = 12; // the node's generation when the handle was opened

const KF_USED = 1;
const KF_DIR = 2;
const KF_CLOSING = 4;

const DEV_MAX = 4096;
const INITIAL_NODES = 1024;
const INITIAL_HANDLES = 256;
const INITIAL_BUCKETS = 1024;
const INITIAL_ARENA = 64 * 1024;
/**
 * Most open handles at once (far beyond RLIMIT_NOFILE: each holds an fd). The
 * buffers reserve address space up to their maximum, not memory.
 */
const HANDLE_SLOTS_MAX = 2 ** 20;
const NODE_BYTES_MAX = SLOT_SPAN * NW * 4;
const HANDLE_BYTES_MAX = HANDLE_SLOTS_MAX * KW * 4;
const BUCKET_BYTES_MAX = SLOT_SPAN * 4;
/** Names of 16M nodes at 32 bytes each (the common size class). */
const ARENA_BYTES_MAX = 2 ** 29;

/** The buffers of a {@link NodeTable}: post them to another thread and {@link NodeTable.attach}. */
export interface NodeTableBuffers {
  header: SharedArrayBuffer;
  nodes: SharedArrayBuffer;
  handles: SharedArrayBuffer;
  buckets: SharedArrayBuffer;
  names: SharedArrayBuffer;
  devs: SharedArrayBuffer;
}

function growable(bytes: number, max: number): SharedArrayBuffer {
  return new SharedArrayBuffer(bytes, { maxByteLength: max });
}

function hash(dev: number, lo: number, hi: number): number {
  return (Math.imul(lo, 0x9e3779b1) ^ Math.imul(hi + 1, 0x85ebca77) ^
    Math.imul(dev + 1, 0xc2b2ae3d)) >>> 0;
}

/**
 * One view of the shared tables (one per thread). Methods other than the
 * lock and {@link hRef}/{@link hUnref} expect the caller to hold the lock.
 */
export class NodeTable {
  /** The shared buffers, for {@link attach} in another thread. */
  readonly buffers: NodeTableBuffers;
  #h: Int32Array;
  #n: Int32Array;
  #k: Int32Array;
  #b: Int32Array;
  #names: Uint8Array;
  #namesI32: Int32Array;
  #d: Int32Array;
  /** Lock depth of this thread (the lock is re-entrant per view). */
  #depth = 0;
  /** dev (maj * 2^20 + min) → index, this thread's cache of the shared dev list. */
  #devCache = new Map<number, number>();
  /** This view's number among the views of these tables (distinct per thread). */
  readonly token: number;

  /** The {@link H_EPOCH} the views below were made for. */
  #epoch = -1;

  private constructor(b: NodeTableBuffers) {
    this.buffers = b;
    this.token = Atomics.add(new Int32Array(b.header), H_TOKENS, 1);
    this.#h = new Int32Array(b.header);
    this.#d = new Int32Array(b.devs);
    this.#n =
      this.#k =
      this.#b =
      this.#namesI32 =
        this.#h;
    this.#names = new Uint8Array(0);
    this.#views();
  }

  /**
   * Makes fixed-length views of the growable buffers. A length-tracking view
   * costs a length load on every element access (measured: about twice the
   * time of a fixed view); fixed views are re-made after a growth instead,
   * which every thread notices when it takes the lock (the growth happened
   * under it).
   */
  #views(): void {
    const b = this.buffers;
    this.#epoch = Atomics.load(this.#h, H_EPOCH);
    this.#n = new Int32Array(b.nodes, 0, b.nodes.byteLength >> 2);
    this.#k = new Int32Array(b.handles, 0, b.handles.byteLength >> 2);
    this.#b = new Int32Array(b.buckets, 0, b.buckets.byteLength >> 2);
    this.#names = new Uint8Array(b.names, 0, b.names.byteLength);
    this.#namesI32 = new Int32Array(b.names, 0, b.names.byteLength >> 2);
  }

  /** Fresh, empty tables. */
  static create(): NodeTable {
    const t = new NodeTable({
      header: new SharedArrayBuffer(H_WORDS * 4),
      nodes: growable(INITIAL_NODES * NW * 4, NODE_BYTES_MAX),
      handles: growable(INITIAL_HANDLES * KW * 4, HANDLE_BYTES_MAX),
      buckets: growable(INITIAL_BUCKETS * 4, BUCKET_BYTES_MAX),
      names: growable(INITIAL_ARENA, ARENA_BYTES_MAX),
      devs: new SharedArrayBuffer(DEV_MAX * 8),
    });
    t.#reset();
    return t;
  }

  /** Another thread's view of the tables behind `buffers`. */
  static attach(buffers: NodeTableBuffers): NodeTable {
    return new NodeTable(buffers);
  }

  #reset(): void {
    const h = this.#h;
    h[H_NODE_HW] = 1; // slot 0 is never used: 0 is no node id
    h[H_NODE_FREE] = -1;
    h[H_NODE_COUNT] = 0;
    h[H_HANDLE_HW] = 1; // fh 0 is never handed out
    h[H_HANDLE_FREE] = -1;
    h[H_HANDLE_COUNT] = 0;
    h[H_LRU_HEAD] = -1;
    h[H_LRU_TAIL] = -1;
    h[H_LRU_SIZE] = 0;
    h[H_BUCKETS] = this.#b.length;
    this.#b.fill(-1);
    h[H_ARENA_HW] = 0;
    for (let c = 0; c < NAME_CLASSES; c++) h[H_ARENA_FREE + c] = -1;
    h[H_SLOTS_MAX] = SLOT_SPAN;
    this.#n.fill(0);
    this.#k.fill(0);
  }

  // ---- lock --------------------------------------------------------------------

  /**
   * Takes the table lock (re-entrant within this view). 0 free, 1 held, 2 held
   * with waiters; waiters sleep in Atomics.wait (Drepper's "futexes are tricky",
   * mutex 2).
   */
  lock(): void {
    if (this.#depth++ > 0) return;
    const h = this.#h;
    let c = Atomics.compareExchange(h, H_LOCK, 0, 1);
    for (let spin = 0; spin < 64 && c !== 0; spin++) {
      c = Atomics.compareExchange(h, H_LOCK, 0, 1);
    }
    if (c === 0) {
      if (h[H_EPOCH] !== this.#epoch) this.#views();
      return;
    }
    if (c !== 2) c = Atomics.exchange(h, H_LOCK, 2);
    while (c !== 0) {
      Atomics.wait(h, H_LOCK, 2);
      c = Atomics.exchange(h, H_LOCK, 2);
    }
    if (h[H_EPOCH] !== this.#epoch) this.#views();
  }

  /** Releases one level of {@link lock}. */
  unlock(): void {
    if (--this.#depth > 0) return;
    if (this.#depth < 0) {
      this.#depth = 0;
      throw new Error("NodeTable.unlock without lock");
    }
    if (Atomics.sub(this.#h, H_LOCK, 1) !== 1) {
      Atomics.store(this.#h, H_LOCK, 0);
      Atomics.notify(this.#h, H_LOCK, 1);
    }
  }

  /** Whether this view holds the lock. */
  get locked(): boolean {
    return this.#depth > 0;
  }

  /**
   * Forgets every handle and every node but `keep` (the root; the caller closed the
   * other fds). `keep` loses its kids, LRU place and key entry (key it in again).
   * Slots keep their generations, so ids handed out before are never valid again.
   */
  clear(keep: number): void {
    const h = this.#h;
    for (const s of this.liveHandles()) {
      this.#k[s * KW + K_REFS] = 0;
      this.#unlinkOpen(s);
      this.#hFree(s);
    }
    for (const s of this.liveNodes()) {
      this.#n[s * NW + N_NAME_LEN] = 0;
      this.#n[s * NW + N_NAME_OFF] = -1;
      if (s === keep) {
        const p = s * NW;
        this.#n[p + N_FLAGS] &= ~(NF.KEYED | NF.LRU);
        this.#n[p + N_KIDS] = 0;
        this.#n[p + N_HASH] = -1;
        this.#n[p + N_LRU_PREV] = -1;
        this.#n[p + N_LRU_NEXT] = -1;
        this.#n[p + N_OPEN] = -1;
        continue;
      }
      this.#n[s * NW + N_FLAGS] = NF.USED;
      this.nodeFree(s);
    }
    h[H_LRU_HEAD] = -1;
    h[H_LRU_TAIL] = -1;
    h[H_LRU_SIZE] = 0;
    this.#b.fill(-1, 0, h[H_BUCKETS]);
    h[H_ARENA_HW] = 0;
    for (let c = 0; c < NAME_CLASSES; c++) h[H_ARENA_FREE + c] = -1;
  }

  // ---- nodes -------------------------------------------------------------------

  /** Number of live nodes. */
  get nodeCount(): number {
    return this.#h[H_NODE_COUNT];
  }

  /** Largest number of node slots (default {@link SLOT_SPAN}); for tests of a full table. */
  set slotLimit(n: number) {
    this.#h[H_SLOTS_MAX] = Math.min(Math.max(n, 2), SLOT_SPAN);
  }

  /** A fresh node slot (fd -1, no parent, no name); ENFILE when the table is full. */
  nodeAlloc(): number {
    const h = this.#h;
    let s = h[H_NODE_FREE];
    if (s >= 0) {
      h[H_NODE_FREE] = this.#n[s * NW + N_HASH];
    } else {
      s = h[H_NODE_HW];
      if (s >= h[H_SLOTS_MAX]) throw new FuseError(Errno.ENFILE, "node table full");
      if ((s + 1) * NW > this.#n.length) this.#grow(this.buffers.nodes, NODE_BYTES_MAX);
      h[H_NODE_HW] = s + 1;
    }
    const n = this.#n;
    const p = s * NW;
    const gen = n[p + N_GEN];
    // Word by word: TypedArray fill on a shared, growable buffer is a slow runtime call.
    for (let i = p; i < p + NW; i++) n[i] = 0;
    n[p + N_GEN] = gen;
    n[p + N_FLAGS] = NF.USED;
    n[p + N_FD] = -1;
    n[p + N_PARENT] = -1;
    n[p + N_NAME_OFF] = -1;
    n[p + N_LRU_PREV] = -1;
    n[p + N_LRU_NEXT] = -1;
    n[p + N_HASH] = -1;
    n[p + N_OPEN] = -1;
    h[H_NODE_COUNT]++;
    return s;
  }

  /**
   * Places a node at the slot of saved id `id` (restore); false when that slot is
   * taken (an id of an older scheme that collides).
   */
  nodeAllocAt(id: number): number {
    const s = id % SLOT_SPAN;
    const gen = Math.floor(id / SLOT_SPAN);
    const h = this.#h;
    if (s === 0 || gen >= 2 ** 29) return -1;
    while (h[H_NODE_HW] <= s) {
      // Thread the skipped slots onto the free list.
      const f = h[H_NODE_HW];
      if ((f + 1) * NW > this.#n.length) this.#grow(this.buffers.nodes, NODE_BYTES_MAX);
      h[H_NODE_HW] = f + 1;
      this.#n[f * NW + N_FLAGS] = 0;
      this.#n[f * NW + N_HASH] = h[H_NODE_FREE];
      h[H_NODE_FREE] = f;
    }
    if (this.#n[s * NW + N_FLAGS] & NF.USED) return -1;
    // Unlink s from the free list.
    let prev = -1;
    let f = h[H_NODE_FREE];
    while (f >= 0 && f !== s) {
      prev = f;
      f = this.#n[f * NW + N_HASH];
    }
    if (f !== s) return -1;
    if (prev < 0) h[H_NODE_FREE] = this.#n[s * NW + N_HASH];
    else this.#n[prev * NW + N_HASH] = this.#n[s * NW + N_HASH];
    this.#n[s * NW + N_HASH] = h[H_NODE_FREE];
    h[H_NODE_FREE] = s;
    const got = this.nodeAlloc();
    if (got !== s) throw new Error(`NodeTable.nodeAllocAt: got slot ${got}, wanted ${s}`);
    this.#n[s * NW + N_GEN] = gen;
    return s;
  }

  /**
   * Frees a node slot (the caller unhashed it, took it off the LRU and closed its fd).
   * Handles still open on it (a client that forgot a node it has open) leave its open
   * list and no longer name it ({@link hNode}).
   */
  nodeFree(s: number): void {
    const n = this.#n;
    const p = s * NW;
    if (!(n[p + N_FLAGS] & NF.USED)) throw new Error(`NodeTable.nodeFree: slot ${s} is free`);
    for (let h = n[p + N_OPEN]; h >= 0;) {
      const next = this.#k[h * KW + K_ONEXT];
      this.#k[h * KW + K_ONEXT] = -1;
      this.#k[h * KW + K_OPREV] = -1;
      h = next;
    }
    n[p + N_OPEN] = -1;
    this.#freeName(s);
    n[p + N_FLAGS] = 0;
    n[p + N_GEN] = (n[p + N_GEN] + 1) % 2 ** 29;
    n[p + N_HASH] = this.#h[H_NODE_FREE];
    this.#h[H_NODE_FREE] = s;
    this.#h[H_NODE_COUNT]--;
  }

  /** The FUSE node id of slot `s`. */
  id(s: number): number {
    return this.#n[s * NW + N_GEN] * SLOT_SPAN + s;
  }

  /** The live slot of node id `id`, or -1 (unknown, freed, or reused since). */
  slotOf(id: number): number {
    if (!Number.isSafeInteger(id) || id <= 0) return -1;
    const s = id % SLOT_SPAN;
    if (s >= this.#h[H_NODE_HW]) return -1;
    const p = s * NW;
    if (!(this.#n[p + N_FLAGS] & NF.USED)) return -1;
    return this.#n[p + N_GEN] === Math.floor(id / SLOT_SPAN) ? s : -1;
  }

  /** Slots of every live node (snapshots, destroy). */
  liveNodes(): number[] {
    const out: number[] = [];
    const hw = this.#h[H_NODE_HW];
    for (let s = 1; s < hw; s++) if (this.#n[s * NW + N_FLAGS] & NF.USED) out.push(s);
    return out;
  }

  flags(s: number): number {
    return this.#n[s * NW + N_FLAGS];
  }
  has(s: number, f: number): boolean {
    return (this.#n[s * NW + N_FLAGS] & f) !== 0;
  }
  set(s: number, f: number, on: boolean): void {
    const p = s * NW + N_FLAGS;
    this.#n[p] = on ? this.#n[p] | f : this.#n[p] & ~f;
  }
  /** The S_IFMT bits of the node's file type (0: not known yet). */
  type(s: number): number {
    return (this.#n[s * NW + N_FLAGS] >>> 16) << 12;
  }
  setType(s: number, ifmt: number): void {
    const p = s * NW + N_FLAGS;
    this.#n[p] = (this.#n[p] & 0xffff) | ((ifmt >>> 12) << 16);
  }
  fd(s: number): number {
    return this.#n[s * NW + N_FD];
  }
  setFd(s: number, fd: number): void {
    this.#n[s * NW + N_FD] = fd;
  }
  lookups(s: number): number {
    return this.#n[s * NW + N_LOOKUPS];
  }
  setLookups(s: number, v: number): void {
    this.#n[s * NW + N_LOOKUPS] = Math.max(0, Math.min(v, 0x7fffffff));
  }
  kids(s: number): number {
    return this.#n[s * NW + N_KIDS];
  }
  addKids(s: number, d: number): void {
    this.#n[s * NW + N_KIDS] += d;
  }
  /** Parent slot, -1 for none. */
  parent(s: number): number {
    return this.#n[s * NW + N_PARENT];
  }
  setParent(s: number, p: number): void {
    this.#n[s * NW + N_PARENT] = p;
  }

  // ---- names -------------------------------------------------------------------

  /** Sets the node's name to `b[0..len)` (at most 4096 bytes). */
  setName(s: number, b: Uint8Array, len: number): void {
    if (len > 16 << (NAME_CLASSES - 1)) throw new FuseError(Errno.ENAMETOOLONG);
    this.#freeName(s);
    const p = s * NW;
    this.#n[p + N_NAME_LEN] = len;
    if (len === 0) return;
    const off = this.#arenaAlloc(len);
    this.#names.set(b.subarray(0, len), off);
    this.#n[p + N_NAME_OFF] = off;
  }

  /** Sets the node's name from a latin1 string (one char per byte). */
  setNameString(s: number, name: string): void {
    const b = new Uint8Array(name.length);
    for (let i = 0; i < name.length; i++) b[i] = name.charCodeAt(i);
    this.setName(s, b, b.length);
  }

  nameLen(s: number): number {
    return this.#n[s * NW + N_NAME_LEN];
  }

  /** Copies the name into `buf` at `at`; returns its length. */
  copyName(s: number, buf: Uint8Array, at: number): number {
    const p = s * NW;
    const len = this.#n[p + N_NAME_LEN];
    if (len > 0) {
      const off = this.#n[p + N_NAME_OFF];
      buf.set(this.#names.subarray(off, off + len), at);
    }
    return len;
  }

  /** Whether the node's name is `b[0..len)`. */
  nameIs(s: number, b: Uint8Array, len: number): boolean {
    const p = s * NW;
    if (this.#n[p + N_NAME_LEN] !== len) return false;
    const off = this.#n[p + N_NAME_OFF];
    const a = this.#names;
    for (let i = 0; i < len; i++) if (a[off + i] !== b[i]) return false;
    return true;
  }

  /** The name as a latin1 string (snapshots). */
  nameString(s: number): string {
    const len = this.nameLen(s);
    const b = new Uint8Array(len);
    this.copyName(s, b, 0);
    let out = "";
    for (let i = 0; i < len; i++) out += String.fromCharCode(b[i]);
    return out;
  }

  #arenaAlloc(len: number): number {
    let c = 0;
    while (16 << c < len) c++;
    const h = this.#h;
    const head = h[H_ARENA_FREE + c];
    if (head >= 0) {
      h[H_ARENA_FREE + c] = this.#namesI32[head >> 2];
      return head;
    }
    const size = 16 << c;
    const off = h[H_ARENA_HW];
    if (off + size > this.#names.length) this.#grow(this.buffers.names, ARENA_BYTES_MAX);
    h[H_ARENA_HW] = off + size;
    return off;
  }

  #freeName(s: number): void {
    const p = s * NW;
    const len = this.#n[p + N_NAME_LEN];
    const off = this.#n[p + N_NAME_OFF];
    this.#n[p + N_NAME_LEN] = 0;
    this.#n[p + N_NAME_OFF] = -1;
    if (len === 0 || off < 0) return;
    let c = 0;
    while (16 << c < len) c++;
    this.#namesI32[off >> 2] = this.#h[H_ARENA_FREE + c];
    this.#h[H_ARENA_FREE + c] = off;
  }

  // ---- devs and keys ------------------------------------------------------------

  /** The shared index of dev `maj:min` (assigned in first-seen order). */
  devIndex(maj: number, min: number): number {
    const dev = maj * 0x100000 + min;
    const hit = this.#devCache.get(dev);
    if (hit !== undefined) return hit;
    const d = this.#d;
    const count = this.#h[H_DEVS];
    for (let i = 0; i < count; i++) {
      if (d[2 * i] === maj && d[2 * i + 1] === min) {
        this.#devCache.set(dev, i);
        return i;
      }
    }
    if (count >= DEV_MAX) throw new FuseError(Errno.ENFILE, "too many devices");
    d[2 * count] = maj;
    d[2 * count + 1] = min;
    this.#h[H_DEVS] = count + 1;
    this.#devCache.set(dev, count);
    return count;
  }

  /** `[maj, min]` of dev index `i`. */
  dev(i: number): [number, number] {
    return [this.#d[2 * i], this.#d[2 * i + 1]];
  }

  devOf(s: number): number {
    return this.#n[s * NW + N_DEV];
  }
  inoLo(s: number): number {
    return this.#n[s * NW + N_INO_LO] >>> 0;
  }
  inoHi(s: number): number {
    return this.#n[s * NW + N_INO_HI] >>> 0;
  }
  /** Whether the node is the inode (dev index, ino lo, ino hi). */
  isKey(s: number, dev: number, lo: number, hi: number): boolean {
    const p = s * NW;
    return this.#n[p + N_DEV] === dev && this.#n[p + N_INO_LO] === (lo | 0) &&
      this.#n[p + N_INO_HI] === (hi | 0);
  }
  setKey(s: number, dev: number, lo: number, hi: number): void {
    const p = s * NW;
    this.#n[p + N_DEV] = dev;
    this.#n[p + N_INO_LO] = lo | 0;
    this.#n[p + N_INO_HI] = hi | 0;
  }

  /** The keyed node of inode (dev, lo, hi), or -1. */
  find(dev: number, lo: number, hi: number): number {
    const b = this.#b;
    let s = b[hash(dev, lo, hi) & (this.#h[H_BUCKETS] - 1)];
    while (s >= 0) {
      if (this.isKey(s, dev, lo, hi)) return s;
      s = this.#n[s * NW + N_HASH];
    }
    return -1;
  }

  /** Indexes node `s` by its key (at most one node per key: the caller unkeys the old one). */
  keyIn(s: number): void {
    if (this.has(s, NF.KEYED)) return;
    const h = this.#h;
    if (h[H_NODE_COUNT] > h[H_BUCKETS] && h[H_BUCKETS] * 4 * 2 <= BUCKET_BYTES_MAX) this.#rehash();
    const p = s * NW;
    const i = hash(this.#n[p + N_DEV], this.#n[p + N_INO_LO], this.#n[p + N_INO_HI]) &
      (h[H_BUCKETS] - 1);
    this.#n[p + N_HASH] = this.#b[i];
    this.#b[i] = s;
    this.set(s, NF.KEYED, true);
  }

  /** Removes node `s` from the key index (if it is there). */
  keyOut(s: number): void {
    if (!this.has(s, NF.KEYED)) return;
    const p = s * NW;
    const i = hash(this.#n[p + N_DEV], this.#n[p + N_INO_LO], this.#n[p + N_INO_HI]) &
      (this.#h[H_BUCKETS] - 1);
    let c = this.#b[i];
    if (c === s) {
      this.#b[i] = this.#n[p + N_HASH];
    } else {
      while (c >= 0) {
        const next = this.#n[c * NW + N_HASH];
        if (next === s) {
          this.#n[c * NW + N_HASH] = this.#n[p + N_HASH];
          break;
        }
        c = next;
      }
    }
    this.#n[p + N_HASH] = -1;
    this.set(s, NF.KEYED, false);
  }

  #rehash(): void {
    const keyed = this.liveNodes().filter((s) => this.has(s, NF.KEYED));
    const count = this.#h[H_BUCKETS] * 2;
    if (count > this.#b.length) this.#grow(this.buffers.buckets, BUCKET_BYTES_MAX, count * 4);
    this.#b.fill(-1, 0, count);
    this.#h[H_BUCKETS] = count;
    for (const s of keyed) {
      const p = s * NW;
      const i = hash(this.#n[p + N_DEV], this.#n[p + N_INO_LO], this.#n[p + N_INO_HI]) &
        (count - 1);
      this.#n[p + N_HASH] = this.#b[i];
      this.#b[i] = s;
    }
  }

  // ---- fd LRU --------------------------------------------------------------------

  get lruSize(): number {
    return this.#h[H_LRU_SIZE];
  }

  /** Puts `s` at the most recently used end of the LRU (adding it if absent). */
  lruTouch(s: number): void {
    const h = this.#h;
    if (this.has(s, NF.LRU)) {
      if (h[H_LRU_TAIL] === s) return;
      this.lruOut(s);
    }
    const p = s * NW;
    const tail = h[H_LRU_TAIL];
    this.#n[p + N_LRU_PREV] = tail;
    this.#n[p + N_LRU_NEXT] = -1;
    if (tail >= 0) this.#n[tail * NW + N_LRU_NEXT] = s;
    else h[H_LRU_HEAD] = s;
    h[H_LRU_TAIL] = s;
    h[H_LRU_SIZE]++;
    this.set(s, NF.LRU, true);
  }

  /** Takes `s` off the LRU (if it is on it). */
  lruOut(s: number): void {
    if (!this.has(s, NF.LRU)) return;
    const h = this.#h;
    const p = s * NW;
    const prev = this.#n[p + N_LRU_PREV];
    const next = this.#n[p + N_LRU_NEXT];
    if (prev >= 0) this.#n[prev * NW + N_LRU_NEXT] = next;
    else h[H_LRU_HEAD] = next;
    if (next >= 0) this.#n[next * NW + N_LRU_PREV] = prev;
    else h[H_LRU_TAIL] = prev;
    this.#n[p + N_LRU_PREV] = -1;
    this.#n[p + N_LRU_NEXT] = -1;
    h[H_LRU_SIZE]--;
    this.set(s, NF.LRU, false);
  }

  /** The least recently used node, or -1. */
  lruOldest(): number {
    return this.#h[H_LRU_HEAD];
  }

  // ---- handles -------------------------------------------------------------------

  /** Number of open handles. */
  get handleCount(): number {
    return this.#h[H_HANDLE_COUNT];
  }

  /** A new handle of node `node`; returns its fh. Handles with an fd join the node's open list. */
  hAlloc(dir: boolean, fd: number, node: number, oflags: number): number {
    const h = this.#h;
    let s = h[H_HANDLE_FREE];
    if (s >= 0) {
      h[H_HANDLE_FREE] = this.#k[s * KW + K_ONEXT];
    } else {
      s = h[H_HANDLE_HW];
      if (s >= HANDLE_SLOTS_MAX) throw new FuseError(Errno.ENFILE, "handle table full");
      if ((s + 1) * KW > this.#k.length) this.#grow(this.buffers.handles, HANDLE_BYTES_MAX);
      h[H_HANDLE_HW] = s + 1;
    }
    this.#initHandle(s, dir, fd, node, oflags);
    return this.#k[s * KW + K_GEN] * SLOT_SPAN + s;
  }

  /** Places a handle at the slot of saved fh `fh` (restore); false if taken. */
  hAllocAt(fh: number, dir: boolean, fd: number, node: number, oflags: number): boolean {
    const s = fh % SLOT_SPAN;
    const gen = Math.floor(fh / SLOT_SPAN);
    const h = this.#h;
    if (s === 0 || s >= HANDLE_SLOTS_MAX || gen >= 2 ** 29) return false;
    while (h[H_HANDLE_HW] <= s) {
      const f = h[H_HANDLE_HW];
      if ((f + 1) * KW > this.#k.length) this.#grow(this.buffers.handles, HANDLE_BYTES_MAX);
      h[H_HANDLE_HW] = f + 1;
      this.#k[f * KW + K_FLAGS] = 0;
      this.#k[f * KW + K_ONEXT] = h[H_HANDLE_FREE];
      h[H_HANDLE_FREE] = f;
    }
    if (this.#k[s * KW + K_FLAGS] & KF_USED) return false;
    let prev = -1;
    let f = h[H_HANDLE_FREE];
    while (f >= 0 && f !== s) {
      prev = f;
      f = this.#k[f * KW + K_ONEXT];
    }
    if (f !== s) return false;
    if (prev < 0) h[H_HANDLE_FREE] = this.#k[s * KW + K_ONEXT];
    else this.#k[prev * KW + K_ONEXT] = this.#k[s * KW + K_ONEXT];
    this.#k[s * KW + K_GEN] = gen;
    this.#initHandle(s, dir, fd, node, oflags);
    return true;
  }

  #initHandle(s: number, dir: boolean, fd: number, node: number, oflags: number): void {
    const k = this.#k;
    const p = s * KW;
    const gen = k[p + K_GEN];
    for (let i = p; i < p + KW; i++) k[i] = 0;
    k[p + K_GEN] = gen;
    k[p + K_FLAGS] = KF_USED | (dir ? KF_DIR : 0);
    k[p + K_FD] = fd;
    k[p + K_NODE] = node;
    k[p + K_NODE_GEN] = this.#n[node * NW + N_GEN];
    k[p + K_OFLAGS] = oflags;
    k[p + K_ONEXT] = -1;
    k[p + K_OPREV] = -1;
    k[p + K_POS_OWNER] = -1;
    this.#h[H_HANDLE_COUNT]++;
    if (fd >= 0) {
      // Newest first: the node's most recent handle serves its fd calls.
      const head = this.#n[node * NW + N_OPEN];
      k[p + K_ONEXT] = head;
      if (head >= 0) k[head * KW + K_OPREV] = s;
      this.#n[node * NW + N_OPEN] = s;
    }
  }

  /**
   * The live handle slot of `fh` if it is of the given kind and not being
   * released, else -1.
   */
  hSlot(fh: number, dir: boolean): number {
    if (!Number.isSafeInteger(fh) || fh <= 0) return -1;
    const s = fh % SLOT_SPAN;
    if (s >= this.#h[H_HANDLE_HW]) return -1;
    const p = s * KW;
    const f = this.#k[p + K_FLAGS];
    if ((f & (KF_USED | KF_CLOSING)) !== KF_USED || ((f & KF_DIR) !== 0) !== dir) return -1;
    return this.#k[p + K_GEN] === Math.floor(fh / SLOT_SPAN) ? s : -1;
  }

  /** fh of handle slot `s`. */
  fh(s: number): number {
    return this.#k[s * KW + K_GEN] * SLOT_SPAN + s;
  }
  hFd(s: number): number {
    return this.#k[s * KW + K_FD];
  }
  /** The handle's node slot, or -1 if that node was forgotten since (a hostile FORGET). */
  hNode(s: number): number {
    const p = s * KW;
    const n = this.#k[p + K_NODE];
    const q = n * NW;
    return (this.#n[q + N_FLAGS] & NF.USED) && this.#n[q + N_GEN] === this.#k[p + K_NODE_GEN]
      ? n
      : -1;
  }
  /** The id of the node the handle was opened on (still valid or not). */
  hNodeId(s: number): number {
    const p = s * KW;
    return this.#k[p + K_NODE_GEN] * SLOT_SPAN + this.#k[p + K_NODE];
  }
  hFlags(s: number): number {
    return this.#k[s * KW + K_OFLAGS];
  }
  hIsDir(s: number): boolean {
    return (this.#k[s * KW + K_FLAGS] & KF_DIR) !== 0;
  }
  /** The directory offset the next READDIR continues from (see passthrough readdir). */
  hOff(s: number): bigint {
    const p = s * KW;
    return BigInt.asIntN(
      64,
      (BigInt(this.#k[p + K_OFF_HI] >>> 0) << 32n) | BigInt(this.#k[p + K_OFF_LO] >>> 0),
    );
  }
  hSetOff(s: number, off: bigint): void {
    const p = s * KW;
    const u = BigInt.asUintN(64, off);
    this.#k[p + K_OFF_LO] = Number(u & 0xffffffffn) | 0;
    this.#k[p + K_OFF_HI] = Number(u >> 32n) | 0;
  }
  /** Which view last moved the directory fd's position, and its count of moves. */
  hPos(s: number): [number, number] {
    return [this.#k[s * KW + K_POS_OWNER], this.#k[s * KW + K_POS_SEQ]];
  }
  hSetPos(s: number, owner: number, seq: number): void {
    this.#k[s * KW + K_POS_OWNER] = owner;
    this.#k[s * KW + K_POS_SEQ] = seq;
  }

  /** The open handles (with an fd) of node `node`, newest first. */
  openHandles(node: number): number[] {
    const out: number[] = [];
    for (let s = this.#n[node * NW + N_OPEN]; s >= 0; s = this.#k[s * KW + K_ONEXT]) out.push(s);
    return out;
  }

  /** The backing id (FUSE_PASSTHROUGH) the node's open files share, 0 if none. */
  backing(node: number): number {
    return this.#n[node * NW + N_BACKING];
  }
  setBacking(node: number, id: number): void {
    this.#n[node * NW + N_BACKING] = id;
  }

  /** The fd of the node's newest open handle, or -1. */
  openFd(node: number): number {
    const s = this.#n[node * NW + N_OPEN];
    return s >= 0 ? this.#k[s * KW + K_FD] : -1;
  }

  /** The fd of one of the node's file handles opened for writing, or -1. */
  writableFd(node: number): number {
    for (let s = this.#n[node * NW + N_OPEN]; s >= 0; s = this.#k[s * KW + K_ONEXT]) {
      const p = s * KW;
      if (!(this.#k[p + K_FLAGS] & KF_DIR) && (this.#k[p + K_OFLAGS] & 3) !== 0) {
        return this.#k[p + K_FD];
      }
    }
    return -1;
  }

  /** Slots of every live handle. */
  liveHandles(): number[] {
    const out: number[] = [];
    const hw = this.#h[H_HANDLE_HW];
    for (let s = 1; s < hw; s++) if (this.#k[s * KW + K_FLAGS] & KF_USED) out.push(s);
    return out;
  }

  /**
   * Takes a reference on handle `fh` for I/O outside the lock; returns its slot
   * (-1 if unknown or being released). A RELEASE meanwhile only marks the handle;
   * the last {@link hUnref} hands its fd over for closing.
   */
  hRef(fh: number, dir: boolean): number {
    this.lock();
    try {
      const s = this.hSlot(fh, dir);
      if (s >= 0) Atomics.add(this.#k, s * KW + K_REFS, 1);
      return s;
    } finally {
      this.unlock();
    }
  }

  /**
   * Drops a reference taken by {@link hRef}; returns the fd the caller must close
   * (the handle was released meanwhile and this was the last reference), or -1.
   */
  hUnref(s: number): number {
    this.lock();
    try {
      const p = s * KW;
      const left = Atomics.sub(this.#k, p + K_REFS, 1) - 1;
      if (left === 0 && (this.#k[p + K_FLAGS] & KF_CLOSING)) return this.#hFree(s);
      return -1;
    } finally {
      this.unlock();
    }
  }

  /**
   * Releases handle slot `s`: unlinks it from its node's open list now (node
   * operations no longer use its fd) and returns the fd the caller must close, or
   * -1 when I/O still holds a reference (the last {@link hUnref} returns it).
   */
  hRelease(s: number): number {
    const p = s * KW;
    this.#unlinkOpen(s);
    this.#k[p + K_FLAGS] |= KF_CLOSING;
    if (Atomics.load(this.#k, p + K_REFS) > 0) return -1;
    return this.#hFree(s);
  }

  #unlinkOpen(s: number): void {
    const k = this.#k;
    const p = s * KW;
    if (k[p + K_FD] < 0) return;
    const prev = k[p + K_OPREV];
    const next = k[p + K_ONEXT];
    const node = this.hNode(s);
    if (prev >= 0) k[prev * KW + K_ONEXT] = next;
    else if (node >= 0 && this.#n[node * NW + N_OPEN] === s) this.#n[node * NW + N_OPEN] = next;
    if (next >= 0) k[next * KW + K_OPREV] = prev;
    k[p + K_OPREV] = -1;
    k[p + K_ONEXT] = -1;
  }

  #hFree(s: number): number {
    const k = this.#k;
    const p = s * KW;
    const fd = k[p + K_FD];
    k[p + K_FLAGS] = 0;
    k[p + K_FD] = -1;
    k[p + K_GEN] = (k[p + K_GEN] + 1) % 2 ** 29;
    k[p + K_ONEXT] = this.#h[H_HANDLE_FREE];
    this.#h[H_HANDLE_FREE] = s;
    this.#h[H_HANDLE_COUNT]--;
    return fd;
  }

  // ---- growth ------------------------------------------------------------------

  #grow(buf: SharedArrayBuffer, max: number, atLeast = 0): void {
    const next = Math.min(max, Math.max(buf.byteLength * 2, atLeast));
    if (next <= buf.byteLength) throw new FuseError(Errno.ENFILE, "node table cannot grow");
    buf.grow(next);
    Atomics.add(this.#h, H_EPOCH, 1);
    this.#views();
  }
}
