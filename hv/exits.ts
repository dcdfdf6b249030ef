/**
 * Decoding `kvm_run` after `KVM_RUN` returns into a {@link VcpuExit}
 * discriminated union, and turning fatal exits into messages that say which
 * exit and where.
 *
 * @module
 */

import {
  KVM_EXIT,
  KVM_EXIT_IO,
  KVM_INTERNAL_ERROR,
  KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
  KVM_RUN_LAYOUT,
  KVM_SYSTEM_EVENT,
} from "../kvm_ffi/kvm_sys.ts";

/** Why the vCPU left `KVM_RUN`. `data` fields are zero-copy views into `kvm_run`. */
export type VcpuExit =
  | { kind: "io_in"; port: number; size: number; count: number; data: Uint8Array }
  | { kind: "io_out"; port: number; size: number; count: number; data: Uint8Array }
  | { kind: "mmio_read"; addr: number; len: number; data: Uint8Array }
  | { kind: "mmio_write"; addr: number; len: number; data: Uint8Array }
  | { kind: "hlt" }
  | { kind: "shutdown" }
  | { kind: "intr" }
  | { kind: "irq_window_open" }
  | { kind: "system_event"; type: number; typeName: string; data: bigint[] }
  | {
    kind: "internal_error";
    suberror: number;
    suberrorName: string;
    data: bigint[];
    /** Instruction bytes KVM reported (emulation failures with the bytes flag). */
    insnBytes?: Uint8Array;
  }
  | { kind: "fail_entry"; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: "unknown"; reason: number; reasonName: string; hardwareExitReason: bigint };

const F = KVM_RUN_LAYOUT.fields;

function nameOf(table: Record<string, number>, value: number, prefix: string): string {
  for (const [k, v] of Object.entries(table)) if (v === value) return `${prefix}${k}`;
  return `${prefix}${value}`;
}

/** `KVM_EXIT_*` name of an exit reason number. */
export function exitReasonName(reason: number): string {
  return nameOf(KVM_EXIT, reason, "KVM_EXIT_");
}

/** `KVM_INTERNAL_ERROR_*` name of a sub-error. */
export function internalErrorName(suberror: number): string {
  return nameOf(KVM_INTERNAL_ERROR, suberror, "KVM_INTERNAL_ERROR_");
}

/** `KVM_SYSTEM_EVENT_*` name of a system-event type. */
export function systemEventName(type: number): string {
  return nameOf(KVM_SYSTEM_EVENT, type, "KVM_SYSTEM_EVENT_");
}

/** Decodes the exit in `run` (the vCPU's `kvm_run` bytes; `view` is a DataView over them). */
export function decodeExit(run: Uint8Array, view: DataView): VcpuExit {
  const reason = view.getUint32(F.exit_reason, true);
  switch (reason) {
    case KVM_EXIT.IO: {
      const size = run[F["io.size"]];
      const count = view.getUint32(F["io.count"], true);
      const off = Number(view.getBigUint64(F["io.data_offset"], true));
      if (size === 0 || off + size * count > run.byteLength) {
        return {
          kind: "unknown",
          reason,
          reasonName: "KVM_EXIT_IO (bad data_offset)",
          hardwareExitReason: 0n,
        };
      }
      const data = run.subarray(off, off + size * count);
      const port = view.getUint16(F["io.port"], true);
      return run[F["io.direction"]] === KVM_EXIT_IO.OUT
        ? { kind: "io_out", port, size, count, data }
        : { kind: "io_in", port, size, count, data };
    }
    case KVM_EXIT.MMIO: {
      const len = Math.min(view.getUint32(F["mmio.len"], true), 8);
      const addr = Number(view.getBigUint64(F["mmio.phys_addr"], true));
      const data = run.subarray(F["mmio.data"], F["mmio.data"] + len);
      return run[F["mmio.is_write"]]
        ? { kind: "mmio_write", addr, len, data }
        : { kind: "mmio_read", addr, len, data };
    }
    case KVM_EXIT.HLT:
      return { kind: "hlt" };
    case KVM_EXIT.SHUTDOWN:
      return { kind: "shutdown" };
    case KVM_EXIT.INTR:
      return { kind: "intr" };
    case KVM_EXIT.IRQ_WINDOW_OPEN:
      return { kind: "irq_window_open" };
    case KVM_EXIT.SYSTEM_EVENT: {
      const type = view.getUint32(F["system_event.type"], true);
      const n = Math.min(view.getUint32(F["system_event.ndata"], true), 16);
      const data: bigint[] = [];
      for (let i = 0; i < n; i++) {
        data.push(view.getBigUint64(F["system_event.data"] + 8 * i, true));
      }
      return { kind: "system_event", type, typeName: systemEventName(type), data };
    }
    case KVM_EXIT.INTERNAL_ERROR: {
      const suberror = view.getUint32(F["internal.suberror"], true);
      const n = Math.min(view.getUint32(F["internal.ndata"], true), 16);
      const data: bigint[] = [];
      for (let i = 0; i < n; i++) data.push(view.getBigUint64(F["internal.data"] + 8 * i, true));
      const exit: VcpuExit = {
        kind: "internal_error",
        suberror,
        suberrorName: internalErrorName(suberror),
        data,
      };
      // struct emulation_failure: flags (u64), insn_size (u8), insn_bytes[15].
      if (
        suberror === KVM_INTERNAL_ERROR.EMULATION && n >= 2 &&
        (data[0] & BigInt(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) !== 0n
      ) {
        const size = Math.min(run[F["emulation_failure.insn_size"]], 15);
        const at = F["emulation_failure.insn_bytes"];
        exit.insnBytes = run.slice(at, at + size);
      }
      return exit;
    }
    case KVM_EXIT.FAIL_ENTRY:
      return {
        kind: "fail_entry",
        hardwareEntryFailureReason: view.getBigUint64(
          F["fail_entry.hardware_entry_failure_reason"],
          true,
        ),
        cpu: view.getUint32(F["fail_entry.cpu"], true),
      };
    default:
      return {
        kind: "unknown",
        reason,
        reasonName: exitReasonName(reason),
        hardwareExitReason: view.getBigUint64(F["hw.hardware_exit_reason"], true),
      };
  }
}

/** Hex bytes separated by spaces (`0f 0b`). */
export function hexBytes(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** What a fatal exit is called in errors, e.g. `triple fault (KVM_EXIT_SHUTDOWN)`. */
export function fatalExitReason(exit: VcpuExit): string {
  switch (exit.kind) {
    case "shutdown":
      return "triple fault (KVM_EXIT_SHUTDOWN)";
    case "internal_error":
      return exit.suberror === KVM_INTERNAL_ERROR.EMULATION
        ? "emulation failure (KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION)"
        : `internal error (KVM_EXIT_INTERNAL_ERROR, ${exit.suberrorName})`;
    case "fail_entry":
      return `failed entry (KVM_EXIT_FAIL_ENTRY, hardware reason 0x${
        exit.hardwareEntryFailureReason.toString(16)
      })`;
    case "unknown":
      return `unhandled exit ${exit.reasonName} (${exit.reason})`;
    default:
      return `unexpected exit ${exit.kind}`;
  }
}
