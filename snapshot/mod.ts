/**
 * Snapshots of running VMs: the on-disk format (see FORMAT.md), atomic
 * publish, validated reading, and the cache keyed by VM configuration.
 *
 * @module
 */

export { SnapshotError, type SnapshotProblem } from "./errors.ts";
export {
  FORMAT_VERSION,
  MEMORY_FILE,
  type MemoryInfo,
  type MemoryLayoutRegion,
  PAGE_SIZE,
  type RawState,
  SNAPSHOT_MAGIC,
  type SnapshotManifest,
  type SnapshotState,
  STATE_FILE,
} from "./format.ts";
export type { StateValue } from "./codec.ts";
export { mapMemoryFile, writeMemoryFile } from "./memory_file.ts";
export {
  openSnapshotMemory,
  publishDir,
  type PublishResult,
  type ReadOptions,
  readSnapshot,
  type Snapshot,
  type SnapshotContents,
  verifySnapshotMemory,
  writeSnapshot,
} from "./store.ts";
export {
  type CacheEntry,
  defaultSnapshotDir,
  SnapshotCache,
  type SnapshotCacheOptions,
  snapshotKey,
  type SnapshotKeyParts,
} from "./cache.ts";
export { contentHash, fileSha256 } from "./content_hash.ts";
export { MAX_READY, RestorePool, restorePool } from "./restore_pool.ts";
export {
  completePendingIo,
  detectFeatures,
  type KvmFeatures,
  restoreVcpuState,
  restoreVmState,
  saveVcpuState,
  saveVmState,
} from "./kvm_state.ts";
export {
  captureState,
  captureVm,
  type MachineParts,
  type Persist,
  type RestoreContext,
  restoreState,
  type RestoreSteps,
  restoreVm,
  restoreVmAsync,
  saveableMsrs,
} from "./vm_snapshot.ts";
export { bootCached, type BootCachedOptions, type BootCachedResult } from "./boot_cached.ts";
export {
  captureHvVm,
  type HvCaptureOptions,
  hvMachineParts,
  type HvRestoreBuild,
  type HvRestoreContext,
  type HvRestored,
  type HvRestoreOptions,
  restoreHvVm,
} from "./hv_snapshot.ts";
export { type VmKey, type VmKeyInput, vmSnapshotKey } from "./vm_key.ts";
export {
  isQemuEntry,
  QEMU_ENTRY_VERSION,
  QEMU_MANIFEST,
  QEMU_RAM_FILE,
  QEMU_STATE_FILE,
  type QemuEntry,
  type QemuEntryContents,
  type QemuEntryManifest,
  readQemuEntry,
  type ReadQemuEntryOptions,
  writeQemuEntry,
  writeQemuEntryInWorker,
} from "./qemu_entry.ts";
export { copySparse, type SparseCopyResult } from "./sparse_copy.ts";
