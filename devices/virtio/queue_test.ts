import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { ChainBoundsError, ChainReader, ChainWriter } from "./chain.ts";
import { MockQueueDriver } from "./mock_driver.ts";
import {
  Queue,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtqueueError,
  type VirtqueueErrorKind,
  vringNeedEvent,
} from "./queue.ts";

const MEM = 1 << 20;
const te = new TextEncoder();
const td = new TextDecoder();

function setup(size = 16, guestAddr = 0) {
  const mem = RegionMemory.fromBytes(MEM, guestAddr);
  const drv = new MockQueueDriver(mem, size, guestAddr + 0x1000, guestAddr + 0x10000, 0x40000);
  const q = new Queue(size);
  q.descTable = drv.rings.desc;
  q.availRing = drv.rings.avail;
  q.usedRing = drv.rings.used;
  q.ready = true;
  return { mem, drv, q };
}

function kindOf(fn: () => unknown): VirtqueueErrorKind {
  try {
    fn();
  } catch (e) {
    if (e instanceof VirtqueueError) return e.kind;
    throw e;
  }
  throw new Error("expected a VirtqueueError");
}

Deno.test("queue: pops a direct chain, gathers readable and scatters writable bytes", () => {
  const { mem, drv, q } = setup();
  const head = drv.add([
    { data: te.encode("hello ") },
    { data: te.encode("world") },
    { writable: 4 },
    { writable: 8 },
  ]);
  strictEqual(q.pending(mem), 1);
  const c = q.pop(mem)!;
  strictEqual(c.head, head);
  strictEqual(c.readable.length, 2);
  strictEqual(c.writable.length, 2);
  strictEqual(c.readableLength, 11);
  strictEqual(c.writableLength, 12);
  const r = new ChainReader(mem, c);
  strictEqual(td.decode(r.readExact(3)), "hel");
  strictEqual(td.decode(r.readAll()), "lo world");
  strictEqual(r.remaining, 0);
  throws(() => r.readExact(1), ChainBoundsError);
  const w = new ChainWriter(mem, c);
  w.write(te.encode("0123456789"));
  throws(() => w.write(te.encode("abc")), ChainBoundsError);
  strictEqual(w.written, 10);
  q.addUsed(mem, c.head, w.written);
  strictEqual(q.pop(mem), null);
  const used = drv.takeUsed();
  strictEqual(used.length, 1);
  strictEqual(used[0].head, head);
  strictEqual(td.decode(used[0].written), "0123456789");
});

Deno.test("queue: indirect chains are walked and validated", () => {
  const { mem, drv, q } = setup();
  drv.add([{ data: te.encode("abc") }, { data: te.encode("def") }, { writable: 5 }], {
    indirect: true,
  });
  const c = q.pop(mem)!;
  strictEqual(td.decode(new ChainReader(mem, c).readAll()), "abcdef");
  strictEqual(c.writableLength, 5);
  const w = new ChainWriter(mem, c);
  strictEqual(w.writeSome(te.encode("xyz123")), 5);
  q.addUsed(mem, c.head, w.written);
  strictEqual(td.decode(drv.takeUsed()[0].written), "xyz12");
});

Deno.test("queue: 16-bit index wrap-around over many chains", () => {
  const { mem, drv, q } = setup(8);
  drv.setStartIndex(0xfffa);
  q.setPositions(0xfffa);
  let sent = 0;
  for (let round = 0; round < 40; round++) {
    drv.add([{ data: new Uint8Array([round]) }, { writable: 1 }]);
    drv.add([{ data: new Uint8Array([round + 100]) }], { indirect: round % 2 === 0 });
    for (let c = q.pop(mem); c; c = q.pop(mem)) {
      const b = new ChainReader(mem, c).readAll();
      const w = new ChainWriter(mem, c);
      w.writeSome(b);
      q.addUsed(mem, c.head, w.written);
      sent++;
    }
    const used = drv.takeUsed();
    strictEqual(used.length, 2);
    deepStrictEqual([...used[0].written], [round]);
  }
  strictEqual(sent, 80);
  strictEqual(q.nextAvail, (0xfffa + 80) & 0xffff);
  strictEqual(q.nextUsed, (0xfffa + 80) & 0xffff);
});

