/**
 * The readahead of a `/dev/fuse` mount's backing device (bdi).
 *
 * A FUSE client reads a file through the page cache in READ requests no
 * larger than the readahead window: `max_readahead` in the INIT reply can
 * only lower the bdi's default (VM_READAHEAD_PAGES, 128 KiB; fs/fuse/inode.c
 * process_init_reply takes the minimum), so a server that negotiated 1 MiB
 * `max_pages` still gets 128 KiB READs, eight round trips per MiB. Root may
 * raise the window through sysfs (`/sys/class/bdi/<maj>:<min>/read_ahead_kb`,
 * Documentation/ABI/stable/sysfs-class-bdi), which the kernel then uses for
 * files opened on the mount afterwards (file_ra_state_init).
 *
 * The device number comes from `/proc/self/mountinfo`, not from a `stat` of
 * the mount point: that would be a FUSE request the caller's own server must
 * answer first.
 *
 * @module
 */

import { newestMount } from "./own_mount.ts";

/**
 * The `major:minor` of the last mount at `mountpoint` with file system type
 * `fstype` in mountinfo text, or null. Later lines are newer mounts: the
 * last match is the one on top.
 */
export function mountDevice(mountinfo: string, mountpoint: string, fstype: string): string | null {
  return newestMount(mountinfo, mountpoint, fstype)?.dev ?? null;
}

/**
 * Sets the readahead window of the mount at `mountpoint` (type `fstype`) to
 * `kib` KiB; returns null, or why it could not (no such mount, not root,
 * no sysfs): the mount works either way, with the kernel's default window.
 */
export function setMountReadahead(mountpoint: string, fstype: string, kib: number): string | null {
  if (!Number.isInteger(kib) || kib < 0) return `readahead ${kib} KiB is not a whole number`;
  try {
    const dev = mountDevice(Deno.readTextFileSync("/proc/self/mountinfo"), mountpoint, fstype);
    if (!dev) return `no ${fstype} mount at ${mountpoint} in /proc/self/mountinfo`;
    Deno.writeTextFileSync(`/sys/class/bdi/${dev}/read_ahead_kb`, `${kib}\n`);
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}
