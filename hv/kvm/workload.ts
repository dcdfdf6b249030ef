/**
 * The workload's I/O on the kvm engine: its stdin, stdout and stderr on the
 * virtio-console ports, and its exit status from the mailbox result or the
 * status port.
 *
 * @module
 */

import { VmError } from "../errors.ts";
import { type ExitStatus } from "../config.ts";
import { LINUX_ERRNO_NAMES } from "../../init/errno_names.ts";
import { parseStatusLine } from "../../init/config.ts";
import { ConsolePort, PORT_NAMES } from "../../devices/virtio/console/device.ts";
import { abortRace } from "../abort.ts";
import type { WorkloadIO } from "../engine/types.ts";
import type { KvmDevices } from "./device_manager.ts";
import { StopWatch } from "./stop_watch.ts";

/** The exit status of a mailbox COMMAND result (init/MAILBOX.md). */
export function mailboxStatus(result: number): ExitStatus {
  if (result >= 0 && result <= 255) return { kind: "exited", code: result };
  const errno = -result;
  const name = errno > 0 && errno < LINUX_ERRNO_NAMES.length && LINUX_ERRNO_NAMES[errno]
    ? LINUX_ERRNO_NAMES[errno]
    : `errno-${errno}`;
  throw new VmError(`the guest init could not run the command: ${name} (result ${result})`);
}

/**
 * Wires the workload's streams to the console ports, starts the command
 * with `start`, and resolves with its status: from the mailbox result, or
 * from the status port (one-shot). A guest stop first is a VmError.
 */
export async function serveWorkload(
  m: KvmDevices,
  io: WorkloadIO,
  signal: AbortSignal | undefined,
  start: (
    stopped: StopWatch,
  ) => Promise<{ kind: "status" } | { kind: "mailbox"; result: Promise<number> }>,
  stopped = new StopWatch(),
): Promise<ExitStatus> {
  const con = m.console!; // a workload machine always has its console
  const stdoutW = io.stdout.getWriter();
  const stderrW = io.stderr.getWriter();
  let writes: Promise<unknown> = Promise.resolve();
  const pipe = (port: ConsolePort, w: WritableStreamDefaultWriter<Uint8Array>) => {
    port.onData = (b) => {
      writes = writes.then(() => w.write(b)).catch(() => {});
    };
  };
  pipe(con.port(PORT_NAMES.stdout), stdoutW);
  pipe(con.port(PORT_NAMES.stderr), stderrW);
  const status = new Promise<ExitStatus>((resolveStatus, rejectStatus) => {
    let text = "";
    con.port(PORT_NAMES.status).onData = (b) => {
      text += new TextDecoder().decode(b);
      const nl = text.indexOf("\n");
      if (nl < 0) return;
      try {
        const s = parseStatusLine(text.slice(0, nl));
        if (s.kind === "error") {
          throw new VmError(`the guest init failed at '${s.step}': ${s.errno}`);
        }
        resolveStatus(s);
      } catch (e) {
        rejectStatus(e instanceof VmError ? e : new VmError((e as Error).message));
      }
    };
  });
  status.catch(() => {});
  const stdinPort = con.port(PORT_NAMES.stdin);
  const reader = io.stdin?.getReader() ?? null;
  const pumpStdin = async () => {
    if (!reader) {
      stdinPort.close();
      return;
    }
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        stdinPort.send(value);
      }
    } catch {
      // host stdin failed: the guest sees EOF
    }
    stdinPort.close();
  };
  using abort = abortRace(signal);
  const aborted = abort.promise;
  try {
    const started = await Promise.race([start(stopped), aborted]);
    void pumpStdin();
    const result = started.kind === "status" ? status : started.result.then(mailboxStatus);
    return await Promise.race([result, stopped.rejection(m), aborted]);
  } finally {
    await reader?.cancel().catch(() => {});
    await m.vm.stop().catch(() => {});
    await writes;
    stdoutW.releaseLock();
    stderrW.releaseLock();
  }
}
