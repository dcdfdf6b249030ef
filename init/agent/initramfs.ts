/**
 * The agent's initramfs: `/init` is the agent ELF, `/skiff/agent-boot` its
 * boot record (the module paths in load order), and the kernel modules for
 * vsock, virtio-mmio and virtio-pci (the qemu engine hot-plugs PCI devices
 * after READY), the console, virtio-fs, overlayfs and the network — resolved
 * through `modules.dep` as `init/initramfs.ts` does. Nothing per run is in
 * it: the image is the same for every command, working directory and share,
 * so one snapshot taken at READY serves them all.
 *
 * @module
 */

import type { KernelInfo } from "../../hv/kernel/mod.ts";
import { compileElf } from "../codegen/mod.ts";
import { gzip, writeCpio } from "../cpio.ts";
import { extraEntries, type ExtraFile, initramfsBase } from "../initramfs.ts";
import { moduleLoadOrder } from "../module_order.ts";
import { agentProgram } from "./program.ts";
import { AGENT_BOOT_PATH } from "./protocol.ts";
import { encodeBootRecord } from "./wire.ts";
import { AGENT_MODULES } from "./modules.ts";

let agentElf: Uint8Array | undefined;

/** The agent init ELF (VM variant; reads its boot record at run time; compiled once per process). */
export function buildAgentInitElf(): Uint8Array {
  agentElf ??= compileElf(agentProgram()).bytes;
  return agentElf.slice();
}

/** Options of {@link agentInitramfs}. */
export interface AgentInitramfsOptions {
  /** Module names to load instead of {@link AGENT_MODULES}. */
  modules?: readonly string[];
  /** More files (absolute guest paths); a later file of the same path replaces an earlier one. */
  extraFiles?: ExtraFile[];
}

/**
 * The gzip'd initramfs of the agent for `kernel`: two concatenated cpio
 * archives, the fixed part (/init, modules) cached per process, then the
 * boot record and extra files.
 */
export async function agentInitramfs(
  kernel: KernelInfo,
  o: AgentInitramfsOptions = {},
): Promise<Uint8Array> {
  const order = await moduleLoadOrder(kernel, o.modules ?? AGENT_MODULES);
  const { gz, modules } = await initramfsBase(kernel, order, "agent", buildAgentInitElf);
  const tail = await gzip(writeCpio(extraEntries([
    { path: AGENT_BOOT_PATH, data: encodeBootRecord(modules) },
    ...(o.extraFiles ?? []),
  ])));
  const out = new Uint8Array(gz.length + tail.length);
  out.set(gz);
  out.set(tail, gz.length);
  return out;
}
