// L0: the mailbox register semantics, save/restore, and the host API driven
// by a simulated guest (the device's write path plus its doorbell messages).
import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import type { DeviceSpec } from "../../hv/device.ts";
import { create, type MailboxMessage } from "./device.ts";
import {
  Mailbox,
  MAILBOX_LAYOUT,
  MAILBOX_MAGIC,
  MailboxRegisters,
  MB_CMD,
  MB_IMAGE_SIZE,
  MB_REG,
  MB_STATE,
} from "./mod.ts";
import { HANG_MS, until } from "../../tests/waits.ts";

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const u64 = (v: bigint) => new Uint8Array(new BigUint64Array([v]).buffer);
const rd = (r: MailboxRegisters, offset: number, len: number) => {
  const b = new Uint8Array(len);
  r.read(offset, b);
  let v = 0n;
  for (let i = len - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  return v;
};

Deno.test("mailbox registers: identification, data region, reads of any width", () => {
  const r = MailboxRegisters.shared();
  r.init(0xd020_0000, 4 << 20);
  strictEqual(rd(r, MB_REG.MAGIC, 4), BigInt(MAILBOX_MAGIC));
  strictEqual(new TextDecoder().decode(r.bytes.subarray(0, 4)), "SKMB");
  strictEqual(rd(r, MB_REG.VERSION, 4), 1n);
  strictEqual(rd(r, MB_REG.DATA_BASE, 8), 0xd020_0000n);
  strictEqual(rd(r, MB_REG.DATA_SIZE, 8), BigInt(4 << 20));
  strictEqual(rd(r, MB_REG.MAGIC + 1, 2), BigInt((MAILBOX_MAGIC >> 8) & 0xffff));
  strictEqual(rd(r, 0x800, 8), 0n, "beyond the image reads zero");
  strictEqual(rd(r, MB_IMAGE_SIZE - 2, 4), 0n);
  throws(() => r.init(0x1001, 4096), /not page-aligned/);
  throws(() => r.init(0, 100), /multiple of 4 KiB/);
});

Deno.test("mailbox registers: guest writes ring doorbells; read-only or bad-width writes are ignored", () => {
  const r = MailboxRegisters.shared();
  r.init(0, 4096);
  deepStrictEqual(r.write(MB_REG.STATE, u32(MB_STATE.READY)), { kind: "state", state: 1 });
  strictEqual(r.state, MB_STATE.READY);
  // The guest cannot forge a command, move the data region or write with the wrong width.
  strictEqual(r.write(MB_REG.CMD_SEQ, u32(5)), null);
  strictEqual(r.write(MB_REG.DATA_BASE, u64(0x1000n)), null);
  strictEqual(r.write(MB_REG.STATE, new Uint8Array([1, 0])), null);
  strictEqual(r.write(MB_REG.DONE_SEQ, u64(1n)), null);
  strictEqual(r.write(0x900, u32(1)), null);
  strictEqual(r.cmdSeq, 0);
  strictEqual(r.dataBase, 0);
  strictEqual(r.u32(MB_REG.BAD_WRITES), 5);

  const seq = r.post(MB_CMD.PAYLOAD, -1n, 100);
  strictEqual(seq, 1);
  ok(r.pending);
  strictEqual(rd(r, MB_REG.CMD_KIND, 4), 1n);
  strictEqual(rd(r, MB_REG.CMD_ARG, 8), 0xffff_ffff_ffff_ffffn);
  strictEqual(rd(r, MB_REG.CMD_LEN, 8), 100n);
  throws(() => r.post(MB_CMD.PAYLOAD, 0n, 0), /still running/);
  // RESULT as two halves, then DONE_SEQ.
  strictEqual(r.write(MB_REG.RESULT, u32(0xffff_fffe)), null);
  strictEqual(r.write(MB_REG.RESULT + 4, u32(0xffff_ffff)), null);
  deepStrictEqual(r.write(MB_REG.DONE_SEQ, u32(1)), { kind: "done", seq: 1, result: -2n });
  ok(!r.pending);
  strictEqual(r.write(MB_REG.RESULT, u64(42n)), null);
  strictEqual(r.result, 42n);
  strictEqual(r.post(MB_CMD.SHUTDOWN, 0n, 0), 2);
});

Deno.test("mailbox registers: the wait blocks only while nothing is pending", () => {
  const r = MailboxRegisters.shared();
  r.init(0, 4096);
  let t = performance.now();
  r.waitForCommand(30);
  ok(performance.now() - t >= 25, "an idle wait lasts its bound");
  r.post(MB_CMD.SHUTDOWN, 0n, 0);
  // With a command pending the wait does not block: it returns long before its bound (a busy
  // machine can delay it, never by a minute).
  t = performance.now();
  r.waitForCommand(60_000);
  ok(performance.now() - t < 60_000, "a pending command returns at once");
});

Deno.test("mailbox registers: save/restore round trip; foreign images rejected", () => {
  const a = MailboxRegisters.shared();
  a.init(0xd020_0000, 8192);
  a.write(MB_REG.STATE, u32(MB_STATE.READY));
  a.post(MB_CMD.COMMAND, 7n, 64);
  a.write(MB_REG.RESULT, u64(3n));
  a.write(MB_REG.DONE_SEQ, u32(1));
  const saved = a.save();
  strictEqual(saved.length, MB_IMAGE_SIZE);
  const b = MailboxRegisters.shared();
  b.restore(saved);
  deepStrictEqual(b.bytes, a.bytes);
  strictEqual(b.doneSeq, 1);
  strictEqual(b.result, 3n);
  strictEqual(b.post(MB_CMD.PAYLOAD, 0n, 1), 2, "the sequence continues after restore");
  throws(() => b.restore(new Uint8Array(10)), /expected 72 bytes/);
  throws(() => b.restore(new Uint8Array(MB_IMAGE_SIZE)), /bad magic 0x0/);
});

/** A fake VM that instantiates the device's Worker factory on this thread. */
function fakeVm() {
  let spec: DeviceSpec | null = null;
  let listener: ((m: unknown, id: number) => void) | null = null;
  const added: RegionMemory[] = [];
  const posted: MailboxMessage[] = [];
  const vm = {
    addDevice(s: DeviceSpec) {
      spec = s;
    },
    addMemory(m: RegionMemory) {
      added.push(m);
    },
    onDeviceMessage(_: string, fn: (m: unknown, id: number) => void) {
      listener = fn;
    },
  };
  const device = () =>
    create(spec!.config, {
      name: spec!.name,
      vcpuId: 0,
      memory: added[0],
      setIrqLine() {},
      post(m) {
        posted.push(m as MailboxMessage);
        queueMicrotask(() => listener!(m, 0));
      },
      requestStop() {},
    });
  return { vm, device, added, posted, spec: () => spec! };
}

Deno.test("Mailbox: attach adds the MMIO page and a data slot; payloads and commands run; results are signed", async () => {
  using mb = new Mailbox({ dataSize: 64 << 10, waitMs: 1 });
  const f = fakeVm();
  mb.attach(f.vm);
  deepStrictEqual(f.spec().mmio, [{ base: MAILBOX_LAYOUT.REGS_BASE, length: 0x1000 }]);
  deepStrictEqual(f.added[0].regions.map((r) => [r.guestAddr, r.size]), [[
    MAILBOX_LAYOUT.DATA_BASE,
    64 << 10,
  ]]);
  const dev = f.device();
  const read = (off: number, len: number) => {
    const b = new Uint8Array(8);
    dev.read(off, b.subarray(0, len), 0);
    return new DataView(b.buffer).getBigUint64(0, true);
  };
  // A simulated init: ready, then serve whatever is posted.
  const served: { kind: bigint; arg: bigint; input: Uint8Array }[] = [];
  let running = true;
  const guest = (async () => {
    dev.write(MB_REG.STATE, u32(MB_STATE.READY), 0);
    let done = 0n;
    while (running) {
      const seq = read(MB_REG.CMD_SEQ, 4); // blocks up to waitMs
      if (seq === done) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      const kind = read(MB_REG.CMD_KIND, 4), arg = read(MB_REG.CMD_ARG, 8);
      const input = f.added[0].slice(MAILBOX_LAYOUT.DATA_BASE, Number(read(MB_REG.CMD_LEN, 8)))
        .slice();
      served.push({ kind, arg, input });
      const result = kind === 1n ? arg + 1n : kind === 2n ? 3n : 0n;
      f.added[0].writeU64(MAILBOX_LAYOUT.DATA_BASE + 1024, 0x5eedn);
      dev.write(MB_REG.RESULT, u64(BigInt.asUintN(64, result)), 0);
      dev.write(MB_REG.DONE_SEQ, u32(Number(seq)), 0);
      done = seq;
      if (kind === 3n) running = false;
    }
  })();
  await mb.ready({ timeoutMs: HANG_MS });
  strictEqual(await mb.runPayload(new Uint8Array([0xc3]), 41n, { timeoutMs: HANG_MS }), 42n);
  strictEqual(await mb.runPayload(new Uint8Array([0x90, 0xc3]), -3n, { timeoutMs: HANG_MS }), -2n);
  strictEqual(await mb.runCommand(new Uint8Array(16).fill(7), { timeoutMs: HANG_MS }), 3);
  deepStrictEqual(mb.readData(1024, 2), new Uint8Array([0xed, 0x5e]));
  await mb.shutdown({ timeoutMs: HANG_MS });
  await guest;
  deepStrictEqual(served.map((s) => [s.kind, s.arg, s.input.length]), [
    [1n, 41n, 1],
    [1n, BigInt.asUintN(64, -3n), 2],
    [2n, 0n, 16],
    [3n, 0n, 0],
  ]);
  deepStrictEqual(served[1].input, new Uint8Array([0x90, 0xc3]));
  deepStrictEqual(f.posted.map((p) => p.kind), ["state", "done", "done", "done", "done"]);
  // Calls are checked before anything is posted.
  await rejects(mb.runPayload(new Uint8Array(0)), /empty payload/);
  await rejects(mb.runPayload(new Uint8Array((64 << 10) + 1)), /outside the 65536-byte region/);
  strictEqual(mb.registers.cmdSeq, 4, "nothing was posted for the bad calls");
});

Deno.test("Mailbox: deadlines, failure and restore", async () => {
  using mb = new Mailbox({ dataSize: 8192, waitMs: 1 });
  const f = fakeVm();
  mb.attach(f.vm);
  await rejects(mb.ready({ timeoutMs: 20 }), /timed out after 20 ms waiting for ready/);
  const ac = new AbortController();
  const p = mb.ready({ signal: ac.signal });
  ac.abort(new Error("stop now"));
  await rejects(p, /stop now/);
  const state = mb.save();

  // A mailbox restored from a "ready" image is ready at once and continues the sequence.
  const other = new Mailbox({ dataSize: 8192 });
  const g = fakeVm();
  other.attach(g.vm);
  const image = MailboxRegisters.shared();
  image.restore(state.registers);
  image.write(MB_REG.STATE, u32(MB_STATE.READY));
  other.restore({ ...state, registers: image.save() });
  await other.ready({ timeoutMs: HANG_MS });
  throws(
    () => other.restore({ ...state, dataSize: 4096 }),
    /data region 0xd0200000\+0x1000 differs/,
  );
  throws(() => other.restore({}), /missing registers/);
  other.fail(new Error("vm stopped"));
  await rejects(other.runPayload(new Uint8Array([0xc3])), /vm stopped/);
  other[Symbol.dispose]();
});

Deno.test("Mailbox: a result already in the registers wins over a later failure", async () => {
  using mb = new Mailbox({ dataSize: 8192 });
  const f = fakeVm();
  mb.attach(f.vm);
  mb.registers.write(MB_REG.STATE, u32(MB_STATE.READY)); // no doorbell message delivered
  const p = mb.shutdown();
  await until(() => mb.registers.cmdSeq === 1, "the shutdown posted");
  mb.registers.write(MB_REG.DONE_SEQ, u32(1)); // the guest acknowledged, then powered off
  mb.fail(new Error("VM stopped"));
  await p;
  await rejects(mb.ready(), /VM stopped/);
});

Deno.test("Mailbox: failWhen ends waits when the VM stops or fails", async () => {
  using a = new Mailbox({ dataSize: 8192 });
  a.attach(fakeVm().vm);
  a.failWhen(Promise.resolve({ kind: "poweroff", code: 3, rip: 1n }));
  await rejects(a.ready(), /the VM stopped \(\{"kind":"poweroff","code":3,"rip":"1"\}\)/);
  using b = new Mailbox({ dataSize: 8192 });
  b.attach(fakeVm().vm);
  const p = b.ready();
  b.failWhen(Promise.reject(new Error("triple fault")));
  await rejects(p, /triple fault/);
});
