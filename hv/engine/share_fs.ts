/**
 * The FUSE back-end behind a {@link Share}, the same for both engines: the
 * share's host directory with its policy (read-only, not crossing mount
 * points, hidden paths) served with the invoking user's rights.
 *
 * @module
 */

import { relative } from "node:path";
import type { Share } from "../config.ts";
import { PassthroughFs } from "../../devices/fuse/passthrough.ts";

/** A passthrough file system for `share`; the caller closes it after the VM. */
export function shareFileSystem(share: Share): PassthroughFs {
  return new PassthroughFs(share.hostPath, {
    readOnly: share.readOnly,
    crossMounts: !share.stayOnDevice,
    // Hidden paths are host paths; the server wants them relative to the share.
    hide: (share.hide ?? []).map((h) => relative(share.hostPath, h)).filter((h) =>
      h && !h.startsWith("..")
    ),
    credentials: { uid: Deno.uid() ?? 0, gid: Deno.gid() ?? 0 },
  });
}
