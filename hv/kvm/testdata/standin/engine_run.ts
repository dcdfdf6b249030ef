// Test helper run as its own process (bench.ts runInNewProcess):
//   engine_run.ts KERNEL CACHE_DIR OUT.json [CPUS]
// Boots the stand-in through `KvmEngine.boot` with the snapshot cache at CACHE_DIR (a hit is
// expected), runs a command and a file round trip, and writes what it saw as JSON.
import { KvmEngine } from "../../engine.ts";
import { SnapshotCache } from "../../../../snapshot/cache.ts";
import { STANDIN_BOOT_LINE } from "./agent_kernel.ts";
import { standinConfig } from "./bench.ts";

const [kernel, cacheDir, out, cpus = "1"] = Deno.args;
// Bounds that only catch a hang (the test kills this process later still).
const watchdog = setTimeout(() => {
  console.error("engine_run: no end after 4 minutes");
  Deno.exit(3);
}, 240_000);
const dec = new TextDecoder();
const warnings: string[] = [];
let log = "";
const engine = new KvmEngine({
  onKernelLog: (b) => log += dec.decode(b),
  onNote: null,
  cache: new SnapshotCache(cacheDir, { warn: (m) => warnings.push(m) }),
  onWarning: (m) => warnings.push(m),
});
await using vm = await engine.boot(standinConfig(kernel, { memoryMiB: 64, cpus: Number(cpus) }), {
  signal: AbortSignal.timeout(180_000),
});
const echo = (await vm.exec(["echo", "new", "process"])).stdoutText;
await vm.writeFile("/f", "written in a new process");
const file = dec.decode(await vm.readFile("/f"));
await Deno.writeTextFile(
  out,
  JSON.stringify({
    origin: [vm.origin.from, vm.origin.captured, vm.origin.key],
    echo,
    file,
    bootLine: log.includes(STANDIN_BOOT_LINE),
    warnings,
  }),
);
clearTimeout(watchdog);
