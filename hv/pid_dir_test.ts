import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { makePidDir, pidNamespace, processRunning as running, sweepPidDirs } from "./pid_dir.ts";

Deno.test("pid dirs: named after this process, private, and swept only once their process is gone", async () => {
  const root = await Deno.makeTempDir({ prefix: "skiff-piddir-test-" });
  try {
    const mine = makePidDir(root, "x-");
    match(mine, new RegExp(`/x-${Deno.pid}n${pidNamespace()}-[^/]+$`));
    match(pidNamespace(), /^\d+$/);
    strictEqual(Deno.statSync(mine).mode! & 0o777, 0o700);
    // A process that has exited (and was waited for).
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    strictEqual(running(gone.pid), false);
    strictEqual(running(Deno.pid), true);
    const stale = join(root, `x-${gone.pid}n${pidNamespace()}-abc`);
    Deno.mkdirSync(join(stale, "sub"), { recursive: true });
    Deno.writeTextFileSync(join(stale, "sub", "f"), "left behind");
    const older = join(root, `x-${gone.pid}-old`); // an older skiff's name: this namespace's
    Deno.mkdirSync(older);
    // Another pid namespace's (a container sharing the directory): its pid means nothing here.
    const foreign = join(root, `x-${gone.pid}n1-abc`);
    Deno.mkdirSync(foreign);
    const other = join(root, `y-${gone.pid}-abc`); // another prefix
    Deno.mkdirSync(other);
    const unnamed = join(root, "x-notapid-abc"); // not a pid name
    Deno.mkdirSync(unnamed);
    deepStrictEqual(sweepPidDirs(root, "x-").sort(), [older, stale].sort());
    deepStrictEqual(
      [...Deno.readDirSync(root)].map((e) => e.name).sort(),
      [
        mine.slice(root.length + 1),
        "x-notapid-abc",
        `x-${gone.pid}n1-abc`,
        `y-${gone.pid}-abc`,
      ].sort(),
    );
    deepStrictEqual(sweepPidDirs(join(root, "missing"), "x-"), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
