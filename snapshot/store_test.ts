import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { SnapshotError } from "./errors.ts";
import { FORMAT_VERSION, MEMORY_FILE, STATE_FILE } from "./format.ts";
import { openSnapshotMemory, publishDir, readSnapshot, writeSnapshot } from "./store.ts";
import { RegionMemory } from "../hv/memory.ts";
import type { StateValue } from "./codec.ts";
import { writeSample } from "./testdata/sample.ts";

const MiB = 1 << 20;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function problemOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    ok(e instanceof SnapshotError, `not a SnapshotError: ${e}`);
    return e.problem;
  }
  throw new Error("did not throw");
}

Deno.test("writeSnapshot publishes state.json and memory, readSnapshot restores them", async () => {
  await withDir(async (root) => {
    const dir = join(root, "snap");
    await writeSample(dir);
    deepStrictEqual([...Deno.readDirSync(root)].map((e) => e.name), ["snap"]);
    deepStrictEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      [MEMORY_FILE, STATE_FILE],
    );
    const snap = readSnapshot(dir, { verifyMemory: true });
    strictEqual(snap.manifest.version, FORMAT_VERSION);
    deepStrictEqual(snap.manifest.devices, { uart: { lcr: 3 } });
    deepStrictEqual(snap.manifest.vcpus[0].regs, new Uint8Array(144).fill(3));
    using mem = openSnapshotMemory(snap);
    strictEqual(mem.readU32(0x1234), 0xfeedface);
  });
});

Deno.test("publishDir: an existing target wins, ours is discarded, failures leave no temp dir", async () => {
  await withDir(async (root) => {
    const target = join(root, "t");
    strictEqual(
      await publishDir(target, (tmp) => Deno.writeTextFileSync(join(tmp, "a"), "1")),
      "published",
    );
    strictEqual(
      await publishDir(target, (tmp) => Deno.writeTextFileSync(join(tmp, "a"), "2")),
      "exists",
    );
    strictEqual(Deno.readTextFileSync(join(target, "a")), "1");
    await rejects(
      publishDir(join(root, "u"), () => {
        throw new Error("disk full");
      }),
      (e) => e instanceof SnapshotError && e.problem === "io" && /disk full/.test(e.message),
    );
    deepStrictEqual([...Deno.readDirSync(root)].map((e) => e.name), ["t"]);
  });
});

Deno.test("readSnapshot rejects missing, corrupt, truncated and wrong-version snapshots", async () => {
  await withDir(async (root) => {
    const dir = join(root, "snap");
    strictEqual(problemOf(() => readSnapshot(dir)), "missing");
    await writeSample(dir);
    const statePath = join(dir, STATE_FILE);
    const memPath = join(dir, MEMORY_FILE);
    const good = Deno.readTextFileSync(statePath);

    // Truncated memory file.
    Deno.truncateSync(memPath, 2 * MiB);
    throws(() => readSnapshot(dir), /memory is 2097152 bytes, state.json says 4194304/);
    Deno.truncateSync(memPath, 4 * MiB);

    // Truncated, bit-flipped and re-versioned state.json.
    Deno.writeTextFileSync(statePath, good.slice(0, good.length / 2));
    strictEqual(problemOf(() => readSnapshot(dir)), "corrupt");
    Deno.writeTextFileSync(statePath, good.replace('"lcr": 3', '"lcr": 4'));
    strictEqual(problemOf(() => readSnapshot(dir)), "corrupt");
    Deno.writeTextFileSync(
      statePath,
      good.replace(`"version": ${FORMAT_VERSION}`, '"version": 99'),
    );
    throws(
      () => readSnapshot(dir),
      new RegExp(`format version 99, this skiff reads ${FORMAT_VERSION}`),
    );

    // Memory content corruption is found by a full verify.
    Deno.writeTextFileSync(statePath, good);
    const f = Deno.openSync(memPath, { write: true });
    f.seekSync(0x1234, Deno.SeekMode.Start);
    f.writeSync(new Uint8Array([0]));
    f.close();
    readSnapshot(dir); // the cheap check passes
    strictEqual(problemOf(() => readSnapshot(dir, { verifyMemory: true })), "memory-digest");

    Deno.removeSync(memPath);
    strictEqual(problemOf(() => readSnapshot(dir)), "missing");
  });
});

Deno.test("a device state JSON cannot carry fails the capture, naming it, and leaves nothing", async () => {
  await withDir(async (root) => {
    using mem = RegionMemory.memfd([{ guestAddr: 0, size: 1 << 20 }]);
    await rejects(
      writeSnapshot(join(root, "snap"), {
        memory: mem,
        vm: {},
        vcpus: [{}],
        devices: { fs0: { nodes: new Map() } as unknown as StateValue },
        source: {},
      }),
      (e) =>
        e instanceof SnapshotError && e.problem === "io" &&
        /\$\.devices\.fs0\.nodes: cannot encode \[object Map\]/.test(e.message),
    );
    deepStrictEqual([...Deno.readDirSync(root)], []);
  });
});
