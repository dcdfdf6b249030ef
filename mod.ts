/**
 * skiff's library API: boot Linux micro-VMs from Deno programs and tests.
 *
 * @module
 */

export { VirtualMachine } from "./hv/library/virtual_machine.ts";
export type {
  RunCallOptions,
  RunResult,
  VirtualMachineOptions,
  VolumeOptions,
} from "./hv/library/virtual_machine.ts";
export {
  ConfigError,
  EngineUnavailableError,
  SkiffError,
  VmError,
  VmExitError,
  VmTimeoutError,
} from "./hv/errors.ts";
export { exitCodeOf } from "./hv/config.ts";
export type { ConsoleIO, Engine, WorkloadIO } from "./hv/engine/types.ts";
export type { ExitStatus, Share, VmConfig, Workload } from "./hv/config.ts";
export { chooseEngine, selectEngine } from "./hv/library/select_engine.ts";
export type { EngineChoice } from "./hv/library/select_engine.ts";
export { QemuEngine } from "./hv/qemu/engine.ts";
export { GuestMemoryError, MappedRegion, RegionMemory } from "./hv/memory.ts";
export { vcpuWorkers } from "./hv/vcpu_worker.ts";
export type { GuestMemory, MemoryRegion } from "./hv/memory.ts";
export { SysError } from "./kvm_ffi/libc.ts";
export {
  bootCached,
  captureHvVm,
  restoreHvVm,
  SnapshotCache,
  SnapshotError,
  snapshotKey,
} from "./snapshot/mod.ts";
export type { Persist, SnapshotProblem } from "./snapshot/mod.ts";
export { Mailbox, MAILBOX_LAYOUT, MB_CMD, MB_STATE } from "./devices/mailbox/mod.ts";
export type { MailboxCallOptions, MailboxOptions, MailboxSnapshot } from "./devices/mailbox/mod.ts";
export {
  buildInitElf,
  buildInitramfs,
  DEFAULT_PORTS,
  defaultInitConfig,
  encodeRecord,
  parseStatusLine,
} from "./init/mod.ts";
export type {
  InitCommand,
  InitConfig,
  InitNet,
  InitPorts,
  InitShare,
  InitStatus,
  RecordSpec,
} from "./init/mod.ts";
export { MAILBOX_DATA_VA, mailboxLoop, mailboxProgram } from "./init/mailbox_loop.ts";
export type { MailboxLoopOptions, MailboxProgramOptions } from "./init/mailbox_loop.ts";
export {
  buildMailboxInitElf,
  MAILBOX_INIT_PATH,
  MAILBOX_RDINIT,
  mailboxBootProgram,
  mailboxInitramfs,
} from "./init/mailbox_mode.ts";
export type { MailboxBootOptions } from "./init/mailbox_mode.ts";
export { buildKvmMachine, isEmulatedKvm, KvmEngine } from "./hv/kvm/mod.ts";
export type {
  KvmDevices,
  KvmEngineOptions,
  KvmMachine,
  MachineOptions,
  RestoredKvmMachine,
  SnapshotOutcome,
} from "./hv/kvm/mod.ts";
export { bootWithConsoleLog } from "./hv/kvm/mod.ts";
export type { ConsoleBootOptions, ConsoleBootResult } from "./hv/kvm/mod.ts";
export { buildAcpiTables, writeAcpiTables } from "./hv/acpi/mod.ts";
export { sleepSpec } from "./devices/legacy/mod.ts";
export type { AcpiOptions, AcpiTables, AcpiVirtioDevice } from "./hv/acpi/mod.ts";
export {
  attachVirtioNet,
  listenStream,
  NetStack,
  parsePublish,
  serveStream,
  serveTapInNetns,
} from "./devices/net/mod.ts";
export type {
  NetConfig,
  NetCounters,
  NetLink,
  PublishRule,
  StreamListener,
} from "./devices/net/mod.ts";
export {
  DigestMismatchError,
  imageCommand,
  ImageRunError,
  ImageStore,
  parseReference,
  prepareImage,
  PullError,
  pullImage,
  UnpackError,
} from "./image/mod.ts";
export type { ImageRecord, ImageRef, PreparedImage, PullOptions } from "./image/mod.ts";
export { LayeredFs } from "./devices/fuse/layered.ts";
export type { LayeredOptions } from "./devices/fuse/layered.ts";
