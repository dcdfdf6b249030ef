// L1 with hv's Vm (one Worker per vCPU): the guest is paused at its doorbell
// while it waits for the host's go, captured, restored in a NEW process, and
// finishes exactly as an uninterrupted run.
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../tests/requirements.ts";
import { sha256Hex } from "./codec.ts";
import { MEMORY_FILE, STATE_FILE } from "./format.ts";
import { readSnapshot } from "./store.ts";

const HELPER = new URL("./testdata/hv_run.ts", import.meta.url).pathname;

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
    stdout: "piped",
    stderr: "piped",
  }).output();
  strictEqual(p.code, 0, `hv_run ${args.join(" ")} failed:\n${new TextDecoder().decode(p.stderr)}`);
  return JSON.parse(Deno.readTextFileSync(out));
}

function final(r: Result): Result {
  const { atCapture: _, ...rest } = r;
  return rest;
}

for (const cpus of [1, 2]) {
  hostTest(
    `hv Vm with ${cpus} vCPU(s): captured paused at the doorbell, restored in a new process, same result`,
    ["kvm"],
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "skiff-hvsnap-" });
      try {
        const snap = join(dir, "snap");
        const full = await helper(dir, "full", `${cpus}`, "40", "20");
        full.uart.forEach((t) => strictEqual(t.length, 40));
        const captured = await helper(dir, "capture", `${cpus}`, "40", "20", snap);
        strictEqual(captured.atCapture!.uart[0], full.uart[0].slice(0, 21));
        deepStrictEqual(final(captured), final(full));
        readSnapshot(snap, { verifyMemory: true });
        const memBefore = sha256Hex(Deno.readFileSync(join(snap, MEMORY_FILE)));
        const stateBefore = Deno.readTextFileSync(join(snap, STATE_FILE));
        deepStrictEqual(final(await helper(dir, "restore", snap)), final(full));
        deepStrictEqual(final(await helper(dir, "restore-made", snap)), final(full));
        const pooled = await helper(dir, "restore-pooled", snap) as unknown as {
          results: Result[];
          taken: number[];
        };
        for (const r of pooled.results) deepStrictEqual(final(r), final(full));
        deepStrictEqual(pooled.taken, [0, 1, 1], "the later restores took the pooled VM");
        strictEqual(sha256Hex(Deno.readFileSync(join(snap, MEMORY_FILE))), memBefore);
        strictEqual(Deno.readTextFileSync(join(snap, STATE_FILE)), stateBefore);
        ok(readSnapshot(snap).manifest.devices.test !== undefined);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
}
