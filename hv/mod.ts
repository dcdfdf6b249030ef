/**
 * skiff's VMM core: guest memory, the VM and its vCPUs (one Worker each,
 * synchronous `KVM_RUN`), exits, buses and the device plug-in interface.
 * x86 long-mode setup is `hv/x86/mod.ts`. See `hv/README.md` for how the
 * pieces fit.
 *
 * @module
 */

export { GuestMemoryError, MappedRegion, RegionMemory } from "./memory.ts";
export type { GuestMemory, MemoryRegion } from "./memory.ts";
export { Vm } from "./vm.ts";
export type { VmOptions, VmStop } from "./vm.ts";
export { closePrepared, memorySlots, prepareVmAsync } from "./prepared_vm.ts";
export type { PreparedVm } from "./prepared_vm.ts";
export { Vcpu } from "./vcpu.ts";
export { VcpuWorker, VcpuWorkerPool, vcpuWorkers } from "./vcpu_worker.ts";
export type { VcpuWorkerListener } from "./vcpu_worker.ts";
export type { DeviceMessageHandler, RunState } from "./vcpu.ts";
export type { VcpuStop } from "./worker_protocol.ts";
export { Bus, BusError, mmioBus, portBus } from "./bus.ts";
export type { BusDevice, BusRange } from "./bus.ts";
export type {
  AddressRange,
  DeviceContext,
  DeviceFactory,
  DeviceSpec,
  DeviceStopRequest,
  WorkerDevice,
} from "./device.ts";
export { decodeExit, exitReasonName, fatalExitReason } from "./exits.ts";
export type { VcpuExit } from "./exits.ts";
export { KICK_SIGNAL } from "./kick.ts";
export { VmExitError } from "./errors.ts";
