/**
 * `skiff run` behind the CLI: picks the engine, runs the workload with the
 * host's standard streams, enforces `--timeout`, stops the VM on Ctrl-C or
 * SIGTERM, and turns the outcome into a process exit code.
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
 * Runs `workload` in a VM for `config` with this process's stdin, stdout and
 * stderr; resolves to the exit code skiff should exit with.
 */
export async function runCommand(
  config: VmConfig,
  workload: Workload,
  o: RunCommandOptions,
): Promise<number> {
  const log = config.verbose ? (line: string) => console.error(`skiff: ${line}`) : undefined;
  let engine = o.engineInstance;
  if (!engine) {
    const { engine: chosen, decision } = await selectEngine(o.engine, {
      log,
    });
    log?.(`engine ${decision.name} (${decision.why})`);
    engine = chosen;
  }
  const abort = new AbortController();
  let interrupted: Deno.Signal | null = null;
  const stopOn = (sig: Deno.Signal) => () => {
    interrupted = sig;
    abort.abort(new SkiffError(`stopped by ${sig}; the VM was stopped`));
  };
  const removers = [onSignal("SIGINT", stopOn("SIGINT")), onSignal("SIGTERM", stopOn("SIGTERM"))];
  const timer = o.timeoutSeconds === undefined ? undefined : setTimeout(
    () => abort.abort(new VmTimeoutError(o.timeoutSeconds!)),
    o.timeoutSeconds * 1000,
  );
  try {
    const status = await runOn(engine, config, workload, {
      stdin: Deno.stdin.readable,
      stdout: Deno.stdout.writable,
      stderr: Deno.stderr.writable,
    }, { signal: abort.signal, snapshot: o.snapshot, log });
    // A timeout or a signal kills the command, whose status then says SIGKILL:
    // the reason it was killed is what skiff exits with.
    if (abort.signal.aborted) throw abort.signal.reason;
    return exitCodeOf(status);
  } catch (e) {
    const reason = abort.signal.aborted ? abort.signal.reason : e;
    if (reason instanceof VmTimeoutError) {
      console.error(`skiff run: ${reason.message}`);
      return EXIT_TIMEOUT;
    }
    if (interrupted) {
      console.error(`skiff run: stopped by ${interrupted}; the VM was stopped`);
      return interrupted === "SIGINT" ? 130 : 143;
    }
    throw e;
  } finally {
    clearTimeout(timer);
    for (const remove of removers) remove();
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
  let engine = o.engineInstance;
  if (!engine) {
    const { engine: chosen, decision } = await selectEngine(o.engine, { log });
    log?.(`engine ${decision.name} (${decision.why})`);
    engine = chosen;
  }
  if (!engine.shell) {
    throw new EngineUnavailableError(
      `the ${engine.name} engine has no interactive console yet; ` +
        "use --engine qemu, or skiff boot --console-log FILE --timeout S",
    );
  }
  const abort = new AbortController();
  const removeTerm = onSignal("SIGTERM", () => abort.abort(new SkiffError("stopped by SIGTERM")));
  const size = terminalSize();
  const raw = Deno.stdin.isTerminal();
  if (raw) Deno.stdin.setRaw(true);
  try {
    const status = await engine.shell(config, {
      input: Deno.stdin.readable,
      output: Deno.stdout.writable,
      ...(size ? { size: () => terminalSize() ?? size } : {}),
    }, abort.signal);
    return exitCodeOf(status);
  } finally {
    if (raw) Deno.stdin.setRaw(false);
    removeTerm();
  }
}
