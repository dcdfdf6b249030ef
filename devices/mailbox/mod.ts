/**
 * The host mailbox: an MMIO register page plus a data region outside the
 * e820 map, through which the VMM hands the guest init compiled payloads and
 * command records and reads back their results. The protocol is in
 * `init/MAILBOX.md`; the init's side is `init/mailbox_loop.ts`.
 *
 * @example
 * ```ts
 * import { Mailbox } from "./mod.ts";
 * import { compilePayload } from "../../init/codegen/mod.ts";
 * import { exit, seq } from "../../init/ir/mod.ts";
 * declare const vm: import("../../hv/vm.ts").Vm;
 * using mailbox = new Mailbox();
 * mailbox.attach(vm); // MMIO page at 0xd000_0000, data slot at 0xd020_0000
 * await vm.start();
 * mailbox.failWhen(vm.wait()); // a stopped VM ends every wait
 * await mailbox.ready({ timeoutMs: 60_000 }); // the snapshot point
 * const r = await mailbox.runPayload(compilePayload({ body: seq(exit(42)) }).bytes);
 * ```
 *
 * @module
 */

export {
  MAILBOX_LAYOUT,
  MAILBOX_MAGIC,
  MAILBOX_VERSION,
  MailboxRegisters,
  MB_CMD,
  MB_IMAGE_SIZE,
  MB_REG,
  MB_STATE,
  MB_WINDOW_SIZE,
} from "./registers.ts";
export type { MailboxCommandKind, MailboxEvent } from "./registers.ts";
export { Mailbox } from "./mailbox.ts";
export type { MailboxCallOptions, MailboxOptions, MailboxSnapshot, MailboxVm } from "./mailbox.ts";
export type { MailboxDeviceConfig, MailboxMessage } from "./device.ts";
