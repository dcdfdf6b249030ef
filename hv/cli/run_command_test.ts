import { deepStrictEqual } from "node:assert/strict";
import { ignoredSignals } from "./run_command.ts";

Deno.test("ignoredSignals: SigIgn's bits are signal numbers (nohup's SIGHUP, a background job's SIGINT/SIGQUIT)", () => {
  const status = (mask: string) =>
    `Name:\tdeno\nSigBlk:\t0000000000000000\nSigIgn:\t${mask}\nSigCgt:\t0\n`;
  deepStrictEqual([...ignoredSignals(status("0000000000000000"))], []);
  deepStrictEqual([...ignoredSignals(status("0000000000000001"))], [1]); // nohup
  deepStrictEqual([...ignoredSignals(status("0000000000000006"))].sort(), [2, 3]); // & in sh
  deepStrictEqual([...ignoredSignals(status("8000000000000000"))], [64]);
  deepStrictEqual([...ignoredSignals("no such field")], []);
});
