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

/**
 * Mounts, prints one line, waits for unmount or a signal (then unmounts
 * with MNT_DETACH), cleans up; resolves to the exit code (0).
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
  const stop = () => void mount.close();
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    const stats = await mount.done;
    if (Deno.env.get("SKIFF_DEBUG")) console.error("skiff fuse: server loop ended:", stats);
  } finally {
    await mount.close();
    for (const s of signals) Deno.removeSignalListener(s, stop);
  }
  return 0;
}
