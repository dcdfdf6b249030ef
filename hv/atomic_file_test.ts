import { rejects, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { atomicTempPath, writeFileAtomic } from "./atomic_file.ts";

Deno.test("writeFileAtomic: creates the directory, replaces whole files, leaves no temporary on failure", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-atomic-" });
  try {
    const path = join(dir, "a", "b", "memo.json");
    await writeFileAtomic(path, "first");
    await writeFileAtomic(path, new Uint8Array([0x6e, 0x65, 0x77]), { mode: 0o600 });
    strictEqual(await Deno.readTextFile(path), "new");
    strictEqual((await Deno.stat(path)).mode! & 0o777, 0o600);
    // A target that is a directory: the rename fails, the temporary goes.
    const taken = join(dir, "taken");
    await Deno.mkdir(join(taken, "inside"), { recursive: true });
    await rejects(writeFileAtomic(taken, "x"));
    throws(() => Deno.statSync(atomicTempPath(taken)), Deno.errors.NotFound);
    strictEqual((await Deno.stat(taken)).isDirectory, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
