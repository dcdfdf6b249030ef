// Test helper run as its own process by vm_snapshot_test.ts:
//   full    CPUS ITERATIONS DOORBELL OUT.json           run uninterrupted
//   capture CPUS ITERATIONS DOORBELL SNAPDIR OUT.json   capture at the doorbell, then finish
//   restore SNAPDIR OUT.json                            restore in this fresh process, finish
//   restore-async SNAPDIR OUT.json                      the same through restoreVmAsync
//                                                       (VM and memory slot made while verifying)
//   restore-pooled SNAPDIR COUNT [REPLACE_AT] OUT.json  COUNT restores with restorePool on
//                                                       (see the mode below)
// OUT.json gets the machine's result (plus, for capture, the result at capture time).
// GUEST_RUN_MIB in the environment sets the guest's memory size (default 4).
import { RegionMemory } from "../../hv/memory.ts";
import { captureVm, restoreVm, restoreVmAsync } from "../vm_snapshot.ts";
import { prepareVm, releaseVm, TestMachine } from "./machine.ts";
import { restorePool } from "../restore_pool.ts";
import { MEMORY_FILE } from "../format.ts";

const MEM = Number(Deno.env.get("GUEST_RUN_MIB") ?? 4) << 20;
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
  const m = await restoreVmAsync(args[0], {
    prepare: prepareVm,
    release: releaseVm,
    build: ({ memory, snapshot }, prepared) =>
      new TestMachine(memory, snapshot.manifest.vcpus.length, true, prepared),
    dispose: (m) => m[Symbol.dispose](),
  });
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
  // Restores SNAPDIR COUNT times with restorePool on, each to the end; before
  // restore REPLACE_AT (if given) the memory file is replaced by a copy (a new
  // inode), so what the pool mapped ahead must not be used for it.
  const [dir, count, replaceAt] = [args[0], Number(args[1]), Number(args[2] ?? -1)];
  const results: unknown[] = [];
  const taken: number[] = [];
  restorePool.keepReady(true);
  try {
    for (let i = 0; i < count; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 50)); // the VM "runs": the pool refills
      if (i === replaceAt) {
        const mem = `${dir}/${MEMORY_FILE}`;
        Deno.copyFileSync(mem, `${mem}.new`);
        Deno.renameSync(`${mem}.new`, mem);
      }
      const before = restorePool.taken;
      const m = await restoreVmAsync(dir, {
        prepare: prepareVm,
        release: releaseVm,
        build: ({ memory, snapshot }, prepared) =>
          new TestMachine(memory, snapshot.manifest.vcpus.length, true, prepared),
        dispose: (m) => m[Symbol.dispose](),
      });
      taken.push(restorePool.taken - before);
      try {
        while (m.run() === "doorbell");
        results.push(await m.result());
      } finally {
        m[Symbol.dispose]();
      }
    }
  } finally {
    await restorePool.drain();
  }
  out = { results, taken, made: restorePool.made, kept: restorePool.size };
} else {
  throw new Error(`unknown mode ${mode}`);
}
Deno.writeTextFileSync(Deno.args[Deno.args.length - 1], JSON.stringify(out));
