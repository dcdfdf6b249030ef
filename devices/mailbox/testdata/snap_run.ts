// Test helper run as its own process by mailbox_snapshot_test.ts:
//   capture SNAPDIR OUT.json   boot the mailbox guest, capture at READY, then serve a payload
//   restore SNAPDIR OUT.json   restore in this fresh process and serve payloads
import { RegionMemory } from "../../../hv/memory.ts";
import { Vm } from "../../../hv/vm.ts";
import { captureHvVm, restoreHvVm } from "../../../snapshot/hv_snapshot.ts";
import { compilePayload, PAYLOAD_ARG } from "../../../init/codegen/mod.ts";
import { exit, seq, v } from "../../../init/ir/mod.ts";
import { debugExitSpec } from "../../legacy/debug_exit.ts";
import { Mailbox } from "../mailbox.ts";
import { mailboxTestGuest } from "./guest.ts";

/** Bounds that only catch a hang (the test kills this process later still). */
const DEADLINE = { timeoutMs: 180_000 };

function triple(): Uint8Array {
  const t = v("t");
  return compilePayload({
    body: seq(
      { op: "arith", kind: "mul", dst: t, a: PAYLOAD_ARG, b: 3 },
      { op: "arith", kind: "add", dst: t, a: t, b: 1 },
      exit(t),
    ),
  }).bytes;
}

async function serve(vm: Vm, mb: Mailbox, args: bigint[]) {
  const stopped = vm.wait();
  mb.failWhen(stopped);
  const t0 = performance.now();
  await mb.ready(DEADLINE);
  const readyMs = performance.now() - t0;
  const results = [];
  for (const a of args) results.push((await mb.runPayload(triple(), a, DEADLINE)).toString());
  const doneSeq = mb.registers.doneSeq;
  await mb.shutdown(DEADLINE);
  const stop = await stopped;
  return { results, doneSeq, stop: [stop.kind, stop.code], readyMs };
}

const [mode, dir, out] = Deno.args;
let result: unknown;
const watchdog = setTimeout(() => {
  console.error("snap_run: no end after 4 minutes");
  Deno.exit(3);
}, 240_000);
if (mode === "capture") {
  const { guest, mailbox } = mailboxTestGuest(10);
  try {
    await guest.vm.start();
    await mailbox.ready(DEADLINE);
    mailbox.wake(); // release the guest's blocked wait read so the pause is immediate
    await guest.vm.pause();
    const published = await captureHvVm(guest.vm, dir, {
      devices: new Map([["mailbox", mailbox]]),
      source: { test: "mailbox" },
    });
    guest.vm.resume();
    result = { published, ...(await serve(guest.vm, mailbox, [5n])) };
  } finally {
    await guest[Symbol.asyncDispose]();
    mailbox[Symbol.dispose]();
  }
} else if (mode === "restore") {
  let mailbox: Mailbox | null = null;
  const r = await restoreHvVm(dir, ({ memory }) => {
    const vm = Vm.create({ memory, irqchip: true });
    vm.addDevice(debugExitSpec());
    mailbox = new Mailbox({ dataSize: 1 << 20, waitMs: 10 });
    mailbox.attach(vm, memory);
    vm.createVcpu();
    return { vm, devices: new Map([["mailbox", mailbox]]) };
  });
  const mb = mailbox! as Mailbox;
  try {
    const restoredState = mb.registers.state;
    await r.vm.start();
    result = { restoredState, ...(await serve(r.vm, mb, [7n, 11n])) };
  } finally {
    await r.vm.close();
    (r.memory as RegionMemory)[Symbol.dispose]();
    mb[Symbol.dispose]();
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}
clearTimeout(watchdog);
Deno.writeTextFileSync(out, JSON.stringify(result));
