/** L0: the counters' shared-memory layout. */

import { deepStrictEqual } from "node:assert/strict";
import { COUNTER_KEYS, type NetCounters, packCounters, zeroCounters } from "./config.ts";

Deno.test("config: packCounters writes every counter at its COUNTER_KEYS index", () => {
  const c = zeroCounters();
  COUNTER_KEYS.forEach((k, i) => (c as unknown as Record<string, number>)[k] = 100 + i);
  const out = new Float64Array(COUNTER_KEYS.length + 1).fill(-1);
  packCounters(c as NetCounters, out);
  deepStrictEqual([...out], [...COUNTER_KEYS.map((_, i) => 100 + i), -1]);
});
