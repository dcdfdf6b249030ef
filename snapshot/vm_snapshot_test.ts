// L1: snapshots of running guests on /dev/kvm. A guest program (init/asm)
// computes, prints to a UART, writes to a counter device and rings a
// doorbell mid-run; it is captured there, restored in a NEW process, and must
// finish exactly as an uninterrupted run.
import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../tests/requirements.ts";
import { sha256Hex } from "./codec.ts";
import { SnapshotError } from "./errors.ts";
import { FORMAT_VERSION, MEMORY_FILE, STATE_FILE } from "./format.ts";
import { readSnapshot } from "./store.ts";
import { restoreVm, restoreVmAsync } from "./vm_snapshot.ts";
import { guestProgram, prepareVm, releaseVm, TestMachine } from "./testdata/machine.ts";
import { decodeRegs } from "../kvm_ffi/structs.ts";

const HELPER = new URL("./testdata/guest_run.ts", import.meta.url).pathname;
/** The helper's guest memory in MiB (GUEST_RUN_MIB). */
let guestMiB = 4;
const ITERATIONS = 40;
const DOORBELL = 20;

type Result = {
  uart: string[];
  counter: { sum: number[]; count: number[] };
  memory: string[];
  rax: string[];
  atCapture?: Result | null;
};

async function helper(dir: string, ...args: string[]): Promise<Result> {
  const out = join(dir, `out-${crypto.randomUUID()}.json`);
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HELPER, ...args, out],
    env: { GUEST_RUN_MIB: String(guestMiB) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(p.stderr);
  strictEqual(p.code, 0, `guest_run ${args.join(" ")} failed:\n${err}`);
  return JSON.parse(Deno.readTextFileSync(out));
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-vmsnap-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function final(r: Result): Result {
  const { atCapture: _, ...rest } = r;
  return rest;
}

async function captureAndRestore(cpus: number): Promise<void> {
  await withDir(async (dir) => {
    const snap = join(dir, "snap");
    const full = await helper(dir, "full", `${cpus}`, `${ITERATIONS}`, `${DOORBELL}`);
    strictEqual(full.uart.length, cpus);
    full.uart.forEach((t) => strictEqual(t.length, ITERATIONS));
    strictEqual(new Set(full.uart).size, cpus, "vCPUs print different text");

    const captured = await helper(dir, "capture", `${cpus}`, `${ITERATIONS}`, `${DOORBELL}`, snap);
    // Captured mid-run: the doorbell rang after iteration DOORBELL of vCPU 0.
    const at = captured.atCapture!;
    strictEqual(at.uart[0], full.uart[0].slice(0, DOORBELL + 1));
    ok(at.memory[0] !== full.memory[0], "memory at capture differs from the end state");
    // The capturing VM carries on undisturbed.
    deepStrictEqual(final(captured), final(full));

    const snapshot = readSnapshot(snap, { verifyMemory: true });
    strictEqual(snapshot.manifest.vcpus.length, cpus);
    deepStrictEqual(Object.keys(snapshot.manifest.devices).sort(), ["counter", "uart"]);
    for (const k of ["pic_master", "pic_slave", "ioapic", "pit2", "clock"]) {
      ok(snapshot.manifest.vm[k]?.length > 0, `vm state ${k}`);
    }
    for (const k of ["regs", "sregs", "fpu", "msrs", "lapic", "events", "mp_state", "debugregs"]) {
      ok(snapshot.manifest.vcpus[0][k]?.length > 0, `vcpu state ${k}`);
    }
    // Pending I/O was completed before capture: vCPU 0 resumes after the doorbell `out`.
    const rip = decodeRegs(snapshot.manifest.vcpus[0].regs).rip;
    strictEqual(rip, BigInt(guestProgram().labels.get("wait")!));
    const stateBefore = Deno.readTextFileSync(join(snap, STATE_FILE));
    const memBefore = sha256Hex(Deno.readFileSync(join(snap, MEMORY_FILE)));

    // Restored in a fresh process, twice (each way): each finishes exactly as the
    // uninterrupted run.
    deepStrictEqual(final(await helper(dir, "restore", snap)), final(full));
    deepStrictEqual(final(await helper(dir, "restore-async", snap)), final(full));

    // The restored guests wrote memory; the snapshot did not change.
    strictEqual(Deno.readTextFileSync(join(snap, STATE_FILE)), stateBefore);
    strictEqual(sha256Hex(Deno.readFileSync(join(snap, MEMORY_FILE))), memBefore);
    readSnapshot(snap, { verifyMemory: true });
  });
}

hostTest(
  "a guest captured at a doorbell and restored in a new process finishes as an uninterrupted run",
  [
    "kvm",
  ],
  () => captureAndRestore(1),
);

hostTest("the same with 2 vCPUs", ["kvm"], () => captureAndRestore(2));

hostTest(
  "a 1 GiB guest restored by restoreVmAsync (memory slot made on another thread) finishes the same",
  ["kvm"],
  async () => {
    guestMiB = 1024; // ASYNC_SLOT_MIN_BYTES: the slot goes to a thread-pool thread
    try {
      await withDir(async (dir) => {
        const snap = join(dir, "snap");
        const full = await helper(dir, "full", "1", `${ITERATIONS}`, `${DOORBELL}`);
        await helper(dir, "capture", "1", `${ITERATIONS}`, `${DOORBELL}`, snap);
        strictEqual(readSnapshot(snap).manifest.memory.fileSize, 1 << 30);
        deepStrictEqual(final(await helper(dir, "restore-async", snap)), final(full));
      });
    } finally {
      guestMiB = 4;
    }
  },
);

hostTest(
  "restorePool: later restores of a snapshot take the memory and VM made ahead and finish the same",
  ["kvm"],
  async () => {
    await withDir(async (dir) => {
      const snap = join(dir, "snap");
      const full = await helper(dir, "full", "1", `${ITERATIONS}`, `${DOORBELL}`);
      await helper(dir, "capture", "1", `${ITERATIONS}`, `${DOORBELL}`, snap);
      // Before the 3rd restore the memory file is replaced by a copy (a new inode);
      // the 6th finds state.json corrupt; for the 8th the memory file is missing.
      const r = await helper(dir, "restore-pooled", snap, "..m..c.x.") as unknown as {
        results: (Result | { error: string })[];
        taken: number[];
        made: number;
        kept: number;
      };
      deepStrictEqual(r.results[5], { error: "corrupt" });
      deepStrictEqual(r.results[7], { error: "missing" });
      r.results.filter((_, i) => i !== 5 && i !== 7).forEach((res) =>
        deepStrictEqual(final(res as Result), final(full))
      );
      // The first finds nothing made; the 3rd must not use what was mapped from the
      // replaced file; the 6th fails verifying state.json (before it looks in the pool),
      // which leaves the made one to the 7th; the 8th drops what was made for a file
      // that is gone, so the 9th finds nothing.
      deepStrictEqual(r.taken, [0, 1, 0, 1, 1, 0, 1, 0, 0]);
      strictEqual(r.made, 7, "one made ahead after each restore that succeeded");
      strictEqual(r.kept, 0, "drain left nothing");
    });
  },
);

hostTest("corrupt, truncated, wrong-version and mismatched snapshots are rejected cleanly", [
  "kvm",
], async () => {
  await withDir(async (dir) => {
    const good = join(dir, "good");
    await helper(dir, "capture", "1", "8", "4", good);
    const copy = (name: string, hurt: (d: string) => void): string => {
      const d = join(dir, name);
      Deno.mkdirSync(d);
      for (const f of [STATE_FILE, MEMORY_FILE]) Deno.copyFileSync(join(good, f), join(d, f));
      hurt(d);
      return d;
    };
    const state = Deno.readTextFileSync(join(good, STATE_FILE));
    const cases: [string, string, (d: string) => void][] = [
      ["truncated", "truncated", (d) => Deno.truncateSync(join(d, MEMORY_FILE), 1 << 20)],
      [
        "corrupt",
        "corrupt",
        (d) =>
          Deno.writeTextFileSync(join(d, STATE_FILE), state.replace(/"\$b64": "A/, '"$b64": "B')),
      ],
      ["version", "version", (d) =>
        Deno.writeTextFileSync(
          join(d, STATE_FILE),
          state.replace(`"version": ${FORMAT_VERSION}`, `"version": ${FORMAT_VERSION + 1}`),
        )],
      ["empty", "corrupt", (d) => Deno.writeTextFileSync(join(d, STATE_FILE), "")],
      ["missing", "missing", (d) => Deno.removeSync(join(d, MEMORY_FILE))],
    ];
    for (const [name, problem, hurt] of cases) {
      const d = copy(name, hurt);
      let built = false;
      const isIt = (e: unknown) =>
        e instanceof SnapshotError && e.problem === problem && e.message.includes(d);
      throws(
        () =>
          restoreVm(d, () => {
            built = true;
            throw new Error("must not build");
          }),
        isIt,
        name,
      );
      ok(!built, `${name}: no VM was built`);
      // restoreVmAsync, prepare overlapped with verifying: what it made is released.
      let prepared = 0, released = 0;
      await rejects(
        restoreVmAsync(d, {
          overlap: true,
          prepare: (memory) => {
            prepared++;
            return prepareVm(memory);
          },
          release: (p) => {
            released++;
            releaseVm(p);
          },
          build: () => {
            built = true;
            throw new Error("must not build");
          },
        }),
        isIt,
        `${name} (async)`,
      );
      ok(!built, `${name}: no VM was built (async)`);
      strictEqual(released, prepared, `${name}: prepared ${prepared}, released ${released}`);
    }
    // A prepare that fails is reported, with the memory released (nothing else to release).
    await rejects(
      restoreVmAsync(good, {
        overlap: true,
        prepare: () => Promise.reject(new Error("no VM today")),
        build: () => {
          throw new Error("must not build");
        },
      }),
      /no VM today/,
    );
    // In a process that has verified manifests before, prepare is not overlapped (it is told
    // so, and works in place); the restored guest runs to its end.
    const overlaps: boolean[] = [];
    const m = await restoreVmAsync(good, {
      prepare: (memory, overlap) => {
        overlaps.push(overlap);
        return prepareVm(memory, overlap);
      },
      release: releaseVm,
      build: ({ memory }, p) => new TestMachine(memory, 1, true, p),
      dispose: (m) => m[Symbol.dispose](),
    });
    try {
      deepStrictEqual(overlaps, [false]);
      strictEqual(m.run(), "done");
      strictEqual(m.uart.text[0].length, 8);
    } finally {
      m[Symbol.dispose]();
    }
    // A VM with the wrong vCPU count is refused before any state is set.
    throws(
      () => restoreVm(good, ({ memory }) => new TestMachine(memory, 2), (m) => m[Symbol.dispose]()),
      (e) =>
        e instanceof SnapshotError && e.problem === "mismatch" &&
        /1 vCPUs, the VM has 2/.test(e.message),
    );
  });
});
