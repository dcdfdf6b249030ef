// Test helper run as its own process by hv/kvm_snapshot_test.ts:
//   kvm_snapshot_run.ts KERNEL CACHE_DIR on|off ARG0 [CPUS] OUT.json
// Runs `KvmEngine.run` (mailbox mode) with the stand-in kernel and a cache
// rooted at CACHE_DIR (or none with "off"), and writes what happened as JSON.
import { KvmEngine, type SnapshotOutcome } from "../engine.ts";
import { SnapshotCache } from "../../../snapshot/cache.ts";
import type { VmConfig } from "../../config.ts";

const [kernel, cacheDir, snapshot, arg0] = Deno.args;
const cpus = Deno.args.length > 5 ? Number(Deno.args[4]) : 1;
const out = Deno.args[Deno.args.length - 1];
// Bounds that only catch a hang (the test kills this process later still).
const watchdog = setTimeout(() => {
  console.error("kvm_snapshot_run: no end after 4 minutes");
  Deno.exit(3);
}, 240_000);
const warnings: string[] = [];
const outcomes: SnapshotOutcome[] = [];
let log = "";
const engine = new KvmEngine({
  onKernelLog: (b) => (log += new TextDecoder().decode(b)),
  onNote: null,
  snapshot: snapshot === "on",
  cache: new SnapshotCache(cacheDir, { warn: (m) => warnings.push(m) }),
  onWarning: (m) => warnings.push(m),
  onSnapshot: (o) => outcomes.push(o),
});
const config: VmConfig = {
  kernel,
  cpus,
  memoryMiB: 64,
  cmdlineExtra: "",
  root: null,
  volumes: [],
  net: null,
  hostname: "snap",
  verbose: false,
};
const sink = () => new WritableStream<Uint8Array>();
let result: unknown;
const deadline = new AbortController();
const timer = setTimeout(() => deadline.abort(new Error("run: no end after 3 minutes")), 180_000);
try {
  const status = await engine.run(
    config,
    { argv: [arg0], env: {}, workdir: "/" },
    { stdin: null, stdout: sink(), stderr: sink() },
    deadline.signal,
  );
  result = { status, outcomes, warnings, log };
} catch (e) {
  result = { error: String((e as Error).message ?? e), outcomes, warnings, log };
}
clearTimeout(watchdog);
clearTimeout(timer);
Deno.writeTextFileSync(out, JSON.stringify(result));
