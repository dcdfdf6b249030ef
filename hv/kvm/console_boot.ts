/**
 * `skiff boot --console-log FILE`: boots the kernel on skiff's own KVM
 * engine with the serial console (ttyS0), mirrors the console to the
 * terminal and to FILE, and ends on the timeout, a guest power-off or reset,
 * or a guest stop — each with one line for the user and an exit code.
 *
 * @module
 */

import { abortRace } from "../abort.ts";
import type { VmConfig } from "../config.ts";
import { VmExitError } from "../errors.ts";
import { buildKvmMachine } from "./builder.ts";
import { EMULATED_NOTE, explainExit } from "./emulated.ts";
import type { E820Entry } from "../boot/layout.ts";
import type { PlacedTable } from "../acpi/tables.ts";

/**
 * Exit code per end of a console boot (as main.ts: 124 for the timeout, like
 * coreutils `timeout`; 125 for skiff's own failures, which include a guest
 * that stopped on an exit skiff cannot continue from; 130 for an abort).
 */
export const EXIT_CODES = {
  poweroff: 0,
  reset: 0,
  halted: 0,
  timeout: 124,
  aborted: 130,
  "guest-error": 125,
} as const;

/** Options of {@link bootWithConsoleLog}. */
export interface ConsoleBootOptions {
  /** File receiving the console output (created or truncated). */
  consoleLog: string;
  /** Stop the VM after this many seconds (> 0). */
  timeoutSeconds: number;
  /** `--kernel`: bzImage or ELF vmlinux; default the cached Debian kernel. */
  kernel?: string;
  /** `--modules` directory. */
  modules?: string;
  /** vCPUs (default 1). */
  cpus?: number;
  /** Guest RAM in MiB (default 512). */
  memoryMiB?: number;
  /** Appended to the kernel command line. */
  cmdlineExtra?: string;
  /** Terminal mirror of the console (default: stdout); null for none. */
  terminal?: ((bytes: Uint8Array) => void) | null;
  /** Progress and notes, one line each (default: stderr). */
  progress?: (line: string) => void;
  /** Stops the VM and releases everything when aborted. */
  signal?: AbortSignal;
  /** Override the emulated-KVM detection (tests). */
  emulated?: boolean;
}

/** How a console boot ended. */
export interface ConsoleBootResult {
  /** What ended it. */
  end: "timeout" | "poweroff" | "reset" | "halted" | "aborted" | "guest-error";
  /** One line for the user (no trailing newline). */
  message: string;
  /** Process exit code: 0 for power-off/reset, 124 for the timeout, 125 for a guest stop. */
  exitCode: number;
  /** Seconds from the call to the end. */
  seconds: number;
  /** What the guest was given, for tests and diagnostics. */
  cmdline: string;
  e820: E820Entry[];
  acpiTables: PlacedTable[];
  cpus: number;
  kernelPath: string;
  emulated: boolean;
}

function writeAll(write: (b: Uint8Array) => number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += write(bytes.subarray(off));
}

/**
 * Boots with the serial console mirrored to the terminal and `consoleLog`.
 * Throws (before anything runs) for a missing kernel — the error says to run
 * `skiff kernel fetch` — or a bad option; otherwise resolves with how the
 * boot ended, after the VM is stopped and every resource released.
 */
export async function bootWithConsoleLog(o: ConsoleBootOptions): Promise<ConsoleBootResult> {
  const t0 = performance.now();
  if (!(o.timeoutSeconds > 0) || !Number.isFinite(o.timeoutSeconds)) {
    throw new RangeError(`--timeout ${o.timeoutSeconds}: must be a positive number of seconds`);
  }
  const progress = o.progress ?? ((l: string) => console.error(l));
  const terminal = o.terminal === undefined
    ? (b: Uint8Array) => writeAll((x) => Deno.stdout.writeSync(x), b)
    : o.terminal;
  const config: VmConfig = {
    kernel: o.kernel,
    modules: o.modules,
    cpus: o.cpus ?? 1,
    memoryMiB: o.memoryMiB ?? 512,
    cmdlineExtra: o.cmdlineExtra ?? "",
    root: null,
    volumes: [],
    net: null,
    hostname: "skiff",
    verbose: false,
  };
  o.signal?.throwIfAborted();

  let lastByte = 0x0a;
  let file: Deno.FsFile | null = null;
  const onConsole = (b: Uint8Array) => {
    if (b.length === 0) return;
    lastByte = b[b.length - 1];
    if (file) writeAll((x) => file!.writeSync(x), b);
    terminal?.(b);
  };
  await using m = await buildKvmMachine(config, {
    onConsole,
    progress,
    emulated: o.emulated,
  });
  file = await Deno.open(o.consoleLog, { write: true, create: true, truncate: true });
  try {
    if (m.emulated) progress(EMULATED_NOTE);
    const cpus = m.vm.vcpus.length;
    progress(
      `skiff: booting ${m.kernel.format === "elf" ? "vmlinux" : "bzImage"} on ${cpus} vCPU${
        cpus > 1 ? "s" : ""
      }, ${config.memoryMiB} MiB; console → ${o.consoleLog}; timeout ${o.timeoutSeconds} s`,
    );
    const remainingMs = Math.max(0, o.timeoutSeconds * 1000 - (performance.now() - t0));
    const deadline = AbortSignal.timeout(remainingMs);
    // Which of the two ended the wait decides the message: the timeout, or the caller.
    using ended = abortRace(o.signal ? AbortSignal.any([deadline, o.signal]) : deadline);
    const stoppedBy = ended.promise.catch((): "timeout" | "aborted" =>
      deadline.aborted ? "timeout" : "aborted"
    );
    let end: ConsoleBootResult["end"];
    let message: string;
    try {
      await m.vm.start();
      const stopped = m.vm.wait().then(
        (s) => ({ kind: "stop" as const, stop: s }),
        (e: unknown) => ({ kind: "error" as const, error: e }),
      );
      const first = await Promise.race([stopped, stoppedBy]);
      if (first === "timeout") {
        end = "timeout";
        message = `timed out after ${o.timeoutSeconds} s; the VM was stopped`;
      } else if (first === "aborted") {
        end = "aborted";
        message = "aborted; the VM was stopped";
      } else if (first.kind === "error") {
        end = "guest-error";
        const e = explainExit(first.error, m.log(), m.emulated);
        message = e instanceof VmExitError
          ? e.message
          : `the VM failed: ${(e as Error)?.message ?? e}`;
      } else if (first.stop.kind === "poweroff") {
        end = "poweroff";
        message = "the guest powered off";
      } else if (first.stop.kind === "reset") {
        end = "reset";
        message = "the guest rebooted; the VM was stopped";
      } else {
        end = "halted";
        message = `the VM stopped (${first.stop.kind})`;
      }
    } finally {
      await m.vm.stop().catch(() => {});
      m.uart.flush();
    }
    if (lastByte !== 0x0a) terminal?.(new TextEncoder().encode("\n"));
    return {
      end,
      message,
      exitCode: EXIT_CODES[end],
      seconds: (performance.now() - t0) / 1000,
      cmdline: m.cmdline,
      e820: m.e820,
      acpiTables: m.acpi.tables,
      cpus: m.vm.vcpus.length,
      kernelPath: m.kernelPath,
      emulated: m.emulated,
    };
  } finally {
    file.close();
  }
}
