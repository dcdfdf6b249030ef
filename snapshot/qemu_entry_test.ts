import { deepStrictEqual, match, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { bootCached } from "./boot_cached.ts";
import { SnapshotCache } from "./cache.ts";
import { listTable } from "./cli.ts";
import { SnapshotError } from "./errors.ts";
import {
  decodeQemuManifest,
  encodeQemuManifest,
  isQemuEntry,
  QEMU_MANIFEST,
  QEMU_RAM_FILE,
  QEMU_STATE_FILE,
  readQemuEntry,
  writeQemuEntryInWorker,
} from "./qemu_entry.ts";
import { SAMPLE_RAM_SIZE, writeQemuSample } from "./testdata/qemu_sample.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-qentry-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const KEY = "e".repeat(64);

/** The SnapshotError `fn` throws (fails the test when it throws anything else or nothing). */
function snapshotError(fn: () => unknown): SnapshotError {
  try {
    fn();
  } catch (e) {
    ok(e instanceof SnapshotError, `expected a SnapshotError, got ${e}`);
    return e;
  }
  throw new Error("expected a SnapshotError, nothing was thrown");
}

Deno.test("qemu entry: written sparse with digests, read back and verified", async () => {
  await withDir(async (dir) => {
    const entry = join(dir, "entry");
    const src = await writeQemuSample(entry, dir);
    ok(isQemuEntry(entry));
    ok(!isQemuEntry(dir));
    const e = readQemuEntry(entry, { verifyRam: true });
    strictEqual(e.manifest.engine, "qemu");
    strictEqual(e.manifest.qemuVersion, "7.2.22");
    deepStrictEqual(e.manifest.machine, ["-M", "q35", "-m", "8M"]);
    strictEqual(e.manifest.ram.fileSize, SAMPLE_RAM_SIZE);
    // Three non-zero pages; the explicit zero page became a hole.
    strictEqual(e.manifest.ram.dataBytes, 3 * 4096);
    const st = Deno.statSync(e.ramPath);
    ok(st.blocks! * 512 <= 64 * 1024, `ram allocates ${st.blocks! * 512} bytes`);
    deepStrictEqual(Deno.readFileSync(e.ramPath), Deno.readFileSync(src.ramPath));
    deepStrictEqual(Deno.readFileSync(e.statePath), Deno.readFileSync(src.statePath));
    strictEqual(e.manifest.state.size, Deno.statSync(src.statePath).size);
    match(e.manifest.state.digest, /^sha256:[0-9a-f]{64}$/);
    strictEqual((Deno.statSync(e.ramPath).mode ?? 0) & 0o777, 0o600);
  });
});

Deno.test("qemu entry: every kind of damage is a SnapshotError naming it", async () => {
  await withDir(async (dir) => {
    const entry = join(dir, "entry");
    await writeQemuSample(entry, dir);
    const good = (name: string) => Deno.readFileSync(join(entry, name));
    const saved = new Map([QEMU_MANIFEST, QEMU_RAM_FILE, QEMU_STATE_FILE].map((n) => [n, good(n)]));
    const restore = () => {
      for (const [n, b] of saved) Deno.writeFileSync(join(entry, n), b);
    };
    const cases: [string, () => void, string, RegExp][] = [
      [
        "truncated ram",
        () => Deno.truncateSync(join(entry, QEMU_RAM_FILE), 4 << 20),
        "truncated",
        /ram is 4194304 bytes, qemu.json says 8388608/,
      ],
      [
        "missing ram",
        () => Deno.removeSync(join(entry, QEMU_RAM_FILE)),
        "missing",
        /ram not found/,
      ],
      [
        "garbage state",
        () => {
          const b = good(QEMU_STATE_FILE);
          crypto.getRandomValues(b.subarray(0, 64));
          Deno.writeFileSync(join(entry, QEMU_STATE_FILE), b);
        },
        "corrupt",
        /state digest sha256:\w+ ≠ sha256:\w+/,
      ],
      [
        "short state",
        () => Deno.truncateSync(join(entry, QEMU_STATE_FILE), 10),
        "truncated",
        /state is 10 bytes/,
      ],
      [
        "edited manifest",
        () => {
          const t = new TextDecoder().decode(good(QEMU_MANIFEST)).replace("7.2.22", "7.2.23");
          Deno.writeTextFileSync(join(entry, QEMU_MANIFEST), t);
        },
        "corrupt",
        /checksum mismatch/,
      ],
      [
        "not JSON",
        () => Deno.writeTextFileSync(join(entry, QEMU_MANIFEST), "{"),
        "corrupt",
        /does not parse/,
      ],
      [
        "no manifest",
        () => Deno.removeSync(join(entry, QEMU_MANIFEST)),
        "missing",
        /qemu.json not found/,
      ],
    ];
    for (const [what, damage, problem, message] of cases) {
      damage();
      const e = snapshotError(() => readQemuEntry(entry));
      strictEqual(e.problem, problem, `${what}: ${e.message}`);
      match(e.message, message, what);
      ok(e.message.startsWith(`snapshot ${entry}: `), e.message);
      restore();
    }
    // Same size, other bytes: only the full verify sees it.
    const ram = good(QEMU_RAM_FILE);
    ram[(5 << 20) + 100] ^= 0xff;
    Deno.writeFileSync(join(entry, QEMU_RAM_FILE), ram);
    readQemuEntry(entry);
    strictEqual(
      snapshotError(() => readQemuEntry(entry, { verifyRam: true })).problem,
      "memory-digest",
    );
    restore();
    readQemuEntry(entry, { verifyRam: true });
  });
});

Deno.test("qemu manifest: magic, version and shape are checked", () => {
  const m = {
    version: 1,
    engine: "qemu" as const,
    createdAt: "2026-12-01T00:00:00.000Z",
    qemuVersion: "7.2.22",
    machine: ["-M", "q35"],
    ram: {
      fileSize: 8192,
      regions: [{ guestAddr: 0, size: 8192, fileOffset: 0 }],
      dataBytes: 0,
      digest: "sha256:x",
    },
    state: { size: 1, digest: "sha256:y" },
    source: {},
  };
  deepStrictEqual(decodeQemuManifest(encodeQemuManifest(m), "/d"), m);
  // The body edited, its checksum left out: magic and version are checked first.
  const edited = (edit: (o: Record<string, unknown>) => void) => {
    const o = JSON.parse(encodeQemuManifest(m));
    delete o.checksum;
    edit(o);
    return JSON.stringify(o);
  };
  strictEqual(
    snapshotError(() => decodeQemuManifest(edited((o) => o.magic = "nope"), "/d")).problem,
    "magic",
  );
  strictEqual(
    snapshotError(() => decodeQemuManifest(edited((o) => o.version = 2), "/d")).problem,
    "version",
  );
  // A body whose checksum does not cover it is corrupt, whatever else is right.
  strictEqual(snapshotError(() => decodeQemuManifest(edited(() => {}), "/d")).problem, "corrupt");
});

Deno.test("qemu entry: written on a Worker like inline; a second writer finds it exists", async () => {
  await withDir(async (dir) => {
    const src = await writeQemuSample(join(dir, "inline"), dir);
    const contents = {
      ramPath: src.ramPath,
      statePath: src.statePath,
      qemuVersion: "7.2.22",
      machine: ["-M", "q35", "-m", "8M"],
      source: { test: "worker" },
    };
    strictEqual(await writeQemuEntryInWorker(join(dir, "worker"), contents), "published");
    const a = readQemuEntry(join(dir, "inline"), { verifyRam: true }).manifest;
    const b = readQemuEntry(join(dir, "worker"), { verifyRam: true }).manifest;
    deepStrictEqual(b.ram, a.ram);
    deepStrictEqual(b.state, a.state);
    strictEqual(await writeQemuEntryInWorker(join(dir, "worker"), contents), "exists");
    // A failure on the Worker is a SnapshotError naming the entry.
    await rejects(
      writeQemuEntryInWorker(join(dir, "bad"), { ...contents, ramPath: join(dir, "no-such-ram") }),
      (e: Error) =>
        e instanceof SnapshotError && e.problem === "io" && /no-such-ram/.test(e.message),
    );
    deepStrictEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith(".tmp-")),
      [],
      "no temp directory left",
    );
  });
});

