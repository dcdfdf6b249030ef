import { match, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { writeSample } from "./testdata/sample.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function skiff(cacheHome: string, ...args: string[]) {
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { XDG_CACHE_HOME: cacheHome },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: p.code,
    out: new TextDecoder().decode(p.stdout),
    err: new TextDecoder().decode(p.stderr),
  };
}

Deno.test("skiff snapshot list|clear through the CLI", async () => {
  const home = await Deno.makeTempDir({ prefix: "skiff-snapcli-" });
  try {
    let r = await skiff(home, "snapshot", "list");
    strictEqual(r.code, 0, r.err);
    match(r.out, /^no snapshots in .*skiff\/snapshots\n$/);

    await writeSample(join(home, "skiff", "snapshots", "c".repeat(64)));
    r = await skiff(home, "snapshot", "list");
    strictEqual(r.code, 0, r.err);
    const lines = r.out.trimEnd().split("\n");
    strictEqual(lines.length, 2);
    match(lines[1], /^cccccccccccccccc +kvm +\d+(\.\d)? KiB +4\.0 MiB +\d+s +test=store$/);

    r = await skiff(home, "snapshot", "list", "--json");
    const json = JSON.parse(r.out);
    strictEqual(json[0].key, "c".repeat(64));
    strictEqual(json[0].memoryBytes, 4 << 20);

    r = await skiff(home, "snapshot", "clear");
    strictEqual(r.code, 0, r.err);
    match(r.out, /^removed 1 snapshot from /);
    ok(![...Deno.readDirSync(join(home, "skiff", "snapshots"))].length);

    r = await skiff(home, "snapshot", "list", "--bogus");
    strictEqual(r.code, 125);
    match(r.err, /^skiff snapshot: .*bogus.*\(see skiff snapshot --help\)\n$/);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
