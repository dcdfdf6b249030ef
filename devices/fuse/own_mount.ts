/**
 * Which mount and which FUSE connection are a `/dev/fuse` server's own, so
 * that stopping it unmounts and aborts only those: a path may by then lead
 * to another mount (one mounted on top, or over a parent directory), and
 * `/sys/fs/fuse/connections` (fusectl) lists every process's connections,
 * including those of other mount namespaces and of lazily detached mounts.
 *
 * The mount is identified right after mount(2) by its line in
 * `/proc/self/mountinfo` (mount id and device number; the device's minor is
 * the FUSE connection id, fs/fuse/control.c); at stop, a statx of the path
 * that sends no FUSE request (AT_STATX_DONT_SYNC) tells which mount the path
 * leads to now.
 *
 * @module
 */

import { AT, cpath, r, STATX, STATX_OFF, sys } from "./sys.ts";

/** One line of `/proc/self/mountinfo` (proc_pid_mountinfo(5)). */
export interface MountEntry {
  /** Mount id (field 1; what statx reports as `stx_mnt_id` for STATX_MNT_ID). */
  id: number;
  /** The parent mount's id. */
  parent: number;
  /** `major:minor` of the file system; for FUSE the minor is the connection id. */
  dev: string;
  /** Where it is mounted, unescaped. */
  mountpoint: string;
  /** File system type (`fuse.skiff`). */
  fstype: string;
}

/** Undoes mountinfo's octal escapes (`\040` for a space, proc_pid_mountinfo(5)). */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}

/** The well-formed lines of mountinfo text, in order (later lines are newer mounts). */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    // id parent maj:min root mountpoint options [optional…] - fstype source super-options
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (sep < 0 || f.length < sep + 2 || !/^\d+:\d+$/.test(f[2])) continue;
    const id = Number(f[0]), parent = Number(f[1]);
    if (!Number.isInteger(id) || !Number.isInteger(parent)) continue;
    out.push({ id, parent, dev: f[2], mountpoint: unescape(f[4]), fstype: f[sep + 1] });
  }
  return out;
}

/**
 * The newest mount of type `fstype` at `mountpoint` in mountinfo text, or
 * null: read right after our mount(2) succeeded, that is ours.
 */
export function newestMount(
  mountinfo: string,
  mountpoint: string,
  fstype: string,
): MountEntry | null {
  let found: MountEntry | null = null;
  for (const m of parseMountinfo(mountinfo)) {
    if (m.mountpoint === mountpoint && m.fstype === fstype) found = m;
  }
  return found;
}

/** What stopping does with its own mount (see {@link unmountAction}). */
export type UnmountAction =
  /** The path leads to our mount: lazily unmount it by path. */
  | "unmount"
  /** Ours is still mounted but the path leads elsewhere (covered or moved): leave both. */
  | "covered"
  /** Ours is no longer mounted here (someone unmounted it): nothing to unmount. */
  | "gone";

/**
 * Decides how to stop `own`: `mountinfo` is the current text, `resolved`
 * the mount id the mount point's path leads to now (null if unknown: statx
 * has no STATX_MNT_ID before Linux 5.8). Mount ids are reused, so ours is
 * still there only if id and device both match. Without `resolved`, ours is
 * on top unless a mount listed after it (a newer one) sits at its mount
 * point or above it.
 */
export function unmountAction(
  mountinfo: string,
  own: MountEntry,
  resolved: number | null,
): UnmountAction {
  const mounts = parseMountinfo(mountinfo);
  const at = mounts.findIndex((m) => m.id === own.id && m.dev === own.dev);
  if (at < 0) return "gone";
  if (resolved !== null) return resolved === own.id ? "unmount" : "covered";
  const covers = (m: MountEntry) =>
    m.mountpoint === own.mountpoint || m.mountpoint === "/" ||
    own.mountpoint.startsWith(`${m.mountpoint}/`);
  return mounts.slice(at + 1).some(covers) ? "covered" : "unmount";
}

/**
 * The fusectl connections (names under `/sys/fs/fuse/connections`) to abort
 * when stopping: only our own connection, the minor of our mount's device,
 * if it is listed; never another process's.
 */
export function connectionsToAbort(own: MountEntry | null, listed: Iterable<string>): string[] {
  if (!own) return [];
  const id = own.dev.split(":")[1];
  return [...listed].filter((name) => name === id);
}

const AT_NO_AUTOMOUNT = 0x800;
/** Take cached attributes: no FUSE request, which a stuck server would never answer. */
const AT_STATX_DONT_SYNC = 0x4000;

/**
 * The id of the mount `path` leads to now (statx STATX_MNT_ID, no symlink
 * followed at the end, no FUSE request), or null if it cannot be told.
 */
export function resolvedMountId(path: string): number | null {
  const buf = new Uint8Array(STATX_OFF.size_of);
  const rc = r(
    sys.statx(
      AT.FDCWD,
      cpath(path),
      AT.SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC,
      STATX.MNT_ID,
      buf,
    ),
  );
  if (rc < 0) return null;
  const v = new DataView(buf.buffer);
  if ((v.getUint32(STATX_OFF.mask, true) & STATX.MNT_ID) === 0) return null;
  return Number(v.getBigUint64(STATX_OFF.mnt_id, true));
}
