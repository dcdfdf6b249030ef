// L1 on /dev/kvm: the mailbox guest is captured at READY (the snapshot point),
// restored in a NEW process, and served commands there; the mailbox's
// registers travel in the snapshot's device state.
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { readSnapshot } from "../../snapshot/store.ts";
import { SHUTDOWN_CODE } from "./testdata/guest.ts";
import { HANG_MS } from "../../tests/waits.ts";

const HELPER = new URL("./testdata/snap_run.ts", import.meta.url).pathname;

async function helper(...args: string[]): Promise<Record<string, unknown>> {
  const out = `${args[1]}.out.json`;
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HELPER, ...args, out],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => p.kill("SIGKILL"), HANG_MS); // only catches a hang
  const r = await p.output();
  clearTimeout(timer);
  strictEqual(r.code, 0, `snap_run ${args[0]} failed:\n${new TextDecoder().decode(r.stderr)}`);
  return JSON.parse(await Deno.readTextFile(out));
}

hostTest("mailbox guest captured at READY, restored in a new process, serves commands", [
  "kvm",
], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-mbsnap-" });
  try {
    const snap = join(dir, "snap");
    const cap = await helper("capture", snap);
    // The capturing VM carries on: its first command is sequence 1.
    deepStrictEqual(cap.results, ["16"]);
    strictEqual(cap.doneSeq, 1);
    deepStrictEqual(cap.stop, ["poweroff", SHUTDOWN_CODE]);
    const s = readSnapshot(snap, { verifyMemory: true });
    ok(s.manifest.devices.mailbox !== undefined, "mailbox state is in the snapshot");
    // Restored: ready at once (READY was captured), the sequence starts where the snapshot was.
    const res = await helper("restore", snap);
    strictEqual(res.restoredState, 1);
    deepStrictEqual(res.results, ["22", "34"]);
    strictEqual(res.doneSeq, 2);
    deepStrictEqual(res.stop, ["poweroff", SHUTDOWN_CODE]);
    // And again from the same snapshot: unchanged by the first restore.
    deepStrictEqual((await helper("restore", join(dir, "snap"))).results, ["22", "34"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
