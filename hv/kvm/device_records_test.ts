/** L0: checking a device record of a snapshot (the constructing part runs at L1 in snapshot_test.ts). */

import { deepStrictEqual, throws } from "node:assert/strict";
import { StateError } from "../state.ts";
import { parseDeviceRecord } from "./device_records.ts";

const rec = {
  kind: "virtio-console",
  args: { ports: ["skiff.stdin"] },
  placement: { mmio: [{ base: 0xc000_0000, length: 0x1000 }], gsi: 5 },
  transport: { status: 0 },
  state: { ready: false },
};

Deno.test("device records: kind, arguments and placement are checked, with the field named", () => {
  deepStrictEqual(parseDeviceRecord(rec), {
    ...rec,
    placement: { ...rec.placement, ports: undefined },
  });
  throws(
    () => parseDeviceRecord({ ...rec, kind: "virtio-gpu" }),
    (e) => e instanceof StateError && e.path === "$.kind" && /unknown device kind/.test(e.message),
  );
  throws(
    () => parseDeviceRecord({ ...rec, placement: { mmio: [{ base: -1, length: 1 }] } }),
    (e) => e instanceof StateError && e.path === "$.placement.mmio[0].base",
  );
  throws(
    () => parseDeviceRecord({ ...rec, placement: { gsi: 99 } }),
    (e) => e instanceof StateError && e.path === "$.placement.gsi",
  );
  throws(
    () => parseDeviceRecord({ ...rec, args: [] }),
    (e) => e instanceof StateError && e.path === "$.args",
  );
});
