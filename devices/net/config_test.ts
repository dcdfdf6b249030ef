/** L0: the counters' shared-memory layout; the `--publish` lines. */

import { deepStrictEqual, throws } from "node:assert/strict";
import {
  checkPublishRule,
  COUNTER_KEYS,
  type NetCounters,
  packCounters,
  parsePublish,
  publishLines,
  type PublishRule,
  resolveConfig,
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

Deno.test("config: checkPublishRule takes ports 0/1..65535, tcp or udp, an IPv4 host address", () => {
  deepStrictEqual(checkPublishRule({ hostPort: 0, guestPort: 80 }, "r"), {
    hostIp: "127.0.0.1",
    hostPort: 0,
    guestPort: 80,
    proto: "tcp",
  });
  const udp: PublishRule = { hostIp: "0.0.0.0", hostPort: 65535, guestPort: 65535, proto: "udp" };
  deepStrictEqual(checkPublishRule(udp, "r"), udp);
  const cases: [unknown, string][] = [
    [{ hostPort: -1, guestPort: 80 }, "r: host port -1: expected a whole number from 0 to 65535"],
    [
      { hostPort: 70000, guestPort: 80 },
      "r: host port 70000: expected a whole number from 0 to 65535",
    ],
    [{ guestPort: 80 }, "r: host port undefined: expected a whole number from 0 to 65535"],
    [{ hostPort: 1, guestPort: 0 }, "r: guest port 0: expected a whole number from 1 to 65535"],
    [{ hostPort: 1, guestPort: NaN }, "r: guest port NaN: expected a whole number from 1 to 65535"],
    [{ hostPort: 1, guestPort: 2, proto: "sctp" }, 'r: protocol "sctp": expected "tcp" or "udp"'],
    [{ hostPort: 1, guestPort: 2, hostIp: "::1" }, 'r: host address "::1" is not an IPv4 address'],
    [{ hostPort: 1, guestPort: 2, hostIp: 1 }, "r: host address 1 is not an IPv4 address"],
    [null, "r: expected a rule object, got null"],
  ];
  for (const [rule, message] of cases) {
    throws(() => checkPublishRule(rule as PublishRule, "r"), (e: unknown) => {
      deepStrictEqual((e as Error).message, message);
      return true;
    });
  }
});

Deno.test("config: resolveConfig checks the publish rules, naming the rule", () => {
  const rule = (r: Partial<PublishRule>) => ({ publish: [parsePublish("1:2"), r as PublishRule] });
  throws(
    () => resolveConfig(rule({ hostPort: 1, guestPort: 99999 })),
    /^Error: net: publish\[1\]: guest port 99999: /,
  );
  throws(
    () => resolveConfig(rule({ hostPort: 1, guestPort: 2, proto: "x" as "tcp" })),
    /^Error: net: publish\[1\]: protocol "x"/,
  );
  deepStrictEqual(resolveConfig(rule({ hostPort: 3, guestPort: 4 })).publish[1], {
    hostIp: "127.0.0.1",
    hostPort: 3,
    guestPort: 4,
    proto: "tcp",
  });
});
