import {
  deepStrictEqual,
  match,
  notStrictEqual,
  ok,
  strictEqual,
  throws,
} from "node:assert/strict";
import { join } from "node:path";
import {
  cacheLimitBytes,
  defaultSnapshotDir,
  SnapshotCache,
  snapshotKey,
  touchEntry,
} from "./cache.ts";
import { listTable } from "./cli.ts";
import { contentHash, fileSha256 } from "./content_hash.ts";
import { FORMAT_VERSION, MEMORY_FILE, STATE_FILE } from "./format.ts";
import { writeSample } from "./testdata/sample.ts";

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-cache-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const KEY = "a".repeat(64);

Deno.test("snapshotKey depends on every part but not on key order", () => {
  const base = {
    kernelSha256: "k",
    initramfsSha256: "i",
    cmdline: "console=ttyS0",
    memoryMiB: 256,
    cpus: 1,
    devices: [{ id: "fs0", tag: "root", readOnly: true }],
  };
  const k = snapshotKey(base);
  match(k, /^[0-9a-f]{64}$/);
  strictEqual(
    snapshotKey({
      devices: base.devices,
      cpus: 1,
      memoryMiB: 256,
      cmdline: base.cmdline,
      initramfsSha256: "i",
      kernelSha256: "k",
    }),
    k,
  );
  for (
    const change of [
      { memoryMiB: 512 },
      { cpus: 2 },
      { cmdline: "quiet" },
      { kernelSha256: "k2" },
      {
        devices: [{ id: "fs0", tag: "root", readOnly: false }],
      },
    ]
  ) {
    notStrictEqual(snapshotKey({ ...base, ...change }), k, JSON.stringify(change));
  }
});

Deno.test("cache root follows XDG_CACHE_HOME, else ~/.cache", () => {
  const env = (vars: Record<string, string>) => (n: string) => vars[n];
  strictEqual(
    defaultSnapshotDir(env({ XDG_CACHE_HOME: "/x/cache", HOME: "/h" })),
    "/x/cache/skiff/snapshots",
  );
  strictEqual(defaultSnapshotDir(env({ HOME: "/h" })), "/h/.cache/skiff/snapshots");
  // A relative XDG_CACHE_HOME is invalid per the XDG spec and ignored.
  strictEqual(
    defaultSnapshotDir(env({ XDG_CACHE_HOME: "rel", HOME: "/h" })),
    "/h/.cache/skiff/snapshots",
  );
  throws(() => defaultSnapshotDir(env({})), /neither XDG_CACHE_HOME nor HOME/);
});

Deno.test("lookup: miss, hit, and bad entries warned once, deleted and treated as a miss", async () => {
  await withDir(async (root) => {
    const warnings: string[] = [];
    const cache = new SnapshotCache(root, { warn: (m) => warnings.push(m) });
    throws(() => cache.lookup("../etc"), RangeError);
    strictEqual(cache.lookup(KEY), null);
    strictEqual(warnings.length, 0);

    const damage: [string, (dir: string) => void, RegExp][] = [
      ["truncated", (d) => Deno.truncateSync(join(d, MEMORY_FILE), 4096), /memory is 4096 bytes/],
      ["corrupt", (d) => Deno.writeTextFileSync(join(d, STATE_FILE), '{"magic"'), /does not parse/],
      [
        "version",
        (d) => {
          const p = join(d, STATE_FILE);
          Deno.writeTextFileSync(
            p,
            Deno.readTextFileSync(p).replace(`"version": ${FORMAT_VERSION}`, '"version": 0'),
          );
        },
        /format version 0/,
      ],
      ["no state", (d) => Deno.removeSync(join(d, STATE_FILE)), /state.json not found/],
    ];
    for (const [name, hurt, why] of damage) {
      await writeSample(cache.pathOf(KEY));
      ok(cache.lookup(KEY) !== null, `${name}: fresh entry is a hit`);
      hurt(cache.pathOf(KEY));
      strictEqual(cache.lookup(KEY), null, name);
      strictEqual(warnings.length, 1, `${name}: one warning`);
      match(warnings[0], why);
      ok(!warnings[0].includes("\n"), "one line");
      match(warnings[0], /deleted it, booting without the snapshot$/);
      throws(() => Deno.statSync(cache.pathOf(KEY)), Deno.errors.NotFound);
      warnings.length = 0;
    }
  });
});

