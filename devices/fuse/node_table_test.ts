/**
 * L0 tests of {@link NodeTable}: ids and generations, the (dev, ino) index
 * through rehashes, the LRU, the name arena, handles with deferred close,
 * restore placement, and the lock's mutual exclusion across Workers.
 */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Errno } from "../../kvm_ffi/errno.ts";
import { FuseError } from "./filesystem.ts";
import { NF, NodeTable, SLOT_SPAN } from "./node_table.ts";

const enc = new TextEncoder();

function locked<T>(t: NodeTable, fn: () => T): T {
  t.lock();
  try {
    return fn();
  } finally {
    t.unlock();
  }
}

Deno.test("node table: ids carry a generation; a freed id never names the slot's next node", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const root = t.nodeAlloc();
    strictEqual(root, 1);
    strictEqual(t.id(root), 1, "the first slot is node id 1 (FUSE_ROOT_ID)");
    const a = t.nodeAlloc();
    const idA = t.id(a);
    strictEqual(t.slotOf(idA), a);
    t.nodeFree(a);
    strictEqual(t.slotOf(idA), -1, "a freed id is unknown");
    const b = t.nodeAlloc();
    strictEqual(b, a, "the slot is reused");
    const idB = t.id(b);
    ok(idB !== idA);
    strictEqual(idB % SLOT_SPAN, a);
    strictEqual(t.slotOf(idA), -1, "the old id still does not name the new node");
    strictEqual(t.slotOf(idB), b);
    for (const bad of [0, -1, 1.5, Number.MAX_SAFE_INTEGER, 2 ** 60, NaN]) {
      strictEqual(t.slotOf(bad), -1, String(bad));
    }
    strictEqual(t.nodeCount, 2);
  });
});

Deno.test("node table: the (dev, ino) index finds every keyed node through rehashes", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const d = t.devIndex(8, 1);
    strictEqual(t.devIndex(8, 1), d);
    const d2 = t.devIndex(0, 42);
    ok(d2 !== d);
    deepStrictEqual(t.dev(d2), [0, 42]);
    const slots: number[] = [];
    for (let i = 0; i < 5000; i++) {
      const s = t.nodeAlloc();
      t.setKey(s, i % 2 ? d : d2, i * 7919, i % 3 === 0 ? 0xffffffff : 1);
      t.keyIn(s);
      slots.push(s);
    }
    for (let i = 0; i < 5000; i++) {
      strictEqual(t.find(i % 2 ? d : d2, i * 7919, i % 3 === 0 ? 0xffffffff : 1), slots[i], `${i}`);
    }
    strictEqual(t.find(d, 12345, 99), -1);
    // Unkey every third node: the rest stay findable, the unkeyed are gone.
    for (let i = 0; i < 5000; i += 3) t.keyOut(slots[i]);
    for (let i = 0; i < 5000; i++) {
      const want = i % 3 === 0 ? -1 : slots[i];
      strictEqual(t.find(i % 2 ? d : d2, i * 7919, i % 3 === 0 ? 0xffffffff : 1), want, `${i}`);
    }
    ok(!t.has(slots[0], NF.KEYED));
    ok(t.has(slots[1], NF.KEYED));
  });
});

Deno.test("node table: LRU order, node fields and flags", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const [a, b, c] = [t.nodeAlloc(), t.nodeAlloc(), t.nodeAlloc()];
    strictEqual(t.lruOldest(), -1);
    t.lruTouch(a);
    t.lruTouch(b);
    t.lruTouch(c);
    t.lruTouch(a);
    strictEqual(t.lruSize, 3);
    strictEqual(t.lruOldest(), b);
    t.lruOut(b);
    strictEqual(t.lruOldest(), c);
    t.lruOut(b); // not on it: no change
    strictEqual(t.lruSize, 2);
    t.setType(a, 0o120000);
    t.set(a, NF.DETACHED, true);
    strictEqual(t.type(a), 0o120000);
    ok(t.has(a, NF.DETACHED) && !t.has(a, NF.STALE));
    t.setType(a, 0o040000);
    strictEqual(t.type(a), 0o040000);
    ok(t.has(a, NF.DETACHED), "setting the type keeps the flags");
    t.setLookups(a, -5);
    strictEqual(t.lookups(a), 0, "lookups never go negative");
    t.setLookups(a, 2 ** 40);
    strictEqual(t.lookups(a), 0x7fffffff, "and saturate");
  });
});

Deno.test("node table: names are kept exactly and freed chunks are reused", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const s = t.nodeAlloc();
    const name = enc.encode("a name with bytes \xff\x01");
    t.setName(s, name, name.length);
    ok(t.nameIs(s, name, name.length));
    ok(!t.nameIs(s, name, name.length - 1));
    const out = new Uint8Array(100);
    strictEqual(t.copyName(s, out, 3), name.length);
    deepStrictEqual(out.subarray(3, 3 + name.length), name);
    const long = new Uint8Array(4096).fill(0x61);
    t.setName(s, long, long.length);
    strictEqual(t.nameLen(s), 4096);
    throws(() => t.setName(s, new Uint8Array(4097), 4097), FuseError);
    // Renaming back and forth many times must not grow the arena without bound:
    // each set frees the previous chunk and takes one of the same class.
    const before = t.buffers.names.byteLength;
    for (let i = 0; i < 20000; i++) {
      const n = enc.encode(`name-${i}`);
      t.setName(s, n, n.length);
    }
    strictEqual(t.buffers.names.byteLength, before);
    strictEqual(t.nameString(s), "name-19999");
    t.setName(s, name, 0);
    strictEqual(t.nameLen(s), 0);
  });
});

