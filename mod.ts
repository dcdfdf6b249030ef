/**
 * skiff's library: boot Linux micro-VMs from Deno programs and tests, run
 * commands in them, move files, capture and restore them.
 *
 * ```ts
 * import { VirtualMachine } from "./mod.ts";
 *
 * await using vm = await VirtualMachine.boot({ memoryMiB: 256 });
 * const r = await vm.exec(["uname", "-s"]);
 * console.log(r.stdoutText); // "Linux\n"
 * ```
 *
 * This module is the stable surface: {@link VirtualMachine}, its options and
 * results, and skiff's errors. The layers below are modules of their own,
 * importable by path and documented there (ARCHITECTURE.md draws them):
 * `hv/mod.ts` (the VMM core: memory, VM, vCPUs), `hv/kvm/mod.ts` and
 * `hv/qemu/engine.ts` (the engines), `devices/virtio/mod.ts`,
 * `devices/fuse/mod.ts`, `devices/net/mod.ts`, `devices/vhost_user/mod.ts`
 * (device models and back-ends), `init/mod.ts` and `init/agent/mod.ts` (the
 * guest init and its agent), `snapshot/mod.ts` (the snapshot format and
 * cache) and `image/mod.ts` (OCI images).
 *
 * @module
 */

export { VirtualMachine } from "./hv/library/virtual_machine.ts";
export type {
  ChildProcess,
  CommandOutput,
  ExecOptions,
  NetworkOptions,
  SpawnOptions,
  VirtualMachineOptions,
  VolumeOptions,
} from "./hv/library/virtual_machine.ts";
export type {
  GuestSignal,
  GuestUser,
  ProcessStatus,
  SnapshotRef,
  VmOrigin,
  VmStats,
} from "./hv/engine/types.ts";
export type { PortForward } from "./hv/config.ts";
export type { EngineChoice } from "./hv/library/select_engine.ts";
export {
  CommandTimeoutError,
  ConfigError,
  EngineUnavailableError,
  SkiffError,
  VmError,
  VmExitError,
  VmTimeoutError,
} from "./hv/errors.ts";
export {
  AgentError,
  AgentProtocolError,
  AgentRequestError,
  AgentStepError,
  FileTooLargeError,
} from "./init/agent/errors.ts";
export { SnapshotError } from "./snapshot/errors.ts";
