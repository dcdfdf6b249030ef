/**
 * `deno task test:stress [ARGS…]`: the test suite (`deno test -A --parallel
 * ARGS…`) while `stress-ng --cpu N` keeps every core busy, to show that no
 * test depends on an idle machine. stress-ng is started before the tests
 * and stopped after them — also when the run is interrupted (Ctrl-C,
 * SIGTERM) — so nothing is left running; the exit code is the tests'.
 *
 * @module
 */

const CORES = navigator.hardwareConcurrency || 2;
/**
 * stress-ng's own limit: should this script be killed outright (SIGKILL,
 * which it cannot handle), stress-ng still ends by itself. Far longer than a
 * suite takes under load.
 */
const STRESS_LIMIT = "3h";

function spawnStress(): Deno.ChildProcess {
  try {
    return new Deno.Command("stress-ng", {
      args: ["--cpu", String(CORES), "--timeout", STRESS_LIMIT, "--quiet"],
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      console.error("test:stress: stress-ng is not installed (run tests/setup)");
      Deno.exit(125);
    }
    throw e;
  }
}

/** Sends `signal` to `child` unless it has exited. */
function kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // already exited
  }
}

const stress = spawnStress();
console.error(`test:stress: stress-ng --cpu ${CORES} (pid ${stress.pid}) keeps the cores busy`);
const stressEnded = stress.status;
let tests: Deno.ChildProcess | null = null;
let stopping: Deno.Signal | null = null;

// Ctrl-C reaches the whole foreground process group; SIGTERM only this script.
const onSignal = (signal: Deno.Signal) => () => {
  stopping = signal;
  if (tests) kill(tests, signal);
  kill(stress, "SIGTERM");
};
const handlers: [Deno.Signal, () => void][] = [
  ["SIGINT", onSignal("SIGINT")],
  ["SIGTERM", onSignal("SIGTERM")],
];
for (const [s, h] of handlers) Deno.addSignalListener(s, h);

let code = 1;
try {
  tests = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--parallel", ...Deno.args],
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const [status, early] = await Promise.all([
    tests.status,
    // stress-ng ending before the tests means they ran (partly) on an idle machine.
    Promise.race([stressEnded.then((s) => s), tests.status.then(() => null)]),
  ]);
  code = status.code;
  if (early && stopping === null) {
    console.error(`test:stress: stress-ng ended during the tests (exit ${early.code})`);
    if (code === 0) code = 1;
  }
} finally {
  kill(stress, "SIGTERM");
  await stressEnded;
  for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
}
console.error(`test:stress: stress-ng stopped; tests exited ${code}`);
Deno.exit(stopping === "SIGINT" ? 130 : stopping === "SIGTERM" ? 143 : code);