Deno.test("node table: handles — kinds, open lists, and a close deferred past in-flight I/O", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const n = t.nodeAlloc();
    const r = t.hAlloc(false, 10, n, 0); // O_RDONLY
    const w = t.hAlloc(false, 11, n, 1); // O_WRONLY
    const d = t.hAlloc(true, -1, n, 0); // a directory handle without an fd
    strictEqual(t.openFd(n), 11, "the newest handle with an fd first");
    strictEqual(t.writableFd(n), 11);
    strictEqual(t.hSlot(r, false) >= 0, true);
    strictEqual(t.hSlot(r, true), -1, "wrong kind");
    strictEqual(t.hSlot(d, true) >= 0, true);
    strictEqual(t.hSlot(r + SLOT_SPAN, false), -1, "wrong generation");
    strictEqual(t.handleCount, 3);
    // RELEASE of w while a READ holds a reference: the fd is handed over by the last unref.
    const ws = t.hRef(w, false);
    ok(ws >= 0);
    strictEqual(t.hRelease(ws), -1);
    strictEqual(t.hSlot(w, false), -1, "a released handle is gone for new requests");
    strictEqual(t.hRef(w, false), -1);
    strictEqual(t.openFd(n), 10, "and for node operations");
    strictEqual(t.writableFd(n), -1);
    strictEqual(t.hUnref(ws), 11, "the last reference closes");
    strictEqual(t.handleCount, 2);
    strictEqual(t.hRelease(t.hSlot(r, false)), 10);
    strictEqual(t.openFd(n), -1);
    const again = t.hAlloc(false, 12, n, 2);
    ok(again !== w && again !== r, "a reused slot has a new fh");
  });
});

Deno.test("node table: a forgotten node's open handles no longer name it", () => {
  const t = NodeTable.create();
  locked(t, () => {
    const n = t.nodeAlloc();
    const id = t.id(n);
    const fh = t.hAlloc(false, 20, n, 0);
    const s = t.hSlot(fh, false);
    strictEqual(t.hNode(s), n);
    t.nodeFree(n);
    const m = t.nodeAlloc();
    strictEqual(m, n, "the slot is reused");
    strictEqual(t.hNode(s), -1);
    strictEqual(t.hNodeId(s), id, "the handle remembers the id it was opened on");
    strictEqual(t.openFd(m), -1, "the new node does not inherit the handle");
    strictEqual(t.hRelease(s), 20);
  });
});

Deno.test("node table: a full table is ENFILE; restore places ids and refuses collisions", () => {
  const t = NodeTable.create();
  locked(t, () => {
    t.slotLimit = 4;
    t.nodeAlloc();
    t.nodeAlloc();
    t.nodeAlloc();
    try {
      t.nodeAlloc();
      throw new Error("no ENFILE");
    } catch (e) {
      ok(e instanceof FuseError && e.errno === Errno.ENFILE, String(e));
    }
  });
  const u = NodeTable.create();
  locked(u, () => {
    strictEqual(u.nodeAlloc(), 1);
    const s = u.nodeAllocAt(3 * SLOT_SPAN + 700);
    strictEqual(s, 700);
    strictEqual(u.id(s), 3 * SLOT_SPAN + 700);
    strictEqual(u.nodeAllocAt(700), -1, "the slot is taken");
    strictEqual(u.nodeAllocAt(5), 5);
    strictEqual(u.nodeAlloc() < 700, true, "skipped slots are free for new nodes");
    ok(u.hAllocAt(2 * SLOT_SPAN + 9, false, 30, s, 0));
    ok(!u.hAllocAt(9, false, 31, s, 0), "handle slot taken");
    strictEqual(u.hSlot(2 * SLOT_SPAN + 9, false) >= 0, true);
    u.clear(1);
    strictEqual(u.nodeCount, 1, "clear keeps the root");
    strictEqual(u.slotOf(1), 1);
    strictEqual(u.slotOf(3 * SLOT_SPAN + 700), -1);
    strictEqual(u.handleCount, 0);
  });
});

Deno.test("node table: the lock excludes other Workers (no lost updates)", async () => {
  const t = NodeTable.create();
  const counter = locked(t, () => t.nodeAlloc());
  const WORKERS = 4;
  const ROUNDS = 20000;
  const src = `
    import { NodeTable } from "${new URL("./node_table.ts", import.meta.url).href}";
    self.onmessage = (e) => {
      const { buffers, counter, rounds } = e.data;
      const t = NodeTable.attach(buffers);
      for (let i = 0; i < rounds; i++) {
        t.lock();
        // A non-atomic read-modify-write with work in between: only mutual
        // exclusion keeps every increment.
        const v = t.lookups(counter);
        const s = t.nodeAlloc();
        t.setKey(s, 0, i, t.token);
        t.keyIn(s);
        t.keyOut(s);
        t.nodeFree(s);
        t.setLookups(counter, v + 1);
        t.unlock();
      }
      self.postMessage("done");
    };`;
  const url = `data:application/typescript;base64,${btoa(src)}`;
  const workers = Array.from({ length: WORKERS }, () => new Worker(url, { type: "module" }));
  try {
    await Promise.all(workers.map((w) =>
      new Promise<void>((res, rej) => {
        w.onmessage = () => res();
        w.onerror = (e) => {
          e.preventDefault();
          rej(new Error(e.message));
        };
        w.postMessage({ buffers: t.buffers, counter, rounds: ROUNDS });
      })
    ));
  } finally {
    for (const w of workers) w.terminate();
  }
  locked(t, () => {
    strictEqual(t.lookups(counter), WORKERS * ROUNDS);
    strictEqual(t.nodeCount, 1, "every temporary node was freed");
  });
});
