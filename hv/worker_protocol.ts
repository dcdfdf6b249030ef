/**
 * Messages and shared control words between a {@link Vcpu} on the main
 * thread and its Worker (`worker.ts`).
 *
 * Once the Worker runs its synchronous `KVM_RUN` loop it never returns to its
 * event loop, so the main thread cannot message it: commands travel through
 * the control SharedArrayBuffer ({@link CTL}) plus a kick (see `kick.ts`).
 * The Worker can still post to the main thread at any time.
 *
 * @module
 */

import type { RawVcpu } from "../kvm_ffi/kvm.ts";
import type { DeviceSpec } from "./device.ts";

/** Int32 indices in the control buffer. */
export const CTL = {
  /** Host command: {@link CMD}. */
  CMD: 0,
  /** Worker-reported state: {@link STATE}. */
  STATE: 1,
  /** The vCPU thread's tid (for the kick). */
  TID: 2,
  /** Count of exits handled (diagnostics, benchmarks). */
  EXITS: 3,
} as const;
/** Bytes of the control buffer. */
export const CTL_BYTES = 16;

/** Host commands in `CTL.CMD`. */
export const CMD = { RUN: 0, PAUSE: 1, STOP: 2 } as const;

/** Worker states in `CTL.STATE`. */
export const STATE = { STARTING: 0, RUNNING: 1, PAUSED: 2, EXITED: 3 } as const;

/** One guest memory region as the Worker maps it (the same host pages). */
export interface RawRegion {
  guestAddr: number;
  size: number;
  hostAddr: bigint;
}

/** First and only message main → Worker. */
export interface WorkerInit {
  vcpu: RawVcpu;
  vmFd: number;
  memory: RawRegion[];
  devices: DeviceSpec[];
  control: SharedArrayBuffer;
}

/** How a vCPU's run ended (plain data: posted from the Worker). */
export type VcpuStop =
  /** The host asked it to stop. */
  | { kind: "stopped" }
  /** The guest executed HLT and no in-kernel irqchip could wake it. */
  | { kind: "hlt"; rip: bigint }
  /** Guest reboot: i8042 reset, `KVM_SYSTEM_EVENT_RESET`. */
  | { kind: "reset"; source: string }
  /** Guest power-off: `KVM_SYSTEM_EVENT_SHUTDOWN` or a device (with an exit code). */
  | { kind: "poweroff"; source: string; code?: number }
  /** A fatal exit or failure: which, and where. */
  | { kind: "error"; reason: string; rip?: bigint; detail?: string };

/** Messages Worker → main. */
export type WorkerMessage =
  | { type: "running"; tid: number }
  | { type: "paused" }
  | { type: "resumed" }
  | { type: "device"; name: string; message: unknown }
  | { type: "stopped"; stop: VcpuStop };
