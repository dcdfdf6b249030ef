/**
 * Where /dev/kvm only emulates guest code (the kvm_pvm module, DESIGN.md
 * "This workplace's KVM"): how to detect it, the command-line options that
 * avoid instructions its emulator lacks, and the one-line explanation of a
 * guest stop there.
 *
 * @module
 */

import { VmExitError } from "../errors.ts";

/** Where the emulated-KVM module shows itself (DESIGN.md, "This workplace's KVM"). */
export const KVM_PVM_SYSFS = "/sys/module/kvm_pvm";
/** Command-line options that avoid instructions the emulated KVM lacks (cmpxchg16b, xrstor). */
export const EMULATED_KVM_CMDLINE = "noxsave clearcpuid=cx16";
/** The line printed where guest code is emulated. */
export const EMULATED_NOTE =
  "skiff: guest code is emulated on this host (/dev/kvm is the kvm_pvm module): " +
  "the kernel prints its early log, then stops on an instruction the emulator lacks";
/** Whether /dev/kvm here is the emulated kvm_pvm module. */
export function isEmulatedKvm(sysfsPath = KVM_PVM_SYSFS): boolean {
  try {
    Deno.statSync(sysfsPath);
    return true;
  } catch {
    return false;
  }
}
/** The kernel log's last line as a message suffix, or nothing. */
function lastLine(log: string): string {
  const line = log.trim().split("\n").pop()?.trim();
  return line ? ` (kernel log: ${line.slice(0, 160)})` : "";
}
/**
 * Turns a vCPU exit error into the one-line message the user sees. Where
 * guest code is emulated it says so, keeping the exit reason, RIP and the
 * instruction bytes; elsewhere it adds the last kernel log line.
 */
export function explainExit(e: unknown, log: string, emulated: boolean): unknown {
  if (!(e instanceof VmExitError)) return e;
  // VmExitError's message is "guest stopped: REASON[ at RIP 0x…][ DETAIL]": keep DETAIL.
  const at = e.rip === undefined ? "" : ` at RIP 0x${e.rip.toString(16)}`;
  const head = `guest stopped: ${e.reason}${at}`;
  const detail = e.message.startsWith(head) ? e.message.slice(head.length).trim() : "";
  if (emulated) {
    return new VmExitError(
      `guest code is emulated on this host (kvm_pvm) and the kernel stopped on an instruction ` +
        `the emulator lacks: ${e.reason}`,
      e.rip,
      detail,
    );
  }
  return new VmExitError(`${e.reason}${lastLine(log)}`, e.rip, detail);
}
