import { strictEqual } from "node:assert/strict";
import { I8042, I8042_STATUS, I8042Registers } from "./i8042.ts";

Deno.test("i8042: 0xFE on the command port requests a reset", () => {
  let resets = 0;
  const r = new I8042Registers(I8042Registers.newState(), () => resets++);
  r.write(I8042.COMMAND, 0xaa);
  strictEqual(resets, 0);
  r.write(I8042.COMMAND, 0xfe);
  strictEqual(resets, 1);
  r.write(I8042.DATA, 0xfe); // the same byte on the data port is a keyboard byte, not a reset
  strictEqual(resets, 1);
});

Deno.test("i8042: self-test, CTR read/write, keyboard ACK, output-buffer status and IRQ", () => {
  let kbdIrqs = 0;
  const r = new I8042Registers(I8042Registers.newState(), () => {}, () => kbdIrqs++);
  strictEqual(r.read(I8042.COMMAND) & I8042_STATUS.OBF, 0);
  r.write(I8042.COMMAND, 0xaa);
  strictEqual(r.read(I8042.COMMAND) & I8042_STATUS.OBF, I8042_STATUS.OBF);
  strictEqual(r.read(I8042.DATA), 0x55);
  strictEqual(r.read(I8042.COMMAND) & I8042_STATUS.OBF, 0);
  r.write(I8042.COMMAND, 0x60);
  r.write(I8042.DATA, 0x00); // CTR: interrupts off
  r.write(I8042.COMMAND, 0x20);
  strictEqual(r.read(I8042.DATA), 0x00);
  const before = kbdIrqs;
  r.write(I8042.DATA, 0xff); // keyboard reset command
  strictEqual(r.read(I8042.DATA), 0xfa);
  strictEqual(kbdIrqs, before); // CTR disabled the keyboard interrupt
  const snap = r.save();
  const r2 = new I8042Registers(I8042Registers.newState(), () => {});
  r2.restore(snap);
  strictEqual(JSON.stringify(r2.save()), JSON.stringify(snap));
});
