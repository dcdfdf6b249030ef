/**
 * skiff's guest agent: the long-lived init (`program.ts`, the same protocol
 * on both engines — `AGENT.md`), its initramfs, and the host client.
 *
 * @example
 * ```ts ignore
 * import { AgentClient, agentInitramfs, AGENT_READY_MARKER } from "./mod.ts";
 * // Boot a VM with `await agentInitramfs(kernel)`, wait for AGENT_READY_MARKER
 * // on its console, then talk to it over the VM's vsock transport:
 * declare const transport: import("./mod.ts").AgentTransport;
 * const agent = new AgentClient(transport);
 * await agent.setup({ hostname: "box", mounts: [{ source: "tmpfs", target: "/scratch", fsType: "tmpfs" }] });
 * const { code, stdoutText } = await agent.exec(["uname", "-a"]);
 * ```
 *
 * @module
 */

export {
  AGENT_BOOT_ERROR_PREFIX,
  AGENT_BOOT_PATH,
  AGENT_PORT,
  AGENT_PROTOCOL_VERSION,
  AGENT_READY_MARKER,
  GUEST_CID,
  HOST_CID,
  LIMITS,
} from "./protocol.ts";
export { agentProgram } from "./program.ts";
export type { AgentOptions } from "./program.ts";
export { agentInitramfs, buildAgentInitElf } from "./initramfs.ts";
export { AGENT_MODULES } from "./modules.ts";
export type { AgentInitramfsOptions } from "./initramfs.ts";
export { AGENT_DEFAULT_PATH, AgentChild, AgentClient, parseStats, signalNumber } from "./client.ts";
export type {
  AgentExecOptions,
  AgentExecResult,
  AgentReadFileOptions,
  AgentSignal,
  AgentSpawnOptions,
  AgentStats,
  AgentStatus,
  AgentWriteFileOptions,
} from "./client.ts";
export type { AgentConnection, AgentListener, AgentTransport } from "./transport.ts";
export { UnixConnection, UnixTransport } from "./unix_transport.ts";
export { AgentError, AgentProtocolError, AgentRequestError, AgentStepError } from "./errors.ts";
export { overlayRootMounts } from "./mounts.ts";
export type { OverlayRootOptions } from "./mounts.ts";
export { encodeBootRecord, parseReply } from "./wire.ts";
export type { MountSpec, NetSpec, Reply, SetupFileSpec, SetupSpec } from "./wire.ts";