Deno.test("list shows key, size on disk, age and origin; clear removes entries and temp dirs", async () => {
  await withDir(async (root) => {
    const cache = new SnapshotCache(root, { warn: () => {} });
    deepStrictEqual(cache.list(), []);
    await writeSample(cache.pathOf(KEY));
    await writeSample(cache.pathOf("b".repeat(64)));
    Deno.writeTextFileSync(join(cache.pathOf("b".repeat(64)), STATE_FILE), "garbage");
    Deno.mkdirSync(join(root, ".tmp-leftover-1-2"));
    const entries = cache.list();
    strictEqual(entries.length, 2);
    const good = entries.find((e) => e.key === KEY)!;
    deepStrictEqual(good.source, { test: "store" });
    strictEqual(good.memoryBytes, 4 << 20);
    ok(good.diskBytes > 0 && good.diskBytes < 64 * 1024, `diskBytes ${good.diskBytes}`);
    ok(entries.find((e) => e.key !== KEY)!.problem?.includes("does not parse"));
    const table = listTable(entries, good.createdAt.getTime() + 125_000);
    match(table[0], /^KEY +ENGINE +ON DISK +MEMORY +AGE +BUILT FROM$/);
    strictEqual(good.engine, "kvm");
    ok(
      table.some((l) => l.startsWith("aaaaaaaaaaaaaaaa") && / 2m +test=store$/.test(l)),
      table.join("\n"),
    );
    ok(table.some((l) => l.includes("UNUSABLE")));
    strictEqual(cache.clear(), 2);
    deepStrictEqual([...Deno.readDirSync(root)], []);
  });
});

Deno.test("two processes racing to create one entry both succeed and one entry survives", async () => {
  await withDir(async (root) => {
    const cacheRoot = join(root, "cache");
    const helper = new URL("./testdata/race_writer.ts", import.meta.url).pathname;
    const writers = ["one", "two"].map((tag) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", helper, cacheRoot, KEY, tag],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn()
    );
    // A barrier: both have their memory ready before either is told to store.
    const readers = writers.map((w) => w.stdout.getReader());
    const dec = new TextDecoder();
    for (const r of readers) {
      let text = "";
      while (!text.includes("ready\n")) {
        const { value, done } = await r.read();
        if (done) break;
        text += dec.decode(value);
      }
      strictEqual(text, "ready\n");
    }
    const go = new TextEncoder().encode("\n");
    await Promise.all(writers.map(async (w) => {
      const s = w.stdin.getWriter();
      await s.write(go);
      await s.close();
    }));
    const outs = await Promise.all(writers.map(async (w, i) => {
      const [status, rest, err] = await Promise.all([
        w.status,
        (async () => {
          let t = "";
          for (;;) {
            const { value, done } = await readers[i].read();
            if (done) return t;
            t += dec.decode(value);
          }
        })(),
        new Response(w.stderr).text(),
      ]);
      return { code: status.code, stdout: rest, stderr: err };
    }));
    const results = outs.map((o) => {
      strictEqual(o.code, 0, o.stderr);
      return o.stdout.trim();
    });
    deepStrictEqual(results.sort(), ["exists", "published"]);
    deepStrictEqual([...Deno.readDirSync(cacheRoot)].map((e) => e.name), [KEY]);
    const snap = new SnapshotCache(cacheRoot).lookup(KEY);
    ok(snap !== null);
    ok(["one", "two"].includes(snap.manifest.source.writer as string));
  });
});

Deno.test("contentHash keeps the memo it read: a second call does not need the file", async () => {
  await withDir(async (root) => {
    const file = join(root, "module.ko");
    Deno.writeTextFileSync(file, "m1");
    const h1 = await contentHash(file, root);
    Deno.removeSync(join(root, "content-hashes.json"));
    // The memo file is gone: the process's memo answers (no re-hash, so no file written).
    strictEqual(await contentHash(file, root), h1);
    throws(() => Deno.statSync(join(root, "content-hashes.json")), Deno.errors.NotFound);
    Deno.writeTextFileSync(file, "m2, changed");
    strictEqual(await contentHash(file, root), await fileSha256(file));
  });
});

