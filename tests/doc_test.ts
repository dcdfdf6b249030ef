/**
 * The library's documentation examples, run for real (`deno test --doc`):
 * the README's "Using skiff from Deno" example and the JSDoc examples of
 * mod.ts and hv/library/virtual_machine.ts boot VMs (the qemu engine here).
 */

import { strictEqual } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { hostTest } from "./requirements.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

hostTest(
  "docs: the README's library example and the library's JSDoc examples run as written",
  ["kernel", "qemu"],
  async () => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", "--doc", "README.md", "mod.ts", "hv/library/virtual_machine.ts"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    strictEqual(r.code, 0, out);
  },
);
