// L1 on /dev/kvm: a guest program speaks the mailbox protocol through the
// real MMIO device in the vCPU Worker: READY, blocking waits, payloads
// compiled by init/codegen run inside the guest, DONE, SHUTDOWN.
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { compilePayload, PAYLOAD_ARG } from "../../init/codegen/mod.ts";
import { exit, seq, v } from "../../init/ir/mod.ts";
import { MB_REG, MB_STATE } from "./mod.ts";
import { mailboxTestGuest, SHUTDOWN_CODE } from "./testdata/guest.ts";
import { HANG_MS } from "../../tests/waits.ts";

/** Bound on each wait, only to catch a hang. */
const DEADLINE = { timeoutMs: HANG_MS };

/** arg * 3 + 1, computed by a codegen payload. */
export function triple(): Uint8Array {
  const t = v("t");
  return compilePayload({
    body: seq(
      { op: "arith", kind: "mul", dst: t, a: PAYLOAD_ARG, b: 3 },
      { op: "arith", kind: "add", dst: t, a: t, b: 1 },
      exit(t),
    ),
  }).bytes;
}

hostTest("mailbox on /dev/kvm: ready, payloads run in the guest, results, shutdown", [
  "kvm",
], async () => {
  const { guest, mailbox } = mailboxTestGuest(10);
  await using _g = guest;
  using mb = mailbox;
  await guest.vm.start();
  const stopped = guest.vm.wait();
  mb.failWhen(stopped);
  const watchdog = setTimeout(() => guest.vm.stop(), HANG_MS + 60_000); // only catches a hang
  try {
    await mb.ready(DEADLINE);
    strictEqual(mb.registers.state, MB_STATE.READY);

    // Idle: the guest's wait read blocks host-side, so it barely exits.
    const vcpu = guest.vm.vcpus[0];
    const before = vcpu.exitCount;
    await new Promise((r) => setTimeout(r, 300));
    const idleExits = vcpu.exitCount - before;
    // A busy machine only lowers the count (each blocked wait lasts at least its 10 ms).
    ok(idleExits < 100, `an idle guest exited ${idleExits} times in 300 ms`);

    strictEqual(await mb.runPayload(triple(), 5n, DEADLINE), 16n);
    strictEqual(
      await mb.runPayload(compilePayload({ body: seq(exit(-7)) }).bytes, 0n, DEADLINE),
      -7n,
    );
    strictEqual(await mb.runPayload(triple(), 1000n, DEADLINE), 3001n);
    strictEqual(await mb.runCommand(new Uint8Array(8), DEADLINE), -22, "this guest has no records");
    strictEqual(mb.registers.u32(MB_REG.DONE_SEQ), 4);
    strictEqual(mb.registers.u32(MB_REG.BAD_WRITES), 0);
    await mb.shutdown(DEADLINE);
    const stop = await stopped;
    deepStrictEqual([stop.kind, stop.code], ["poweroff", SHUTDOWN_CODE]);
  } finally {
    clearTimeout(watchdog);
  }
});
