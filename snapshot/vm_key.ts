/**
 * The snapshot-cache key of a VM configuration, for engines: everything that
 * shapes the booted state (kernel and initramfs contents, kernel command
 * line, the whole {@link VmConfig} except `verbose`, the devices' own
 * configuration, the snapshot format version and the VMM's version), and
 * nothing about the command to run.
 *
 * @module
 */

import { basename } from "node:path";
import type { VmConfig } from "../hv/config.ts";
import { snapshotKey } from "./cache.ts";
import { sha256Hex, type StateValue, toJsonData } from "./codec.ts";
import { contentHash } from "./content_hash.ts";
import { FORMAT_VERSION } from "./format.ts";

/** What {@link vmSnapshotKey} hashes. */
export interface VmKeyInput {
  /** Kernel image path (hashed by content, memoised by file identity). */
  kernelPath: string;
  /** The initramfs: its bytes (generated in memory) or a file path. */
  initramfs: Uint8Array | string;
  /** The full kernel command line. */
  cmdline: string;
  /** The VM configuration (`verbose` is ignored). */
  config: VmConfig;
  /** Each device's configuration (ids, addresses, IRQs, tags, queue sizes…), in order. */
  devices: unknown[];
  /**
   * Version of the VMM code whose state is saved (bump when device state or
   * guest-visible layout changes), so snapshots of an older skiff miss.
   */
  vmmVersion: string;
  /**
   * The engine the entry is for (`kvm`, `qemu`). Part of the key when given,
   * so two engines never share an entry; shown as `engine` in `source`.
   */
  engine?: string;
  /** Where the content-hash memo lives (default: skiff's cache directory). */
  memoDir?: string;
}

/** The key and the `source` description `skiff snapshot list` shows. */
export interface VmKey {
  key: string;
  /** Everything that went into the key. */
  parts: Record<string, unknown>;
  /** Short description for `state.json`'s `source`. */
  source: Record<string, StateValue>;
}

/** Computes the cache key of a VM configuration. */
export async function vmSnapshotKey(input: VmKeyInput): Promise<VmKey> {
  const kernelSha256 = await contentHash(input.kernelPath, input.memoDir);
  const initramfsSha256 = typeof input.initramfs === "string"
    ? await contentHash(input.initramfs, input.memoDir)
    : sha256Hex(input.initramfs);
  const { verbose: _verbose, ...config } = input.config;
  const parts = {
    ...(input.engine === undefined ? {} : { engine: input.engine }),
    format: FORMAT_VERSION,
    vmm: input.vmmVersion,
    kernelSha256,
    initramfsSha256,
    cmdline: input.cmdline,
    config: toJsonData(config),
    devices: toJsonData(input.devices),
  };
  const source: Record<string, StateValue> = {
    ...(input.engine === undefined ? {} : { engine: input.engine }),
    kernel: `${basename(input.kernelPath)}@${kernelSha256.slice(0, 12)}`,
    initramfs: initramfsSha256.slice(0, 12),
    mem: `${input.config.memoryMiB}MiB`,
    cpus: input.config.cpus,
    devices: input.devices.length,
    cmdline: input.cmdline,
    // An image root's manifest digest is in the key through `config.root.image`.
    ...(input.config.root?.image
      ? { image: input.config.root.image.manifestDigest.slice(0, 19) }
      : {}),
  };
  return { key: snapshotKey(parts), parts, source };
}
