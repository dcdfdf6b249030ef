import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { bootCached } from "./boot_cached.ts";
import { SnapshotCache, snapshotKey } from "./cache.ts";
import { MEMORY_FILE } from "./format.ts";
import { writeSample } from "./testdata/sample.ts";

async function withCache(fn: (cache: SnapshotCache, warnings: string[]) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-bootcached-" });
  const warnings: string[] = [];
  try {
    await fn(new SnapshotCache(dir, { warn: (m) => warnings.push(m) }), warnings);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const key = snapshotKey({ kernel: "k", memoryMiB: 256 });

function flow(cache: SnapshotCache | null, log: string[], warnings: string[], failRestore = false) {
  return bootCached({
    cache,
    key,
    warn: (m) => warnings.push(m),
    restore: (snap) => {
      log.push("restore");
      if (failRestore) throw new Error("KVM_SET_XSAVE failed: EINVAL");
      return `restored:${snap.manifest.source.test}`;
    },
    boot: () => {
      log.push("boot");
      return Promise.resolve("booted");
    },
    capture: async (_vm, dir) => {
      log.push("capture");
      await writeSample(dir);
    },
  });
}

Deno.test("bootCached: miss boots and captures, hit restores, no cache only boots", async () => {
  await withCache(async (cache, warnings) => {
    const log: string[] = [];
    deepStrictEqual(await flow(cache, log, warnings), {
      vm: "booted",
      from: "boot",
      captured: true,
    });
    deepStrictEqual(await flow(cache, log, warnings), {
      vm: "restored:store",
      from: "snapshot",
      captured: false,
    });
    deepStrictEqual(await flow(null, log, warnings), {
      vm: "booted",
      from: "boot",
      captured: false,
    });
    deepStrictEqual(log, ["boot", "capture", "restore", "boot"]);
    deepStrictEqual(warnings, []);
  });
});

Deno.test("bootCached: a bad entry or a failed restore warns once, deletes it and cold-boots", async () => {
  await withCache(async (cache, warnings) => {
    await writeSample(cache.pathOf(key));
    Deno.truncateSync(join(cache.pathOf(key), MEMORY_FILE), 100);
    const log: string[] = [];
    strictEqual((await flow(cache, log, warnings)).from, "boot");
    deepStrictEqual(log, ["boot", "capture"]); // re-captured after deleting the bad entry
    strictEqual(warnings.length, 1);
    match(warnings[0], /memory is 100 bytes.*deleted it, booting without the snapshot/);

    warnings.length = 0;
    log.length = 0;
    strictEqual((await flow(cache, log, warnings, true)).from, "boot");
    deepStrictEqual(log, ["restore", "boot", "capture"]);
    strictEqual(warnings.length, 1);
    match(warnings[0], /restoring snapshot .* failed: KVM_SET_XSAVE failed: EINVAL; deleted it/);
  });
});

Deno.test("bootCached: a failed capture only warns", async () => {
  await withCache(async (cache, warnings) => {
    const r = await bootCached({
      cache,
      key,
      warn: (m) => warnings.push(m),
      restore: () => "never",
      boot: () => Promise.resolve("booted"),
      capture: () => Promise.reject(new Error("No space left on device")),
    });
    deepStrictEqual(r, { vm: "booted", from: "boot", captured: false });
    deepStrictEqual(warnings, ["could not save a snapshot: No space left on device"]);
    deepStrictEqual(cache.list(), []);
  });
});

Deno.test("bootCached: a restore stopped by the run's signal fails the run and keeps the entry", async () => {
  await withCache(async (cache, warnings) => {
    const log: string[] = [];
    await flow(cache, log, warnings); // fills the entry
    const stop = new AbortController();
    const timedOut = new Error("timed out after 0.01 s");
    const run = bootCached({
      cache,
      key,
      warn: (m) => warnings.push(m),
      signal: stop.signal,
      restore: () => {
        log.push("restore");
        stop.abort(timedOut);
        throw timedOut;
      },
      boot: () => {
        log.push("boot");
        return Promise.resolve("booted");
      },
      capture: () => Promise.resolve(),
    });
    strictEqual(await run.then(() => null, (e) => e), timedOut);
    deepStrictEqual(log, ["boot", "capture", "restore"]);
    deepStrictEqual(warnings, []);
    // Still there, and still a hit.
    deepStrictEqual(await flow(cache, log, warnings), {
      vm: "restored:store",
      from: "snapshot",
      captured: false,
    });
  });
});
