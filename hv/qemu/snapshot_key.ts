/**
 * The snapshot-cache key of a qemu-engine VM: the shared rules of
 * snapshot/vm_key.ts (kernel content, initramfs identity, kernel command
 * line, the VM configuration) plus what only the qemu engine has: the
 * machine description (QEMU's arguments without host paths: machine type,
 * memory backend, root ports, cold-plugged devices — hv/qemu/cmdline.ts
 * `machineDescription`), the QEMU binary's content (a new QEMU build, or
 * another version, is another key: migration streams are only loaded by the
 * QEMU that wrote them), the entry format's version and the engine name.
 *
 * What is hot-plugged after a restore (virtio-fs shares, vsock, the NIC) is
 * not in the machine description, and the configuration's `root`, `volumes`
 * and `net` are left out of the key too: one entry serves every working
 * directory, volume set and network choice. (The guest must then learn its
 * mounts and network after the restore, from the agent.)
 *
 * @module
 */

import type { VmConfig } from "../config.ts";
import { contentHash } from "../../snapshot/content_hash.ts";
import { QEMU_ENTRY_VERSION } from "../../snapshot/qemu_entry.ts";
import { type VmKey, vmSnapshotKey } from "../../snapshot/vm_key.ts";
import { machineDescription, type QemuLaunchSpec } from "./cmdline.ts";
import { QEMU_BINARY } from "./process.ts";

/**
 * Version of what skiff puts into a qemu entry and expects of the machine
 * (bump when the guest-visible machine or the capture procedure changes).
 */
export const QEMU_SNAPSHOT_VERSION = "qemu-snap-1";

/** What {@link qemuSnapshotKey} hashes. */
export interface QemuKeyInput {
  /** Kernel image path (hashed by content, memoised by file identity). */
  kernelPath: string;
  /** The initramfs: its bytes, a file path, or an identity encoded as bytes. */
  initramfs: Uint8Array | string;
  /** The VM configuration (`verbose`, `root`, `volumes` and `net` are ignored: hot-plugged). */
  config: VmConfig;
  /** The launch spec as it will be started (paths do not matter). */
  launch: QemuLaunchSpec;
  /** QEMU binary, a path or a name on PATH (default `qemu-system-x86_64`). */
  binary?: string;
  /** Where the content-hash memo lives (default: skiff's cache directory). */
  memoDir?: string;
}

/** `name` resolved on PATH (or itself when it has a slash); throws when not found. */
export function resolveBinary(name: string): string {
  if (name.includes("/")) return name;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    const path = `${dir}/${name}`;
    try {
      const st = Deno.statSync(path);
      if (st.isFile && ((st.mode ?? 0) & 0o111)) return path;
    } catch {
      // not in this directory
    }
  }
  throw new Error(`${name} is not on PATH`);
}

/** Computes the cache key of a qemu-engine VM. */
export async function qemuSnapshotKey(input: QemuKeyInput): Promise<VmKey> {
  const binary = resolveBinary(input.binary ?? QEMU_BINARY);
  // Through symlinks (Debian's /usr/bin/qemu-system-x86_64 is the file itself,
  // but alternatives may link it): hash what runs.
  const qemuSha256 = await contentHash(Deno.realPathSync(binary), input.memoDir);
  const machine = machineDescription(input.launch);
  const append = machine[machine.indexOf("-append") + 1];
  const { root: _root, volumes: _volumes, net: _net, ...booted } = input.config;
  const key = await vmSnapshotKey({
    kernelPath: input.kernelPath,
    initramfs: input.initramfs,
    cmdline: append,
    config: { ...booted, root: null, volumes: [], net: null },
    devices: [{ machine }],
    vmmVersion: `${QEMU_SNAPSHOT_VERSION}/entry-${QEMU_ENTRY_VERSION}/qemu-${qemuSha256}`,
    engine: "qemu",
    memoDir: input.memoDir,
  });
  key.source.qemu = `${binary}@${qemuSha256.slice(0, 12)}`;
  return key;
}
