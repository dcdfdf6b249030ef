/**
 * `skiff run` behind the CLI: picks the engine, runs the workload with the
 * host's standard streams, enforces `--timeout`, stops the VM on Ctrl-C,
 * SIGTERM, SIGHUP or SIGQUIT, and turns the outcome into a process exit code.
 *
 * @module
 */

import { type Engine } from "../engine/types.ts";
import { EngineUnavailableError, EXIT_TIMEOUT, SkiffError, VmTimeoutError } from "../errors.ts";
import { exitCodeOf, type VmConfig, type Workload } from "../config.ts";
import { type EngineChoice, selectEngine } from "../library/select_engine.ts";
import { runOn } from "../engine/run.ts";

/** Options of {@link runCommand}. */
export interface RunCommandOptions {
  engine: EngineChoice;
  /** Seconds before the VM is stopped, or undefined for no limit. */
  timeoutSeconds?: number;
  /** `--snapshot` (true) / `--no-snapshot` (false); undefined: the engine's default. */
  snapshot?: boolean;
  /** The engine to use instead of choosing one (tests). */
  engineInstance?: Engine;
}

/** Whether a signal can be listened for here (SIGTERM is not on every platform). */
function onSignal(sig: Deno.Signal, fn: () => void): () => void {
  try {
    Deno.addSignalListener(sig, fn);
    return () => Deno.removeSignalListener(sig, fn);
  } catch {
    return () => {};
  }
}

/**
 * The signals that stop a VM (its QEMU too) and end skiff with 128 + their
 * number, as a shell reports a command they killed: Ctrl-C, `kill`, a closed
 * terminal (SIGHUP: left to its default, skiff died at once and QEMU ran on)
 * and Ctrl-\.
 */
const STOP_SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGTERM: 15 } as const;
type StopSignal = keyof typeof STOP_SIGNALS;

/**
 * The signal numbers this process was started ignoring (`SigIgn` in
 * /proc/self/status, bit N-1 for signal N): `nohup` ignores SIGHUP, a shell
 * ignores SIGINT and SIGQUIT for a background job. Those must stay ignored.
 */
export function ignoredSignals(status?: string): Set<number> {
  const out = new Set<number>();
  let text = status;
  try {
    text ??= Deno.readTextFileSync("/proc/self/status");
  } catch {
    return out;
  }
  const hex = /^SigIgn:\s*([0-9a-f]+)$/m.exec(text)?.[1];
  if (!hex) return out;
  const mask = BigInt(`0x${hex}`);
  for (let n = 1; n <= 64; n++) if ((mask >> BigInt(n - 1)) & 1n) out.add(n);
  return out;
}

/** A run's stop signals: see {@link stopOnSignals}. */
interface StopOnSignals extends Disposable {
  /**
   * The signal that stopped the run, or null; asked once the run ended,
   * after one turn of the event loop, so that a signal that arrived with the
   * failure it caused is seen first: a terminal's Ctrl-C reaches skiff and
   * QEMU at once, and QEMU's end can surface (a dropped connection, a killed
   * command) before skiff's listener has run.
   */
  stoppedBy(): Promise<StopSignal | null>;
}

/**
 * Aborts `abort` on the first of {@link STOP_SIGNALS} that the process was
 * not started ignoring; disposing stops listening. One it was started
 * ignoring gets a listener that does nothing: measured under `nohup`, SIGHUP
 * and SIGINT were no longer ignored once the VM ran (a handler of the
 * runtime's was installed for them, not one of skiff's), and SIGHUP then
 * killed skiff; a listener that does nothing keeps such a signal ignored.
 */
function stopOnSignals(abort: AbortController): StopOnSignals {
  let stoppedBy: StopSignal | null = null;
  const stop = (sig: StopSignal) => {
    stoppedBy ??= sig;
    abort.abort(new SkiffError(`stopped by ${sig}; the VM was stopped`));
  };
  const ignored = ignoredSignals();
  const removers = (Object.keys(STOP_SIGNALS) as StopSignal[]).map((sig) =>
    onSignal(sig, ignored.has(STOP_SIGNALS[sig]) ? () => {} : () => stop(sig))
  );
  return {
    stoppedBy: () => new Promise((resolve) => setTimeout(() => resolve(stoppedBy), 0)),
    [Symbol.dispose]: () => removers.forEach((remove) => remove()),
  };
}

/** The exit code of a command stopped by `sig`, after its one line (`skiff NAME: …`). */
function stoppedExit(name: string, sig: StopSignal): number {
  finalLine(`skiff ${name}: stopped by ${sig}; the VM was stopped`);
  return 128 + STOP_SIGNALS[sig];
}

