/**
 * `skiff run` on any engine: boot (or restore) a VM, spawn the workload with
 * its own streams, pump the host's streams through with backpressure, and
 * stop the VM. A host reader that stops (`| head -1`) cancels the guest's
 * stream, so the command gets EPIPE/SIGPIPE as it would from a pipe.
 *
 * @module
 */

import type { ExitStatus, VmConfig, Workload } from "../config.ts";
import type { BootOptions, Engine, ProcessStatus, RunningVm, WorkloadIO } from "./types.ts";
import { timeline } from "./timeline.ts";

/** A guest process's status as a workload {@link ExitStatus}. */
export function exitStatusOf(s: ProcessStatus): ExitStatus {
  return s.signal !== null
    ? { kind: "signaled", signal: s.signal }
    : { kind: "exited", code: s.code };
}

/**
 * Runs `workload` in the running `vm` with `io`; resolves to its exit status
 * once its output has reached `io` (the VM keeps running). `log` gets the
 * command's timeline lines (`--verbose`).
 */
export async function runIn(
  vm: RunningVm,
  workload: Workload,
  io: WorkloadIO,
  signal?: AbortSignal,
  log?: (line: string) => void,
): Promise<ExitStatus> {
  const child = await vm.spawn(workload.argv, {
    env: workload.env,
    cwd: workload.workdir,
    ...(workload.user ? { user: workload.user } : {}),
    stdin: io.stdin ? "piped" : "null",
    signal,
  });
  timeline(log, "command started");
  // The host's stdin may never end (a terminal): it is not waited for, only
  // stopped (which cancels it) once the command is done.
  const stopStdin = new AbortController();
  if (io.stdin && child.stdin) {
    io.stdin.pipeTo(child.stdin, { signal: stopStdin.signal }).catch(() => {});
  }
  // The host's streams outlive the command: neither its end nor its failure
  // (QEMU killed with skiff's process group by a terminal's Ctrl-C) may close
  // or abort them — aborting Deno.stderr.writable closes fd 2's resource, and
  // skiff's own "stopped by SIGINT" line then had nowhere to go.
  const keep = { preventClose: true, preventAbort: true };
  const out = [
    child.stdout?.pipeTo(io.stdout, keep).catch(() => {}),
    child.stderr?.pipeTo(io.stderr, keep).catch(() => {}),
  ];
  try {
    const status = await child.status;
    timeline(log, `command exited (${status.signal ?? `code ${status.code}`})`);
    await Promise.all(out);
    return exitStatusOf(status);
  } finally {
    stopStdin.abort();
    await child[Symbol.asyncDispose]().catch(() => {});
  }
}

/** Boots a VM for `config`, runs `workload` in it with `io`, and stops it. */
export async function runOn(
  engine: Engine,
  config: VmConfig,
  workload: Workload,
  io: WorkloadIO,
  options: BootOptions = {},
): Promise<ExitStatus> {
  options.signal?.throwIfAborted();
  let status: ExitStatus;
  {
    await using vm = await engine.boot(config, options);
    status = await runIn(vm, workload, io, options.signal, options.log);
  }
  timeline(options.log, "VM stopped");
  return status;
}
