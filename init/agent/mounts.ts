/**
 * Host-side helper for SETUP: the mount list of skiff's usual guest root — a
 * read-only lower layer (a virtio-fs tag, waited for because the device may
 * be hot-plugged after READY) under a tmpfs upper through overlayfs, with
 * /dev, /proc and /sys bound in and fresh /tmp and /run — as the one-shot
 * init builds it before its switch root. The agent does not switch root:
 * commands `chroot` into {@link OverlayRootOptions.at} (EXEC's `root`).
 *
 * @module
 */

import type { MountSpec } from "./wire.ts";

/** mount(2) flags (include/uapi/linux/mount.h). */
const MS = { RDONLY: 1, NOSUID: 2, NODEV: 4, BIND: 4096, REC: 16384 } as const;

/** Options of {@link overlayRootMounts}. */
export interface OverlayRootOptions {
  /**
   * The read-only lower layer: a virtio-fs tag (mounted read-only, waited for
   * `waitMs`, default 10 s), or any mount entry without its target (a bind mount, in tests).
   */
  lower: { tag: string; waitMs?: number } | Omit<MountSpec, "target">;
  /** Where the merged root is mounted (default `/mnt/root`). */
  at?: string;
  /** Directory for the lower and upper layers (default `/mnt/layers`). */
  layers?: string;
}

/** The SETUP mount entries of an overlay root (see the module doc). */
export function overlayRootMounts(o: OverlayRootOptions): MountSpec[] {
  const at = o.at ?? "/mnt/root";
  const layers = o.layers ?? "/mnt/layers";
  const lowerDir = `${layers}/lower`;
  const lower: MountSpec = "tag" in o.lower
    ? {
      source: o.lower.tag,
      target: lowerDir,
      fsType: "virtiofs",
      flags: MS.RDONLY,
      waitMs: o.lower.waitMs ?? 10_000,
    }
    : { ...o.lower, target: lowerDir };
  return [
    lower,
    { source: "tmpfs", target: `${layers}/rw`, fsType: "tmpfs", data: "mode=0755" },
    { target: `${layers}/rw/upper`, mkdirOnly: true },
    { target: `${layers}/rw/work`, mkdirOnly: true },
    {
      source: "overlay",
      target: at,
      fsType: "overlay",
      data: `lowerdir=${lowerDir},upperdir=${layers}/rw/upper,workdir=${layers}/rw/work`,
    },
    // The agent's pseudo file systems, with their submounts (/dev/pts, /dev/shm).
    ...["/dev", "/proc", "/sys"].map((p) => ({
      source: p,
      target: `${at}${p}`,
      flags: MS.BIND | MS.REC,
    })),
    {
      source: "tmpfs",
      target: `${at}/tmp`,
      fsType: "tmpfs",
      flags: MS.NOSUID | MS.NODEV,
      data: "mode=1777",
    },
    {
      source: "tmpfs",
      target: `${at}/run`,
      fsType: "tmpfs",
      flags: MS.NOSUID | MS.NODEV,
      data: "mode=0755",
    },
  ];
}
