import { ok, strictEqual } from "node:assert/strict";
import { CommandTimeoutError, SkiffError, VmError, VmTimeoutError } from "./errors.ts";

Deno.test("errors: VmTimeoutError says the VM was stopped; CommandTimeoutError says the command was killed", () => {
  const vmTimeout = new VmTimeoutError(240);
  strictEqual(vmTimeout.message, "timed out after 240 s; the VM was stopped");
  strictEqual(vmTimeout.name, "VmTimeoutError");
  const cause = new DOMException("signal timed out", "TimeoutError");
  const cmd = new CommandTimeoutError(0.2, { cause });
  ok(cmd instanceof VmTimeoutError && cmd instanceof VmError && cmd instanceof SkiffError);
  strictEqual(cmd.message, "the command timed out after 0.2 s and was killed");
  strictEqual(cmd.name, "CommandTimeoutError");
  strictEqual(cmd.seconds, 0.2);
  strictEqual(cmd.cause, cause);
});
