// Test helper run as its own process by vm_snapshot_test.ts:
//   full    CPUS ITERATIONS DOORBELL OUT.json           run uninterrupted
//   capture CPUS ITERATIONS DOORBELL SNAPDIR OUT.json   capture at the doorbell, then finish
//   restore SNAPDIR OUT.json                            restore in this fresh process, finish
//   restore-async SNAPDIR OUT.json                      the same through restoreVmAsync
//                                                       (VM and memory slot made while verifying)
//   restore-pooled SNAPDIR PLAN OUT.json                restores with restorePool on, one per
//                                                       character of PLAN (see the mode below)
// OUT.json gets the machine's result (plus, for capture, the result at capture time).
// GUEST_RUN_MIB in the environment sets the guest's memory size (default 4).
import { RegionMemory } from "../../hv/memory.ts";
import { captureVm, type RestoreSteps, restoreVm, restoreVmAsync } from "../vm_snapshot.ts";
import { type PreparedVm, prepareVm, releaseVm, TestMachine } from "./machine.ts";
import { restorePool } from "../restore_pool.ts";
import { MEMORY_FILE, STATE_FILE } from "../format.ts";
import { SnapshotError } from "../errors.ts";

const MEM = Number(Deno.env.get("GUEST_RUN_MIB") ?? 4) << 20;

/** restoreVmAsync's steps for the test machine (the VM and its slots made by `prepareVm`). */
const ASYNC_STEPS: RestoreSteps<TestMachine, PreparedVm> = {
  prepare: prepareVm,
  release: releaseVm,
  build: ({ memory, snapshot }, prepared) =>
    new TestMachine(memory, snapshot.manifest.vcpus.length, true, prepared),
  dispose: (m) => m[Symbol.dispose](),
};
const [mode, ...args] = Deno.args;
let out: Record<string, unknown>;
if (mode === "full" || mode === "capture") {
  const [cpus, iterations, doorbell] = args.slice(0, 3).map(Number);
  using m = new TestMachine(RegionMemory.memfd([{ guestAddr: 0, size: MEM }]), cpus);
  m.boot(iterations, doorbell);
  let atCapture: Record<string, unknown> | null = null;
  while (m.run() === "doorbell") {
    if (mode === "capture") {
      atCapture = await m.result();
      await captureVm(m, args[3], { test: "guest_run", cpus });
    }
  }
  out = { ...(await m.result()), atCapture };
} else if (mode === "restore") {
  const m = restoreVm(
    args[0],
    ({ memory, snapshot }) => new TestMachine(memory, snapshot.manifest.vcpus.length),
    (m) => m[Symbol.dispose](),
  );
  try {
    while (m.run() === "doorbell");
    out = await m.result();
  } finally {
    m[Symbol.dispose]();
  }
} else if (mode === "restore-async") {
  const m = await restoreVmAsync(args[0], ASYNC_STEPS);
  try {
    if (m.memory.regions.some((r) => (r as { viewed?: boolean }).viewed)) {
      throw new Error("the restore made an ArrayBuffer over guest memory");
    }
    while (m.run() === "doorbell");
    out = await m.result();
  } finally {
    m[Symbol.dispose]();
  }
} else if (mode === "restore-pooled") {
  // One restore of SNAPDIR per character of PLAN, with restorePool on, each
  // run to its end and followed by 50 ms (the pool makes the next one):
  //   .  as it is
  //   m  the memory file replaced by a copy first (a new inode): what the pool
  //      mapped ahead must not be used
  //   c  state.json corrupted first (put back after): the restore must fail
  //      as corrupt and leave the pool as it was
  //   x  the memory file moved away first (put back after): the restore must
  //      fail as missing, dropping what the pool had mapped
  const [dir, plan] = args;
  const results: unknown[] = [];
  const taken: number[] = [];
  const mem = `${dir}/${MEMORY_FILE}`, state = `${dir}/${STATE_FILE}`;
  const good = Deno.readTextFileSync(state);
  restorePool.keepReady(true);
  try {
    for (const step of plan) {
      if (step === "m") {
        Deno.copyFileSync(mem, `${mem}.new`);
        Deno.renameSync(`${mem}.new`, mem);
      }
      if (step === "c") Deno.writeTextFileSync(state, good.replace(/"\$b64": "A/, '"$b64": "B'));
      if (step === "x") Deno.renameSync(mem, `${mem}.away`);
      const before = restorePool.taken;
      try {
        const m = await restoreVmAsync(dir, ASYNC_STEPS);
        try {
          while (m.run() === "doorbell");
          results.push(await m.result());
        } finally {
          m[Symbol.dispose]();
        }
      } catch (e) {
        if (!(e instanceof SnapshotError)) throw e;
        results.push({ error: e.problem });
      } finally {
        taken.push(restorePool.taken - before);
        if (step === "c") Deno.writeTextFileSync(state, good);
        if (step === "x") Deno.renameSync(`${mem}.away`, mem);
      }
      // The VM "ran": the pool's next one, due at once, starts before this wait ends.
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await restorePool.drain();
  }
  out = { results, taken, made: restorePool.made, kept: restorePool.size };
} else {
  throw new Error(`unknown mode ${mode}`);
}
Deno.writeTextFileSync(Deno.args[Deno.args.length - 1], JSON.stringify(out));
