/**
 * The kvm engine (skiff's own VMM over /dev/kvm): the engine (engine.ts) and
 * its boot of the guest agent (agent_boot.ts), resources (plan.ts), devices
 * (device_manager.ts with their snapshot records in device_records.ts, host
 * back-ends in backends.ts), building a machine (builder.ts), snapshot
 * restore (persist.ts), the emulated-KVM handling (emulated.ts) and
 * `skiff boot --console-log` (console_boot.ts).
 *
 * @module
 */

export { KvmEngine } from "./engine.ts";
export type { KvmEngineOptions } from "./engine.ts";
export { buildKvmMachine } from "./builder.ts";
export type { KvmMachine } from "./builder.ts";
export type { RestoredKvmMachine } from "./persist.ts";
export type {
  DeviceKind,
  DeviceRecord,
  KvmDevices,
  Placement,
  VirtioSlot,
} from "./device_manager.ts";
export { DeviceManager } from "./device_manager.ts";
export { restoreDevices } from "./device_records.ts";
export type { DeviceBackends } from "./backends.ts";
export {
  baseCmdline,
  KVM_VMM_VERSION,
  VIRTIO_BASE,
  VIRTIO_GSI_BASE,
  VIRTIO_STRIDE,
} from "./plan.ts";
export type { MachineOptions } from "./plan.ts";
export { EMULATED_KVM_CMDLINE, EMULATED_NOTE, explainExit, isEmulatedKvm } from "./emulated.ts";
export { bootWithConsoleLog } from "./console_boot.ts";
export type { ConsoleBootOptions, ConsoleBootResult } from "./console_boot.ts";
