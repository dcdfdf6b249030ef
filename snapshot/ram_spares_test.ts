import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { MAX_SPARES, RamSpares } from "./ram_spares.ts";
import { SnapshotCache } from "./cache.ts";

const SIZE = 8 << 20;

/** A scratch "tmpfs" root and a cache root, removed afterwards. */
async function withRoots(
  fn: (shm: string, cacheRoot: string) => Promise<void> | void,
): Promise<void> {
  const shm = Deno.makeTempDirSync({ dir: "/dev/shm", prefix: "skiff-sparetest-" });
  const cacheRoot = Deno.makeTempDirSync({ prefix: "skiff-sparetest-cache-" });
  try {
    await fn(shm, cacheRoot);
  } finally {
    Deno.removeSync(shm, { recursive: true });
    Deno.removeSync(cacheRoot, { recursive: true });
  }
}

/** An entry's `ram` file: sparse, `SIZE` bytes, one page of `fill` at 1 MiB. */
function ramFile(path: string, fill: number): string {
  using f = Deno.openSync(path, { write: true, create: true });
  f.truncateSync(SIZE);
  f.seekSync(1 << 20, Deno.SeekMode.Start);
  f.writeSync(new Uint8Array(4096).fill(fill));
  return path;
}

const digest = (c: string) => `sha256:${c.repeat(64)}`;

function spareNames(s: RamSpares): string[] {
  try {
    return [...Deno.readDirSync(s.dir)].map((e) => e.name).filter((n) => n.endsWith(".ram")).sort();
  } catch {
    return [];
  }
}

Deno.test("RamSpares: a replenished spare is claimed once, by size, as a private file with its digest", () =>
  withRoots(async (shm, cacheRoot) => {
    const spares = new RamSpares(cacheRoot, shm);
    strictEqual(spares.claim(SIZE, join(shm, "none")), null);
    const ram = ramFile(join(cacheRoot, "ram"), 7);
    await spares.replenish(ram, digest("a"));
    deepStrictEqual(spareNames(spares), [`${"a".repeat(64)}.ram`]);
    strictEqual((Deno.statSync(spares.dir).mode ?? 0) & 0o777, 0o700);
    strictEqual(spares.claim(SIZE * 2, join(shm, "other-size")), null);
    const target = join(shm, "ram");
    strictEqual(spares.claim(SIZE, target), digest("a"));
    const got = Deno.readFileSync(target);
    deepStrictEqual(got, Deno.readFileSync(ram));
    strictEqual((Deno.statSync(target).mode ?? 0) & 0o777, 0o600);
    ok(Deno.statSync(target).blocks! * 512 < 1 << 20, "holes kept");
    strictEqual(spares.claim(SIZE, join(shm, "again")), null, "claimed twice");
  }));

Deno.test("RamSpares: replenishing keeps one spare per digest and the newest MAX_SPARES", () =>
  withRoots(async (shm, cacheRoot) => {
    const spares = new RamSpares(cacheRoot, shm);
    const names = ["a", "b", "c"].slice(0, MAX_SPARES + 1);
    for (const [i, c] of names.entries()) {
      await spares.replenish(ramFile(join(cacheRoot, `ram-${c}`), i + 1), digest(c));
      await spares.replenish(join(cacheRoot, `ram-${c}`), digest(c)); // already there
      // mtimes a clear order apart
      const at = new Date(Date.now() - (names.length - i) * 10_000);
      Deno.utimeSync(join(spares.dir, `${c.repeat(64)}.ram`), at, at);
    }
    deepStrictEqual(spareNames(spares), names.slice(1).map((c) => `${c.repeat(64)}.ram`));
    // the newest is claimed first
    strictEqual(spares.claim(SIZE, join(shm, "ram")), digest(names.at(-1)!));
  }));

Deno.test("RamSpares: a failed copy or a bad digest leaves no file behind", () =>
  withRoots(async (shm, cacheRoot) => {
    const spares = new RamSpares(cacheRoot, shm);
    await rejects(spares.replenish(join(cacheRoot, "missing"), digest("a")));
    await rejects(spares.replenish(ramFile(join(cacheRoot, "ram"), 1), "md5:x"), RangeError);
    const left = [...Deno.readDirSync(spares.dir)].map((e) => e.name);
    deepStrictEqual(left, ["root"]);
  }));

