/**
 * `skiff virtiofsd --socket-path PATH --shared-dir DIR [--ro]`: skiff's FUSE
 * server as a vhost-user virtio-fs back-end, a drop-in for the back-end of
 * QEMU's `vhost-user-fs-device` (same flags as virtiofsd for these options).
 * Serves one front-end connection, then exits — as virtiofsd does.
 *
 * @module
 */

import { resolve } from "node:path";
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
 * Whether a Unix socket bound to `path` is listening, from /proc/net/unix
 * (unix(7): the Flags column has __SO_ACCEPTCON, 0x10000, for a listening
 * socket). Not by connecting: a skiff virtiofsd serves the first front-end
 * that connects and ends when it leaves, so a probe would stop it.
 */
export function socketListening(path: string, table?: string): boolean {
  let text = table;
  try {
    text ??= Deno.readTextFileSync("/proc/net/unix");
  } catch {
    return false;
  }
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path
    if (f.length >= 8 && f.slice(7).join(" ") === path && (parseInt(f[3], 16) & 0x10000)) {
      return true;
    }
  }
  return false;
}

/**
 * Makes `path` free for the listening socket: nothing there is fine; a socket
 * nobody listens on (a killed daemon's) is removed; a live socket or any
 * other file is a {@link ConfigError}.
 */
export async function clearStaleSocket(path: string, table?: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket) throw new ConfigError(`--socket-path ${path} exists and is not a socket`);
  if (socketListening(resolve(path), table)) {
    throw new ConfigError(`--socket-path ${path} is in use by a running server`);
  }
  await Deno.remove(path); // left by a daemon that is gone: nobody listens on it
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