Deno.test("the cache lists qemu entries with their engine and discards a corrupt one in one line", async () => {
  await withDir(async (dir) => {
    const warnings: string[] = [];
    const cache = new SnapshotCache(join(dir, "cache"), { warn: (m) => warnings.push(m) });
    await writeQemuSample(cache.pathOf(KEY), dir);
    const [entry] = cache.list();
    strictEqual(entry.engine, "qemu");
    strictEqual(entry.memoryBytes, SAMPLE_RAM_SIZE);
    deepStrictEqual(entry.source, { test: "qemu-sample", engine: "qemu" });
    ok(entry.diskBytes > 0 && entry.diskBytes < 256 * 1024, `diskBytes ${entry.diskBytes}`);
    match(
      listTable([entry])[1],
      /^eeeeeeeeeeeeeeee +qemu +\d+(\.\d)? KiB +8\.0 MiB +\d+s +test=qemu-sample engine=qemu$/,
    );
    strictEqual(cache.lookupWith(KEY, readQemuEntry)?.manifest.qemuVersion, "7.2.22");

    Deno.truncateSync(join(cache.pathOf(KEY), QEMU_RAM_FILE), 4096);
    match(cache.list()[0].problem ?? "", /ram is 4096 bytes/);
    strictEqual(cache.lookupWith(KEY, readQemuEntry), null);
    strictEqual(warnings.length, 1);
    ok(!warnings[0].includes("\n"));
    match(warnings[0], /ram is 4096 bytes.*deleted it, booting without the snapshot$/);
    throws(() => Deno.statSync(cache.pathOf(KEY)), Deno.errors.NotFound);
  });
});

Deno.test("bootCached with the qemu reader: a failing restore deletes the entry, boots and rebuilds it", async () => {
  await withDir(async (dir) => {
    const warnings: string[] = [];
    const cache = new SnapshotCache(join(dir, "cache"), { warn: (m) => warnings.push(m) });
    await writeQemuSample(cache.pathOf(KEY), dir);
    const log: string[] = [];
    const run = (failRestore: boolean) =>
      bootCached({
        cache,
        key: KEY,
        read: readQemuEntry,
        warn: (m) => warnings.push(m),
        restore: (e) => {
          log.push(`restore ${e.manifest.qemuVersion}`);
          if (failRestore) {
            throw new SnapshotError(
              "corrupt",
              e.dir,
              "QEMU could not load the state: Invalid argument",
            );
          }
          return "restored";
        },
        boot: () => {
          log.push("boot");
          return Promise.resolve("booted");
        },
        capture: async (_vm, d) => {
          log.push("capture");
          await writeQemuSample(d, await Deno.makeTempDir({ dir }));
        },
      });
    deepStrictEqual(await run(true), { vm: "booted", from: "boot", captured: true });
    deepStrictEqual(log, ["restore 7.2.22", "boot", "capture"]);
    strictEqual(warnings.length, 1);
    match(
      warnings[0],
      /QEMU could not load the state: Invalid argument; deleted it, booting without the snapshot$/,
    );
    deepStrictEqual(await run(false), { vm: "restored", from: "snapshot", captured: false });
  });
});