Deno.test("queue: notification suppression via flags (no EVENT_IDX)", () => {
  const { mem, drv, q } = setup();
  drv.add([{ writable: 1 }]);
  const c = q.pop(mem)!;
  q.addUsed(mem, c.head, 0);
  ok(q.needsNotification(mem));
  drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  drv.add([{ writable: 1 }]);
  q.addUsed(mem, q.pop(mem)!.head, 0);
  ok(!q.needsNotification(mem));
  // Device-side: ask the driver not to notify, then re-enable.
  strictEqual(q.setNotification(mem, false), false);
  strictEqual(drv.usedFlags & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
  drv.add([{ writable: 1 }]);
  // Re-enabling reports the chain the driver added meanwhile.
  strictEqual(q.setNotification(mem, true), true);
  strictEqual(drv.usedFlags & VIRTQ_USED_F_NO_NOTIFY, 0);
});

Deno.test("queue: EVENT_IDX used_event and avail_event (§2.7.10)", () => {
  const { mem, drv, q } = setup();
  q.eventIdx = true;
  const serve = () => {
    for (let c = q.pop(mem); c; c = q.pop(mem)) q.addUsed(mem, c.head, 0);
  };
  drv.add([{ writable: 1 }]);
  serve();
  ok(q.needsNotification(mem), "first notification always goes out");
  // Driver wants an interrupt only once used idx passes 3 (i.e. after entry 3 is used).
  drv.setUsedEvent(3);
  drv.add([{ writable: 1 }]);
  serve(); // used idx now 2
  ok(!q.needsNotification(mem));
  drv.add([{ writable: 1 }]);
  serve(); // 3
  ok(!q.needsNotification(mem));
  drv.add([{ writable: 1 }]);
  serve(); // 4: crossed used_event 3
  ok(q.needsNotification(mem));
  drv.add([{ writable: 1 }]);
  serve(); // 5
  ok(!q.needsNotification(mem), "used_event is still 3 — already signalled");
  // avail_event written on enable = next index the device will read.
  q.setNotification(mem, true);
  strictEqual(drv.availEvent, q.nextAvail);
  // vring_need_event across the 16-bit wrap.
  ok(vringNeedEvent(0xffff, 0x0001, 0xfffe));
  ok(!vringNeedEvent(0x0001, 0x0001, 0xfffe));
});

Deno.test("queue: rejects loops, bad indices, out-of-memory buffers and bad indirect tables", () => {
  const cases: [string, VirtqueueErrorKind, (s: ReturnType<typeof setup>) => void][] = [
    ["self loop", "chain-too-long", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x20000, 4, VIRTQ_DESC_F_NEXT, 0);
      drv.pushAvail(0);
    }],
    ["two-cycle", "chain-too-long", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x20000, 4, VIRTQ_DESC_F_NEXT, 1);
      drv.writeDesc(drv.rings.desc, 1, 0x20000, 4, VIRTQ_DESC_F_NEXT, 0);
      drv.pushAvail(0);
    }],
    ["next out of range", "bad-descriptor-index", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x20000, 4, VIRTQ_DESC_F_NEXT, 16);
      drv.pushAvail(0);
    }],
    ["head out of range", "bad-descriptor-index", ({ drv }) => drv.pushAvail(99)],
    ["buffer beyond memory", "buffer-out-of-memory", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, MEM - 2, 4, 0, 0);
      drv.pushAvail(0);
    }],
    ["huge address", "buffer-out-of-memory", ({ drv, mem }) => {
      drv.writeDesc(drv.rings.desc, 0, 0, 4, 0, 0);
      mem.writeU64(drv.rings.desc, 0xffff_ffff_ffff_fff0n);
      drv.pushAvail(0);
    }],
    ["readable after writable", "readable-after-writable", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x20000, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
      drv.writeDesc(drv.rings.desc, 1, 0x20000, 4, 0, 0);
      drv.pushAvail(0);
    }],
    ["indirect + next", "bad-indirect", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x30000, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
      drv.pushAvail(0);
    }],
    ["indirect length not multiple of 16", "bad-indirect", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, 0x30000, 24, VIRTQ_DESC_F_INDIRECT, 0);
      drv.pushAvail(0);
    }],
    ["nested indirect", "bad-indirect", ({ drv }) => {
      drv.writeDesc(0x30000, 0, 0x30000, 16, VIRTQ_DESC_F_INDIRECT, 0);
      drv.writeDesc(drv.rings.desc, 0, 0x30000, 16, VIRTQ_DESC_F_INDIRECT, 0);
      drv.pushAvail(0);
    }],
    ["indirect loop", "chain-too-long", ({ drv }) => {
      drv.writeDesc(0x30000, 0, 0x20000, 4, VIRTQ_DESC_F_NEXT, 1);
      drv.writeDesc(0x30000, 1, 0x20000, 4, VIRTQ_DESC_F_NEXT, 0);
      drv.writeDesc(drv.rings.desc, 0, 0x30000, 32, VIRTQ_DESC_F_INDIRECT, 0);
      drv.pushAvail(0);
    }],
    ["indirect next out of table", "bad-descriptor-index", ({ drv }) => {
      drv.writeDesc(0x30000, 0, 0x20000, 4, VIRTQ_DESC_F_NEXT, 2);
      drv.writeDesc(drv.rings.desc, 0, 0x30000, 32, VIRTQ_DESC_F_INDIRECT, 0);
      drv.pushAvail(0);
    }],
    ["indirect table beyond memory", "buffer-out-of-memory", ({ drv }) => {
      drv.writeDesc(drv.rings.desc, 0, MEM - 16, 64, VIRTQ_DESC_F_INDIRECT, 0);
      drv.pushAvail(0);
    }],
    ["avail index too far ahead", "bad-avail-index", ({ mem, drv }) => {
      mem.writeU16(drv.rings.avail + 2, 17);
    }],
    ["ring outside memory", "ring-out-of-memory", ({ q }) => {
      q.usedRing = MEM - 8;
    }],
    ["ring misaligned", "ring-out-of-memory", ({ q }) => {
      q.descTable += 8;
    }],
  ];
  for (const [name, kind, arrange] of cases) {
    const s = setup();
    arrange(s);
    strictEqual(kindOf(() => s.q.pop(s.mem)), kind, name);
  }
});