Deno.test("contentHash hashes file contents and re-hashes when the file changes", async () => {
  await withDir(async (root) => {
    const file = join(root, "kernel");
    Deno.writeTextFileSync(file, "v1");
    const h1 = await contentHash(file, root);
    strictEqual(h1, await fileSha256(file));
    strictEqual(await contentHash(file, root), h1); // from the memo
    ok(Deno.readTextFileSync(join(root, "content-hashes.json")).includes(h1));
    Deno.writeTextFileSync(file, "v2-longer");
    const h2 = await contentHash(file, root);
    notStrictEqual(h2, h1);
    strictEqual(h2, await fileSha256(file));
  });
});

Deno.test("prune: least recently used first, down to the limit; never the kept entry", async () => {
  await withDir((root) => {
    const MiB = 2 ** 20;
    const key = (c: string) => c.repeat(64);
    /** An entry of 1 MiB of data, last used `ageS` seconds ago. */
    const entry = (c: string, ageS: number, source: Record<string, unknown> = {}) => {
      const dir = join(root, key(c));
      Deno.mkdirSync(dir);
      Deno.writeFileSync(join(dir, "ram"), new Uint8Array(MiB).fill(1));
      Deno.writeTextFileSync(join(dir, "qemu.json"), JSON.stringify({ source }));
      const t = new Date(Date.now() - ageS * 1000);
      Deno.utimeSync(dir, t, t);
    };
    entry("1", 50);
    entry("2", 40, { vm: "running" }); // vm.snapshot() of a running VM
    entry("3", 30);
    entry("4", 20);
    entry("5", 10);
    Deno.mkdirSync(join(root, ".tmp-123-x")); // a capture being written: not an entry
    const names = () => [...Deno.readDirSync(root)].map((e) => e.name).sort();
    // Room for 3.5 entries: the two least recently used go (a running VM's snapshot too).
    const cache = new SnapshotCache(root, { maxBytes: 3.5 * MiB });
    deepStrictEqual(cache.prune(key("5")), [key("1"), key("2")]);
    deepStrictEqual(names(), [".tmp-123-x", key("3"), key("4"), key("5")]);
    deepStrictEqual(cache.prune(key("5")), []); // within the limit now
    // A restore by directory makes it the most recently used.
    touchEntry(join(root, key("3")), root);
    // A directory outside the cache (a caller's own vm.snapshot({ dir })) is not touched.
    const own = Deno.makeTempDirSync({ prefix: "skiff-own-snap-" });
    const before = Deno.statSync(own).mtime!.getTime() - 60_000;
    Deno.utimeSync(own, new Date(before), new Date(before));
    touchEntry(own, root);
    strictEqual(Deno.statSync(own).mtime!.getTime(), before);
    Deno.removeSync(own);
    // 0: only the kept one stays.
    deepStrictEqual(new SnapshotCache(root, { maxBytes: 0 }).prune(key("5")), [key("4"), key("3")]);
    deepStrictEqual(names(), [".tmp-123-x", key("5")]);
  });
});

Deno.test("prune: a hit makes an entry the most recently used", async () => {
  await withDir(async (root) => {
    const a = "a".repeat(64), b = "b".repeat(64);
    await writeSample(join(root, a));
    await writeSample(join(root, b));
    const old = new Date(Date.now() - 3600_000);
    Deno.utimeSync(join(root, a), old, old);
    Deno.utimeSync(join(root, b), new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    const one = 1.5 * (Deno.statSync(join(root, a, MEMORY_FILE)).blocks! * 512 +
      Deno.statSync(join(root, a, STATE_FILE)).blocks! * 512);
    const cache = new SnapshotCache(root, { maxBytes: one });
    ok(cache.lookup(a)); // a is used now, b is the older
    deepStrictEqual(cache.prune(), [b]);
    ok(cache.lookup(a));
  });
});

Deno.test("cacheLimitBytes: SKIFF_SNAPSHOT_CACHE_MIB, else 2 GiB; a bad value is refused", () => {
  strictEqual(cacheLimitBytes(() => undefined), 2048 * 2 ** 20);
  strictEqual(cacheLimitBytes(() => "0"), 0);
  strictEqual(cacheLimitBytes(() => "512"), 512 * 2 ** 20);
  throws(
    () => cacheLimitBytes(() => "1.5G"),
    /SKIFF_SNAPSHOT_CACHE_MIB=1\.5G: expected a whole number of MiB/,
  );
});
