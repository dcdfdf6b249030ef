import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { timeline, timelineLine } from "./timeline.ts";

Deno.test("timeline: whole ms since the process started, then the event; silent without a log", () => {
  strictEqual(timelineLine("QMP up", 1234.6), "timeline +1235 ms: QMP up");
  const lines: string[] = [];
  timeline((l) => lines.push(l), "VM stopped");
  deepStrictEqual(lines.length, 1);
  strictEqual(/^timeline \+\d+ ms: VM stopped$/.test(lines[0]), true, lines[0]);
  timeline(undefined, "nobody hears this");
});
