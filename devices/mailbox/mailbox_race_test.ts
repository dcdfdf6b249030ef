// L0: the mailbox host side against a racing guest (hostile data region):
// the input the host writes is never read back, and data the host reads is
// copied once into private memory.
import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { HostileMemory } from "../virtio/hostile_memory.ts";
import { Mailbox, MAILBOX_LAYOUT, MB_IMAGE_SIZE, MB_REG, MB_STATE } from "./mod.ts";

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const u64 = (v: bigint) => new Uint8Array(new BigUint64Array([v]).buffer);

Deno.test("mailbox race: command input is written, never read back; readData returns a private copy", async () => {
  const inner = RegionMemory.fromBytes(8192, MAILBOX_LAYOUT.DATA_BASE);
  const mem = new HostileMemory(inner);
  // A register image without a device: the host polls it (as with a natively run init).
  using mb = new Mailbox({ dataSize: 8192, registers: new Uint8Array(MB_IMAGE_SIZE), pollMs: 1 });
  mb.useMemory(mem);
  mb.registers.write(MB_REG.STATE, u32(MB_STATE.READY));
  const record = new Uint8Array(64).fill(0x5a);
  const result = mb.runCommand(record, { timeoutMs: 10_000 });
  // The simulated init: wait for the command (a condition, not a delay), answer it.
  while (mb.registers.cmdSeq !== 1) await new Promise((r) => setTimeout(r, 0));
  deepStrictEqual(inner.slice(MAILBOX_LAYOUT.DATA_BASE, 64), record);
  // The guest overwrites the input at once; the host must not care.
  inner.write(MAILBOX_LAYOUT.DATA_BASE, new Uint8Array(64));
  mb.registers.write(MB_REG.RESULT, u64(7n));
  mb.registers.write(MB_REG.DONE_SEQ, u32(1));
  strictEqual(await result, 7);
  mem.assertNoReadBack("mailbox host");
  strictEqual(mem.accesses.filter((a) => a.kind !== "write").length, 0, "the host read nothing");

  // Output a payload left in the data region, changed by the guest right after the read.
  inner.write(MAILBOX_LAYOUT.DATA_BASE + 100, new TextEncoder().encode("output"));
  mem.raceAfterFirstRead(MAILBOX_LAYOUT.DATA_BASE + 100, new TextEncoder().encode("XXXXXX"));
  mem.clear();
  const out = mb.readData(100, 6);
  strictEqual(new TextDecoder().decode(out), "output");
  strictEqual(mem.racesFired, 1);
  mem.assertCopiedOnce([{ addr: MAILBOX_LAYOUT.DATA_BASE + 100, length: 6 }], "readData");
  strictEqual(new TextDecoder().decode(out), "output", "the copy does not follow the guest");
});