/** The engine to use: the given instance, or the one `choice` selects (said with --verbose). */
async function engineFor(
  choice: EngineChoice,
  instance: Engine | undefined,
  log: ((line: string) => void) | undefined,
): Promise<Engine> {
  if (instance) return instance;
  const { engine, decision } = await selectEngine(choice, { log });
  log?.(`engine ${decision.name} (${decision.why})`);
  return engine;
}

/** skiff's last line; a terminal that hung up (SIGHUP) cannot take it, and that is no error. */
function finalLine(line: string): void {
  try {
    console.error(line);
  } catch {
    // stderr is gone
  }
}

/**
 * Runs `workload` in a VM for `config` with this process's stdin, stdout and
 * stderr; resolves to the exit code skiff should exit with.
 */
export async function runCommand(
  config: VmConfig,
  workload: Workload,
  o: RunCommandOptions,
): Promise<number> {
  const log = config.verbose ? (line: string) => console.error(`skiff: ${line}`) : undefined;
  const engine = await engineFor(o.engine, o.engineInstance, log);
  const abort = new AbortController();
  using stop = stopOnSignals(abort);
  const timer = o.timeoutSeconds === undefined ? undefined : setTimeout(
    () => abort.abort(new VmTimeoutError(o.timeoutSeconds!)),
    o.timeoutSeconds * 1000,
  );
  try {
    const status = await runOn(engine, config, workload, {
      stdin: Deno.stdin.readable,
      stdout: Deno.stdout.writable,
      stderr: Deno.stderr.writable,
    }, {
      signal: abort.signal,
      snapshot: o.snapshot,
      log,
      notice: (line) => console.error(`skiff: ${line}`),
    });
    // A timeout or a signal kills the command, whose status then says SIGKILL:
    // the reason it was killed is what skiff exits with.
    if (status.kind === "signaled") await stop.stoppedBy();
    if (abort.signal.aborted) throw abort.signal.reason;
    return exitCodeOf(status);
  } catch (e) {
    const sig = await stop.stoppedBy();
    const reason = abort.signal.aborted ? abort.signal.reason : e;
    if (reason instanceof VmTimeoutError) {
      finalLine(`skiff run: ${reason.message}`);
      return EXIT_TIMEOUT;
    }
    if (sig) return stoppedExit("run", sig);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Options of {@link bootShell}. */
export interface BootShellOptions {
  engine: EngineChoice;
  /** The engine to use instead of choosing one (tests). */
  engineInstance?: Engine;
}

function terminalSize(): { columns: number; rows: number } | undefined {
  try {
    return Deno.consoleSize();
  } catch {
    return undefined;
  }
}

/**
 * `skiff boot` without `--console-log`: an interactive shell on the guest
 * console with this terminal in raw mode (restored on exit, also on errors);
 * resolves to the shell's exit code.
 */
export async function bootShell(config: VmConfig, o: BootShellOptions): Promise<number> {
  const log = config.verbose ? (line: string) => console.error(`skiff: ${line}`) : undefined;
  const engine = await engineFor(o.engine, o.engineInstance, log);
  if (!engine.shell) {
    throw new EngineUnavailableError(
      `the ${engine.name} engine has no interactive console yet; ` +
        "use --engine qemu, or skiff boot --console-log FILE --timeout S",
    );
  }
  const abort = new AbortController();
  const size = terminalSize();
  const raw = Deno.stdin.isTerminal();
  // In raw mode the terminal's Ctrl-C and Ctrl-\ are bytes for the guest's
  // shell; a SIGINT or SIGQUIT still arrives from `kill`, and stops the VM.
  using stop = stopOnSignals(abort);
  let rawNow = false;
  const cooked = () => {
    if (!rawNow) return;
    rawNow = false;
    try {
      Deno.stdin.setRaw(false);
    } catch {
      // the terminal is gone (SIGHUP)
    }
  };
  if (raw) {
    Deno.stdin.setRaw(true);
    rawNow = true;
  }
  try {
    const status = await engine.shell(config, {
      input: Deno.stdin.readable,
      output: Deno.stdout.writable,
      ...(size ? { size: () => terminalSize() ?? size } : {}),
    }, abort.signal);
    if (status.kind === "signaled") await stop.stoppedBy();
    if (abort.signal.aborted) throw abort.signal.reason;
    return exitCodeOf(status);
  } catch (e) {
    const sig = await stop.stoppedBy();
    if (!sig) throw e;
    cooked(); // before the line, which raw mode would not start at column 0
    return stoppedExit("boot", sig);
  } finally {
    cooked();
  }
}