Deno.test("queue: not ready or bad size is a typed error; reset clears positions", () => {
  const { mem, q } = setup();
  q.ready = false;
  strictEqual(kindOf(() => q.pop(mem)), "bad-queue-config");
  q.ready = true;
  q.size = 12;
  strictEqual(kindOf(() => q.pop(mem)), "ring-out-of-memory");
  q.size = 16;
  q.setPositions(5);
  q.reset();
  strictEqual(q.nextAvail, 0);
  strictEqual(q.ready, false);
  throws(() => new Queue(3), RangeError);
});

Deno.test("queue: save/restore keeps positions and continues", () => {
  const { mem, drv, q } = setup();
  drv.add([{ data: te.encode("a") }]);
  drv.add([{ data: te.encode("b") }]);
  const c = q.pop(mem)!;
  q.addUsed(mem, c.head, 0);
  const state = JSON.parse(JSON.stringify(q.save()));
  const q2 = new Queue(16);
  q2.restore(state);
  deepStrictEqual(q2.save(), q.save());
  const c2 = q2.pop(mem)!;
  strictEqual(td.decode(new ChainReader(mem, c2).readAll()), "b");
  throws(() => new Queue(32).restore(state), RangeError);
});

Deno.test("queue: works with memory that does not start at 0", () => {
  const { mem, drv, q } = setup(4, 0x1_0000_0000);
  drv.add([{ data: te.encode("hi") }, { writable: 2 }], { indirect: true });
  const c = q.pop(mem)!;
  strictEqual(td.decode(new ChainReader(mem, c).readAll()), "hi");
  strictEqual(c.readable[0].addr >= 0x1_0000_0000, true);
});

Deno.test("queue: undoPop gives the chain back", () => {
  const { mem, drv, q } = setup();
  const head = drv.add([{ writable: 2 }]);
  strictEqual(q.pop(mem)!.head, head);
  q.undoPop();
  strictEqual(q.pop(mem)!.head, head);
  strictEqual(q.outstanding, 1);
});
