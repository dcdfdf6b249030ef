/**
 * L3q: the spare RAM copies of the qemu engine's snapshot cache
 * (snapshot/ram_spares.ts) through real `skiff run` processes — the Debian
 * kernel under QEMU TCG, a private XDG_CACHE_HOME (the kernel cache linked
 * in) and TMPDIR. A run leaves one spare for the next restore; the next hit
 * takes it instead of copying; a spare of another entry is dropped and the
 * entry's RAM copied in, and the guest runs; `skiff snapshot clear` removes
 * the spares.
 */

import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { linkKernelCache } from "../hv/qemu/testing.ts";
import { RamSpares } from "../snapshot/ram_spares.ts";
import { hostTest } from "./requirements.ts";
import { runSkiff } from "./skiff_process.ts";

const skiff = (args: string[], cache: string) => runSkiff(args, { cache });

function spares(s: RamSpares): string[] {
  try {
    return [...Deno.readDirSync(s.dir)].map((e) => e.name).filter((n) => n.endsWith(".ram"));
  } catch {
    return [];
  }
}

hostTest(
  "skiff run (qemu): a hit takes the spare RAM copy the run before made; another entry's spare is dropped; clear removes them",
  ["kernel", "qemu"],
  async () => {
    const cache = await Deno.makeTempDir({ prefix: "skiff-sparetest-cache-" });
    const s = new RamSpares(join(cache, "skiff", "snapshots"));
    try {
      await linkKernelCache(cache);
      const run = (cmd: string[]) =>
        skiff(["run", "--engine", "qemu", "--memory", "256", "--verbose", "--", ...cmd], cache);

      // A miss: the boot is captured, and once published a spare is made of it.
      const miss = await run(["true"]);
      strictEqual(miss.code, 0, miss.stderr);
      match(miss.stderr, /snapshot miss/);
      match(miss.stderr, /spare RAM copy of .* ready/);
      strictEqual(spares(s).length, 1, miss.stderr);

      // A hit takes it (no copy) and leaves the next one.
      const hit = await run(["sh", "-c", "echo from-spare"]);
      strictEqual(hit.code, 0, hit.stderr);
      match(hit.stderr, /snapshot hit/);
      match(hit.stderr, /RAM from a spare copy/);
      strictEqual(hit.stdout, "from-spare\n");
      strictEqual(spares(s).length, 1, hit.stderr);

      // A spare that claims another entry's RAM and holds junk: the restore
      // drops it and copies the entry's RAM; the guest runs as usual.
      const [name] = spares(s);
      const other = join(s.dir, `${"0".repeat(64)}.ram`);
      Deno.renameSync(join(s.dir, name), other);
      {
        using f = Deno.openSync(other, { write: true });
        const junk = new Uint8Array(1 << 20).fill(0xcc);
        for (let at = 0; at < 256 << 20; at += 16 << 20) {
          f.seekSync(at, Deno.SeekMode.Start);
          f.writeSync(junk);
        }
      }
      const swapped = await run(["sh", "-c", "echo copied; cat /proc/sys/kernel/hostname"]);
      strictEqual(swapped.code, 0, swapped.stderr);
      match(swapped.stderr, /RAM copied, the spare was another entry's/);
      match(swapped.stdout, /^copied\n/);
      deepStrictEqual(spares(s), [name], "the entry's own spare is made again");

      const clear = await skiff(["snapshot", "clear"], cache);
      strictEqual(clear.code, 0, clear.stderr);
      deepStrictEqual(spares(s), []);
    } finally {
      s.clear();
      await Deno.remove(cache, { recursive: true });
    }
  },
);
