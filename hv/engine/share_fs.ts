/**
 * The FUSE back-end behind a {@link Share}, the same for both engines: the
 * share's host directory with its policy (read-only, not crossing mount
 * points, hidden paths) served with the invoking user's rights — or, for an
 * image root, the image's layers merged read-only (devices/fuse/layered.ts).
 *
 * @module
 */

import { relative } from "node:path";
import type { Share } from "../config.ts";
import { PassthroughFs } from "../../devices/fuse/passthrough.ts";
import { LayeredFs } from "../../devices/fuse/layered.ts";

/** A share's FUSE back-end: a FileSystem the caller closes after the VM. */
export type ShareBackend = PassthroughFs | LayeredFs;

/**
 * The file system for `share`: an image's layers merged read-only, or a
 * passthrough of its host directory; the caller closes it after the VM.
 */
export function shareFileSystem(share: Share): ShareBackend {
  if (share.image) return new LayeredFs({ layers: share.image.layers });
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
