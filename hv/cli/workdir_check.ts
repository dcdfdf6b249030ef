/**
 * `skiff run --workdir DIR` checked on the host before anything boots, where
 * the host can tell: a guest whose root is the host's `/` sees the host's
 * directories (read-only) and the volumes, so a directory the host lacks, or
 * one under a hidden path (/home, /root), would only fail inside the guest —
 * after the boot, as the agent's `chdir … ENOENT` and exit 126.
 *
 * @module
 */

import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import { guestMountPoint, type Share } from "../config.ts";

/** Whether `path` is at or under `dir` (both absolute). */
function within(path: string, dir: string): boolean {
  const p = guestMountPoint(path), d = guestMountPoint(dir);
  return d === "/" || p === d || p.startsWith(`${d}/`);
}

function isDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Throws a {@link ConfigError} when `workdir` (absolute, in the guest) cannot
 * be a directory of a guest with `root` (the host's `/`) and `volumes`. A
 * directory on another host file system under `/` (shown empty in the guest)
 * is not looked into; the guest reports that one.
 */
export function checkWorkdir(workdir: string, root: Share, volumes: readonly Share[]): void {
  const flag = `--workdir ${workdir}`;
  const vol = volumes
    .filter((v) => within(workdir, v.guestPath))
    .sort((a, b) => guestMountPoint(b.guestPath).length - guestMountPoint(a.guestPath).length)[0];
  if (vol) {
    const host = join(
      vol.hostPath,
      guestMountPoint(workdir).slice(guestMountPoint(vol.guestPath).length),
    );
    if (!isDir(host)) {
      throw new ConfigError(`${flag}: no such directory (${host} on the host, in a shared volume)`);
    }
    return;
  }
  const hidden = root.hide?.find((h) => within(workdir, h));
  if (hidden) {
    throw new ConfigError(
      `${flag}: ${hidden} is not shared into the guest (share the directory with --volume)`,
    );
  }
  if (!isDir(join(root.hostPath, workdir))) {
    throw new ConfigError(`${flag}: no such directory (the guest's root is the host's /)`);
  }
}
