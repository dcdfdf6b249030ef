/**
 * `skiff fuse mount HOST_DIR MOUNTPOINT [--ro] [--passthrough]`: serve a host directory
 * through /dev/fuse until it is unmounted or the process gets SIGINT/SIGTERM.
 *
 * @module
 */

import { mountDevFuse } from "./dev_fuse.ts";

/** Options of {@link fuseMountCommand}. */
export interface FuseMountArgs {
  hostDir: string;
  mountpoint: string;
  readOnly: boolean;
  /** FUSE_PASSTHROUGH for open files (dev_fuse.ts `passthrough`); default false. */
  passthrough?: boolean;
}

/** Exit code when a second SIGINT/SIGTERM cuts an orderly stop short. */
export const FORCED_EXIT = 1;

/**
 * Mounts, prints one line, waits for unmount or a signal (then unmounts its
 * own mount with MNT_DETACH, never one put on top of it), cleans up; resolves
 * to the exit code (0). A second signal while stopping exits at once with
 * {@link FORCED_EXIT}: the stop waits for a reader that may never end.
 */
export async function fuseMountCommand(a: FuseMountArgs): Promise<number> {
  const mount = await mountDevFuse({
    hostDir: a.hostDir,
    mountpoint: a.mountpoint,
    readOnly: a.readOnly,
    passthrough: a.passthrough ?? false,
  });
  console.error(
    `skiff fuse: serving ${a.hostDir} at ${a.mountpoint}${a.readOnly ? " (read-only)" : ""}${
      a.passthrough ? " with passthrough" : ""
    }; ` +
      `Ctrl-C or umount to stop`,
  );
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  let stopping: Promise<void> | null = null;
  const stop = () => {
    if (!stopping) {
      stopping = mount.close();
      return;
    }
    console.error("skiff fuse: stopping cut short by a second signal");
    Deno.exit(FORCED_EXIT);
  };
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    // Settles at the latest when close() ends, however it ends (dev_fuse.ts).
    const stats = await mount.done;
    if (Deno.env.get("SKIFF_DEBUG")) console.error("skiff fuse: server loop ended:", stats);
  } finally {
    await mount.close();
    for (const s of signals) Deno.removeSignalListener(s, stop);
  }
  if (mount.stopped === "covered") {
    console.error(
      `skiff fuse: left the mount at ${a.mountpoint} in place under the mount on top of it ` +
        `(unmounting by path would have removed that one); it is disconnected now: ` +
        `umount it once the one on top is gone`,
    );
  }
  return 0;
}
