/**
 * skiff's library API: boot Linux micro-VMs from Deno programs and tests.
 *
 * @module
 */

export { GuestMemoryError, RegionMemory } from "./hv/memory.ts";
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
export { MAILBOX_DATA_VA, mailboxLoop, mailboxProgram } from "./init/mailbox_loop.ts";
export type { MailboxLoopOptions, MailboxProgramOptions } from "./init/mailbox_loop.ts";