Deno.test("RamSpares: an entry with more RAM data than a spare holds gets none", () =>
  withRoots(async (shm, cacheRoot) => {
    const ram = ramFile(join(cacheRoot, "ram"), 1); // one 4 KiB page of data
    const small = new RamSpares(cacheRoot, shm, 2048);
    await rejects(
      small.replenish(ram, digest("a")),
      /RAM data \(0\.0 MiB\) is more than a spare holds/,
    );
    deepStrictEqual(spareNames(small), []);
    await new RamSpares(cacheRoot, shm, 4096).replenish(ram, digest("a"));
    deepStrictEqual(spareNames(small), [`${"a".repeat(64)}.ram`]);
  }));

Deno.test("RamSpares.sweep removes the spares of a cache that is gone and copies of dead processes", () =>
  withRoots(async (shm, cacheRoot) => {
    const kept = new RamSpares(cacheRoot, shm);
    await kept.replenish(ramFile(join(cacheRoot, "ram"), 1), digest("a"));
    const goneRoot = Deno.makeTempDirSync({ prefix: "skiff-sparetest-gone-" });
    const gone = new RamSpares(goneRoot, shm);
    await gone.replenish(ramFile(join(goneRoot, "ram"), 2), digest("b"));
    Deno.removeSync(goneRoot, { recursive: true });
    // a copy whose process died (pid 2^22 + 1 is above any pid_max), and one of a live process
    const dead = join(kept.dir, ".tmp-4194305-dead.ram");
    const live = join(kept.dir, `.tmp-${Deno.pid}-live.ram`);
    Deno.writeFileSync(dead, new Uint8Array(1));
    Deno.writeFileSync(live, new Uint8Array(1));
    // a spare directory being made by a process that died, and one by this process
    const halfMade = join(shm, `skiff-sparetmp-${Deno.uid()}-4194305-x`);
    const making = join(shm, `skiff-sparetmp-${Deno.uid()}-${Deno.pid}-x`);
    Deno.mkdirSync(halfMade);
    Deno.mkdirSync(making);
    deepStrictEqual(RamSpares.sweep(shm).sort(), [gone.dir, dead, halfMade].sort());
    ok(Deno.statSync(making).isDirectory);
    deepStrictEqual(spareNames(kept), [`.tmp-${Deno.pid}-live.ram`, `${"a".repeat(64)}.ram`]);
  }));

Deno.test("SnapshotCache.clear removes the cache's spare RAM copies", () =>
  withRoots(async (_shm, cacheRoot) => {
    // The cache clears its spares on the real tmpfs (/dev/shm).
    const spares = new RamSpares(cacheRoot);
    try {
      await spares.replenish(ramFile(join(cacheRoot, "ram"), 1), digest("a"));
      strictEqual(spareNames(spares).length, 1);
      new SnapshotCache(cacheRoot, { warn: () => {} }).clear();
      deepStrictEqual(spareNames(spares), []);
    } finally {
      spares.clear();
    }
  }));

Deno.test("RamSpares: a spare directory open to others, or a symlink, is never taken from", () =>
  withRoots(async (shm, cacheRoot) => {
    const spares = new RamSpares(cacheRoot, shm);
    await spares.replenish(ramFile(join(cacheRoot, "ram"), 1), digest("a"));
    // As if another user had made it first: a name anyone could have created in /dev/shm.
    Deno.chmodSync(spares.dir, 0o777);
    strictEqual(spares.claim(SIZE, join(shm, "ram")), null);
    await rejects(spares.replenish(join(cacheRoot, "ram"), digest("b")), /not a private directory/);
    Deno.chmodSync(spares.dir, 0o700);
    const real = `${spares.dir}-real`;
    Deno.renameSync(spares.dir, real);
    Deno.symlinkSync(real, spares.dir);
    strictEqual(spares.claim(SIZE, join(shm, "ram")), null);
    Deno.removeSync(spares.dir);
    Deno.renameSync(real, spares.dir);
    strictEqual(spares.claim(SIZE, join(shm, "ram")), digest("a"));
  }));
