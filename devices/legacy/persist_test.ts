/** L0: the legacy devices' saved states round-trip and are checked field by field. */

import { deepStrictEqual, throws } from "node:assert/strict";
import { StateError } from "../../hv/state.ts";
import { I8042, I8042Device, I8042Registers } from "./i8042.ts";
import { parseI8042Snapshot } from "./i8042_persist.ts";
import { Uart, UART_REG, UartRegisters } from "./uart.ts";
import { parseUartSnapshot } from "./uart_persist.ts";

const json = <T>(v: T): unknown => JSON.parse(JSON.stringify(v));

Deno.test("i8042 persist: state round-trips through JSON; a bad field is a StateError naming it", () => {
  const dev = new I8042Device();
  const guest = new I8042Registers(dev.state, () => {});
  guest.write(I8042.COMMAND, 0x60);
  guest.write(I8042.DATA, 0x47); // CTR
  guest.write(I8042.COMMAND, 0xaa); // self-test: 0x55 waits in the output buffer
  const saved = dev.save();
  deepStrictEqual(saved.ctr, 0x47);
  deepStrictEqual(saved.outFull, 1);
  const dev2 = new I8042Device();
  dev2.restore(json(saved));
  deepStrictEqual(dev2.save(), saved);
  deepStrictEqual(parseI8042Snapshot(json(saved)), saved);
  throws(
    () => dev2.restore({ ...saved, ctr: 256 }),
    (e) => e instanceof StateError && e.path === "$.ctr",
  );
  throws(() => dev2.restore(null), (e) => e instanceof StateError && e.path === "$");
  throws(
    () => parseI8042Snapshot({ ...saved, outFull: 2 }),
    (e) => e instanceof StateError && e.path === "$.outFull",
  );
});

Deno.test("uart persist: state round-trips through JSON; a bad field is a StateError naming it", () => {
  const u = new Uart();
  const guest = new UartRegisters(u.state, () => {});
  guest.write(UART_REG.LCR, 0x03);
  guest.write(UART_REG.SCR, 0x5a);
  u.receive(new Uint8Array([1, 2, 3]));
  const saved = u.save();
  const u2 = new Uart();
  u2.restore(json(saved));
  deepStrictEqual(u2.save(), saved);
  deepStrictEqual(parseUartSnapshot(json(saved)), saved);
  throws(
    () => u2.restore({ ...saved, rx: [1, 300] }),
    (e) => e instanceof StateError && e.path === "$.rx[1]",
  );
  throws(
    () => u2.restore({ ...saved, lcr: "3" }),
    (e) => e instanceof StateError && e.path === "$.lcr",
  );
});
