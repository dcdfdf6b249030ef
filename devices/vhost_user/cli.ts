/**
 * `skiff virtiofsd --socket-path PATH --shared-dir DIR [--ro]`: skiff's FUSE
 * server as a vhost-user virtio-fs back-end, a drop-in for the back-end of
 * QEMU's `vhost-user-fs-device` (same flags as virtiofsd for these options).
 * Serves one front-end connection, then exits — as virtiofsd does.
 *
 * @module
 */

import { ConfigError } from "../../hv/errors.ts";
import { FuseServer } from "../fuse/server.ts";
import { PassthroughFs } from "../fuse/passthrough.ts";
import { VirtioFs } from "../virtio/fs/device.ts";
import { VhostUserVirtioServer } from "./virtio_backend.ts";

/** Options of {@link virtiofsdCommand}. */
export interface VirtiofsdArgs {
  socketPath: string;
  sharedDir: string;
  readOnly: boolean;
}

/**
 * Makes `path` free for the listening socket: nothing there is fine; a socket
 * nobody listens on (a killed daemon's) is removed; a live socket or any
 * other file is a {@link ConfigError}.
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket) throw new ConfigError(`--socket-path ${path} exists and is not a socket`);
  try {
    (await Deno.connect({ transport: "unix", path })).close();
  } catch {
    await Deno.remove(path); // left by a daemon that is gone: nobody answers on it
    return;
  }
  throw new ConfigError(`--socket-path ${path} is in use by a running server`);
}

/** Serves until the front-end disconnects or SIGINT/SIGTERM; resolves to the exit code. */
export async function virtiofsdCommand(a: VirtiofsdArgs): Promise<number> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(a.sharedDir);
  } catch {
    throw new ConfigError(`--shared-dir ${a.sharedDir} does not exist`);
  }
  if (!st.isDirectory) throw new ConfigError(`--shared-dir ${a.sharedDir} is not a directory`);
  await clearStaleSocket(a.socketPath);
  // The same virtio-fs device model the engines use, through the vhost-user
  // adapter. QEMU's vhost-user-fs-device keeps the tag in its own config space
  // (`tag=` on its command line): this one is not read.
  const device = new VirtioFs({
    tag: "skiff",
    server: new FuseServer(new PassthroughFs(a.sharedDir, { readOnly: a.readOnly })),
  });
  const server = new VhostUserVirtioServer(a.socketPath, device, {
    once: true,
    log: (m) => console.error(`skiff virtiofsd: ${m}`),
  });
  console.error(
    `skiff virtiofsd: serving ${a.sharedDir}${a.readOnly ? " (read-only)" : ""} on ${a.socketPath}`,
  );
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const stop = () => void server.close();
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    await server.done;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
    await server.close();
    await Deno.remove(a.socketPath).catch(() => {});
  }
  console.error(`skiff virtiofsd: done (${device.requests} FUSE requests served)`);
  return 0;
}
