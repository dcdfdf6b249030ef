// L0: the virtqueue and chain code against a racing vCPU (hostile guest
// memory): every ring and descriptor field is read once, and what was
// validated is what is used, whatever the guest writes afterwards.
import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { ChainReader, ChainWriter, RequestBuffer } from "./chain.ts";
import { HostileMemory, type Range } from "./hostile_memory.ts";
import { MockQueueDriver } from "./mock_driver.ts";
import {
  DESC_SIZE,
  Queue,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtqueueError,
} from "./queue.ts";

const te = new TextEncoder();
const td = new TextDecoder();

function setup(size = 16) {
  const inner = RegionMemory.fromBytes(1 << 20);
  const mem = new HostileMemory(inner);
  const drv = new MockQueueDriver(inner, size, 0x1000, 0x10000, 0x40000);
  const q = new Queue(size);
  q.descTable = drv.rings.desc;
  q.availRing = drv.rings.avail;
  q.usedRing = drv.rings.used;
  q.ready = true;
  const polled: Range[] = [{ addr: drv.rings.avail + 2, length: 2 }];
  return { inner, mem, drv, q, polled };
}

function u16(v: number): Uint8Array {
  return new Uint8Array([v & 0xff, v >> 8]);
}
function u32(v: number): Uint8Array {
  return new Uint8Array(new Uint32Array([v]).buffer);
}
function u64(v: bigint): Uint8Array {
  return new Uint8Array(new BigUint64Array([v]).buffer);
}

/** Pops one chain and reads all of it, as a device would; checks the access record. */
function popAndRead(s: ReturnType<typeof setup>) {
  s.mem.clear();
  const c = s.q.pop(s.mem)!;
  ok(c, "a chain is available");
  const bytes = new ChainReader(s.mem, c).readAll();
  s.q.addUsed(s.mem, c.head, 0);
  s.mem.assertNoDoubleReads(s.polled, "pop + read");
  s.mem.assertNoReadBack("pop + read");
  return { c, bytes };
}

Deno.test("queue race: a descriptor length raised after validation is not used", () => {
  const s = setup();
  const head = s.drv.add([{ data: te.encode("exactly this") }, { writable: 8 }]);
  const lenField = s.drv.rings.desc + DESC_SIZE * head + 8;
  s.mem.raceAfterFirstRead(lenField, u32(0x7fff_0000));
  const { c, bytes } = popAndRead(s);
  strictEqual(s.mem.racesFired, 1);
  strictEqual(c.readable[0].len, 12);
  strictEqual(c.readableLength, 12);
  strictEqual(td.decode(bytes), "exactly this");
});

Deno.test("queue race: a descriptor address moved after validation is not used", () => {
  const s = setup();
  const head = s.drv.add([{ data: te.encode("original") }]);
  const addrField = s.drv.rings.desc + DESC_SIZE * head;
  const was = s.inner.readU64(addrField);
  s.mem.raceAfterFirstRead(addrField, u64(0xffff_ffff_0000n));
  const { c, bytes } = popAndRead(s);
  strictEqual(s.mem.racesFired, 1);
  strictEqual(BigInt(c.readable[0].addr), was);
  strictEqual(td.decode(bytes), "original");
});

Deno.test("queue race: flags and next changed after validation do not make a loop or a writable buffer", () => {
  const s = setup();
  const head = s.drv.add([{ data: te.encode("one ") }, { data: te.encode("two") }, {
    writable: 4,
  }]);
  const d = s.drv.rings.desc + DESC_SIZE * head;
  // After the walk read them: point `next` back at the head (a loop) and drop NEXT.
  s.mem.raceAfterFirstRead(d + 14, u16(head));
  s.mem.raceAfterFirstRead(d + 12, u16(0));
  const { c, bytes } = popAndRead(s);
  strictEqual(s.mem.racesFired, 2);
  strictEqual(c.readable.length, 2);
  strictEqual(c.writable.length, 1);
  strictEqual(td.decode(bytes), "one two");
});

Deno.test("queue race: an indirect table entry changed after validation is not used", () => {
  const s = setup();
  const head = s.drv.add([{ data: te.encode("indirect data") }, { writable: 16 }], {
    indirect: true,
  });
  const table = Number(s.inner.readU64(s.drv.rings.desc + DESC_SIZE * head));
  // Entry 0: its length and flags change after they were read.
  s.mem.raceAfterFirstRead(table + 8, u32(0x10_0000));
  s.mem.raceAfterFirstRead(table + 12, u16(VIRTQ_DESC_F_NEXT));
  // The table's own length in the ring descriptor, too.
  s.mem.raceAfterFirstRead(s.drv.rings.desc + DESC_SIZE * head + 8, u32(DESC_SIZE * 1000));
  const { c, bytes } = popAndRead(s);
  strictEqual(s.mem.racesFired, 3);
  deepStrictEqual(c.readable.map((x) => x.len), [13]);
  deepStrictEqual(c.writable.map((x) => x.len), [16]);
  strictEqual(td.decode(bytes), "indirect data");
});

