/**
 * The guest init's side of a VM configuration, shared by both engines: which
 * virtio-fs tag is the root, which shares the init mounts where, the console
 * port names, and the one-shot command.
 *
 * @module
 */

import type { VmConfig, Workload } from "../config.ts";
import type { KernelInfo } from "../kernel/mod.ts";
import { buildInitramfs, DEFAULT_PORTS, type InitConfig } from "../../init/mod.ts";

/** Guest-side addresses of the `--net` network: the stack's defaults. */
export const GUEST_NET = { address: "10.42.0.2", gateway: "10.42.0.1" } as const;

/** The init's configuration for running `workload` in a VM built from `config`. */
export function initConfigFor(config: VmConfig, workload: Workload): InitConfig {
  return {
    rootTag: config.root?.tag ?? null,
    shares: config.volumes.map((s) => ({
      tag: s.tag,
      guestPath: s.guestPath,
      readOnly: s.readOnly,
    })),
    hostname: config.hostname,
    ports: DEFAULT_PORTS,
    // The user-mode stack's fixed addresses (devices/net defaults).
    net: config.net
      ? {
        address: GUEST_NET.address,
        prefixLength: 24,
        gateway: GUEST_NET.gateway,
        dns: GUEST_NET.gateway,
      }
      : null,
    command: {
      argv: workload.argv,
      env: Object.entries(workload.env).map(([k, v]) => `${k}=${v}`),
      cwd: workload.workdir,
      ...(workload.user ? { user: workload.user } : {}),
    },
  };
}

/** The gzip'd initramfs (skiff's init, kernel modules, the command record) for one run. */
export function guestInitramfs(
  kernel: KernelInfo,
  config: VmConfig,
  workload: Workload,
): Promise<Uint8Array> {
  return buildInitramfs({ kernel, config: initConfigFor(config, workload) });
}
