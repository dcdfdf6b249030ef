// Test helper run as its own process by hv/kvm/agent_kvm_test.ts:
//   restore_run.ts SNAPSHOT_DIR OUT.json
// Restores the stand-in from a snapshot that holds /carried (mode 751), talks to its agent
// and writes what it saw as JSON.
import { restoreStandin, startSession } from "./machine.ts";
import { STANDIN_BOOT_LINE } from "./agent_kernel.ts";

const [snap, out] = Deno.args;
// Bounds that only catch a hang (the test kills this process later still).
const watchdog = setTimeout(() => {
  console.error("restore_run: no end after 4 minutes");
  Deno.exit(3);
}, 240_000);
const dec = new TextDecoder();
const m = await restoreStandin(snap, { memoryMiB: 64 });
await using s = await startSession(m, { cold: false, signal: AbortSignal.timeout(180_000) });
const carried = dec.decode(await s.client.readFile("/carried"));
const mode = (await s.client.exec(["mode", "/carried"])).stdoutText;
const echo = (await s.client.exec(["echo", "new", "process"])).stdoutText;
await s.client.writeFile("/after", "written after the restore");
const roundTrip = dec.decode(await s.client.readFile("/after"));
await Deno.writeTextFile(
  out,
  JSON.stringify({
    carried,
    mode,
    echo,
    roundTrip,
    bootLine: s.machine.log().includes(STANDIN_BOOT_LINE),
    errors: s.machine.errors.map(String),
  }),
);
clearTimeout(watchdog);
