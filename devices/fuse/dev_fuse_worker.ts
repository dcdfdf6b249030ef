/**
 * Worker entry for {@link mountDevFuse}: builds the passthrough share and
 * its server in this thread and runs the blocking `/dev/fuse` loop.
 *
 * Messages: in `{ fd, hostDir, options, maxWrite }`; out
 * `{ type: "done", stats }` or `{ type: "error", message }`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { PassthroughFs, type PassthroughOptions } from "./passthrough.ts";
import { LayeredFs } from "./layered.ts";
import { FuseServer } from "./server.ts";
import { serveDevFuse } from "./dev_fuse_loop.ts";

/** The start message. */
export interface WorkerStart {
  fd: number;
  hostDir: string;
  /** Image layers to serve merged instead of `hostDir`. */
  layers?: string[];
  options: PassthroughOptions;
  maxWrite: number;
}

let fs: PassthroughFs | LayeredFs | null = null;
let server: FuseServer | null = null;

// Two messages: the start message builds the share (errors such as a bad root are reported
// before mounting); "serve" comes after mount(2): reading /dev/fuse before that gives EPERM.
self.onmessage = (e: MessageEvent<WorkerStart | "serve">) => {
  try {
    if (e.data === "serve") {
      const stats = serveDevFuse(fd, server!);
      fs!.close();
      self.postMessage({ type: "done", stats });
      return;
    }
    const { hostDir, layers, options, maxWrite } = e.data;
    fd = e.data.fd;
    fs = layers ? new LayeredFs({ layers }) : new PassthroughFs(hostDir, options);
    server = new FuseServer(fs, { maxWrite });
    self.postMessage({ type: "ready" });
  } catch (err) {
    self.postMessage({ type: "error", message: err instanceof Error ? err.message : String(err) });
  }
};
let fd = -1;
