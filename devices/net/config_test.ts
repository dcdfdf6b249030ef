/** L0: the counters' shared-memory layout; the `--publish` lines. */

import { deepStrictEqual } from "node:assert/strict";
import {
  COUNTER_KEYS,
  type NetCounters,
  packCounters,
  parsePublish,
  publishLines,
  zeroCounters,
} from "./config.ts";

Deno.test("config: packCounters writes every counter at its COUNTER_KEYS index", () => {
  const c = zeroCounters();
  COUNTER_KEYS.forEach((k, i) => (c as unknown as Record<string, number>)[k] = 100 + i);
  const out = new Float64Array(COUNTER_KEYS.length + 1).fill(-1);
  packCounters(c as NetCounters, out);
  deepStrictEqual([...out], [...COUNTER_KEYS.map((_, i) => 100 + i), -1]);
});

Deno.test("config: publishLines says the OS-picked port of port-0 rules, every rule when asked", () => {
  const rules = ["0:80", "8080:8080", "0.0.0.0:0:53/udp"].map(parsePublish);
  const ports = [41234, 8080, 40000];
  deepStrictEqual(publishLines(rules, ports, false), [
    "published 127.0.0.1:41234 → guest :80/tcp",
    "published 0.0.0.0:40000 → guest :53/udp",
  ]);
  deepStrictEqual(publishLines(rules, ports, true), [
    "published 127.0.0.1:41234 → guest :80/tcp",
    "published 127.0.0.1:8080 → guest :8080/tcp",
    "published 0.0.0.0:40000 → guest :53/udp",
  ]);
  deepStrictEqual(publishLines([], [], true), []);
});