Deno.test("queue race: an available-ring slot changed after it was read does not change the chain", () => {
  const s = setup();
  const head = s.drv.add([{ data: te.encode("first") }]);
  const other = s.drv.add([{ data: te.encode("second") }], { publish: false });
  const slot = s.drv.rings.avail + 4; // first slot (avail idx starts at 0)
  s.mem.raceAfterFirstRead(slot, u16(other));
  const { c, bytes } = popAndRead(s);
  strictEqual(s.mem.racesFired, 1);
  strictEqual(c.head, head);
  strictEqual(td.decode(bytes), "first");
  strictEqual(s.inner.readU32(s.drv.rings.used + 4), head, "the used entry names the popped head");
});

Deno.test("queue race: a bad available index is reported with the value that was checked", () => {
  const s = setup();
  s.drv.add([{ data: te.encode("x") }], { publish: false });
  s.inner.writeU16(s.drv.rings.avail + 2, 500);
  // Right after the device read 500, the guest puts a plausible value back.
  s.mem.raceAfterFirstRead(s.drv.rings.avail + 2, u16(1));
  throws(
    () => s.q.pop(s.mem),
    (e: unknown) =>
      e instanceof VirtqueueError && e.kind === "bad-avail-index" &&
      /available index 500 /.test(e.message),
  );
  strictEqual(s.mem.readCounts({ addr: s.drv.rings.avail + 2, length: 2 }).join(), "1,1");
});

Deno.test("queue race: notification suppression writes used->flags without reading them back", () => {
  const s = setup();
  const flags = { addr: s.drv.rings.used, length: 2 };
  s.inner.writeU16(flags.addr, 0xfff0); // guest scribbles over the device's field
  s.mem.clear();
  s.q.setNotification(s.mem, false);
  strictEqual(s.inner.readU16(flags.addr), VIRTQ_USED_F_NO_NOTIFY);
  s.q.setNotification(s.mem, true);
  strictEqual(s.inner.readU16(flags.addr), 0);
  deepStrictEqual(s.mem.readCounts(flags), [0, 0]);
  deepStrictEqual(s.mem.viewsOf(flags), []);
});

Deno.test("chain: the reader copies (no views); the writer never reads back", () => {
  const s = setup();
  s.drv.add([{ data: te.encode("abc") }, { data: te.encode("def") }, { writable: 4 }, {
    writable: 4,
  }]);
  s.mem.clear();
  const c = s.q.pop(s.mem)!;
  const readable = c.readable.map((r) => ({ addr: r.addr, length: r.len }));
  strictEqual(td.decode(new ChainReader(s.mem, c).readAll()), "abcdef");
  const w = new ChainWriter(s.mem, c);
  w.write(te.encode("ghijklm"));
  s.mem.assertCopiedOnce(readable, "chain");
  s.mem.assertNoReadBack("chain");
  ok(!s.mem.accesses.some((a) => a.kind === "view"), "no views at all");
});

Deno.test("RequestBuffer: one copy per request, reused, bounded by its limit", () => {
  const s = setup();
  const rb = new RequestBuffer(64, 8);
  s.drv.add([{ data: te.encode("0123456789") }, { data: te.encode("abcdef") }]);
  s.drv.add([{ data: new Uint8Array(100).fill(0x41) }]);
  s.mem.clear();
  const c1 = s.q.pop(s.mem)!;
  const readable = c1.readable.map((r) => ({ addr: r.addr, length: r.len }));
  // A racing vCPU rewrites the request right after the copy: the copy stays.
  s.mem.raceAfterFirstRead(readable[0].addr, te.encode("XXXXXXXXXX"));
  const r1 = rb.copy(s.mem, c1);
  strictEqual(td.decode(r1), "0123456789abcdef");
  s.mem.assertCopiedOnce(readable, "request");
  strictEqual(s.mem.racesFired, 1);
  // A chain longer than the limit is cut at the limit (the parser then rejects it).
  const c2 = s.q.pop(s.mem)!;
  const r2 = rb.copy(s.mem, c2);
  strictEqual(r2.length, 64);
  ok(r2.every((b) => b === 0x41));
  throws(() => new RequestBuffer(0), RangeError);
});
