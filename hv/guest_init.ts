/**
 * The guest init's side of a VM configuration, shared by both engines: which
 * virtio-fs tag is the root, which shares the init mounts where, the console
 * port names, and the one-shot command.
 *
 * @module
 */

import type { VmConfig, Workload } from "./engine.ts";
import type { KernelInfo } from "./kernel/mod.ts";
import { buildInitramfs, DEFAULT_PORTS, type InitConfig } from "../init/mod.ts";

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
    net: null,
    command: {
      argv: workload.argv,
      env: Object.entries(workload.env).map(([k, v]) => `${k}=${v}`),
      cwd: workload.workdir,
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
