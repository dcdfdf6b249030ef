/**
 * The agent's boot-failure line on the guest console (`AGENT_BOOT_ERROR_PREFIX`
 * and the step that failed, e.g. `vsock socket: EAFNOSUPPORT`) as the error
 * an engine reports, with what to do where the cause is known.
 *
 * @module
 */

import { AGENT_BOOT_ERROR_PREFIX } from "../../init/agent/protocol.ts";
import { VmError } from "../errors.ts";

/**
 * Causes the agent cannot tell itself: a step and errno, and what they mean
 * for the user. EAFNOSUPPORT from socket(AF_VSOCK) means no vsock transport
 * was loaded: a `--kernel` given without its `--modules`, or one built
 * without virtio-vsock.
 */
const HINTS: { step: RegExp; hint: string }[] = [
  {
    step: /^vsock socket: EAFNOSUPPORT$/,
    hint: "the kernel has no virtio-vsock: with --kernel, also pass --modules DIR (its " +
      "lib/modules/<release> directory), or use a kernel with CONFIG_VIRTIO_VSOCKETS built in",
  },
];

/** The failure reported in `console` (text seen so far), or null while there is none. */
export function initFailure(console: string): VmError | null {
  const at = console.indexOf(AGENT_BOOT_ERROR_PREFIX);
  const end = at < 0 ? -1 : console.indexOf("\n", at);
  if (end < 0) return null;
  const step = console.slice(at + AGENT_BOOT_ERROR_PREFIX.length, end).trim();
  const hint = HINTS.find((h) => h.step.test(step))?.hint;
  return new VmError(`the guest init failed at ${step}${hint ? ` (${hint})` : ""}`);
}
