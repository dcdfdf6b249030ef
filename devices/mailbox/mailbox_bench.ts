/**
 * Mailbox cost on /dev/kvm with the L1 guest program: the round trip of a
 * small payload (host writes it, posts, the guest copies and calls it, rings
 * done, the host sees the result) and the exits an idle guest costs, for
 * skiff's blocking wait read against the reference of a guest polling the
 * register (device wait bound 0), in one run.
 *
 * Prints:
 * - `mailbox-roundtrip-us blocking=<µs> polling=<µs> ratio=<r>` (median of rounds)
 * - `mailbox-idle-exits-per-s blocking=<n> polling=<n>`
 *
 * @module
 */

import { compilePayload } from "../../init/codegen/mod.ts";
import { exit, seq } from "../../init/ir/mod.ts";
import { mailboxTestGuest } from "./testdata/guest.ts";

const ROUNDS = 5;
const PER_ROUND = 40;
const IDLE_MS = 500;

async function measure(waitMs: number): Promise<{ roundTripUs: number; idleExitsPerS: number }> {
  const { guest, mailbox } = mailboxTestGuest(waitMs);
  const deadline = { timeoutMs: 30_000 };
  try {
    await guest.vm.start();
    await mailbox.ready(deadline);
    const p = compilePayload({ body: seq(exit(1)) }).bytes;
    await mailbox.runPayload(p, 0n, deadline);
    const rounds: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const t = performance.now();
      for (let i = 0; i < PER_ROUND; i++) await mailbox.runPayload(p, 0n, deadline);
      rounds.push((performance.now() - t) * 1000 / PER_ROUND);
    }
    rounds.sort((a, b) => a - b);
    const before = guest.vm.vcpus[0].exitCount;
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const idle = guest.vm.vcpus[0].exitCount - before;
    await mailbox.shutdown(deadline);
    await guest.vm.wait();
    return { roundTripUs: rounds[ROUNDS >> 1], idleExitsPerS: idle * 1000 / IDLE_MS };
  } finally {
    await guest[Symbol.asyncDispose]();
    mailbox[Symbol.dispose]();
  }
}

/** Runs the measurements; returns the output lines. */
export async function bench(): Promise<string[]> {
  const blocking = await measure(10);
  const polling = await measure(0);
  return [
    `mailbox-roundtrip-us blocking=${blocking.roundTripUs.toFixed(1)} polling=${
      polling.roundTripUs.toFixed(1)
    } ratio=${(blocking.roundTripUs / polling.roundTripUs).toFixed(2)}`,
    `mailbox-idle-exits-per-s blocking=${blocking.idleExitsPerS.toFixed(0)} polling=${
      polling.idleExitsPerS.toFixed(0)
    }`,
  ];
}

if (import.meta.main) { for (const line of await bench()) console.log(line); }
