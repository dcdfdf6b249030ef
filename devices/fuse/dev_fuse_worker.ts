/**
 * Worker entry for {@link mountDevFuse}: one `/dev/fuse` reader.
 *
 * The primary builds the share and its server in this thread and runs the
 * blocking request loop; a helper attaches to the primary's shared state
 * ({@link PassthroughFs.attach}) and serves its clone of the connection when
 * the primary's {@link OverflowGate} wakes it.
 *
 * Messages in: a {@link WorkerStart} (primary) or {@link HelperStart}, then
 * "serve" for the primary once mount(2) succeeded (reading /dev/fuse before
 * gives EPERM). Out: `{ type: "ready", share? }`, `{ type: "done", stats }`
 * or `{ type: "error", message }`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { PassthroughFs, type PassthroughOptions, type PassthroughShare } from "./passthrough.ts";
import { LayeredFs } from "./layered.ts";
import { FuseServer } from "./server.ts";
import { SpliceSender } from "./dev_fuse_splice.ts";
import { DevFuseBacking } from "./dev_fuse_backing.ts";
import { OverflowGate, serveDevFuse, serveOverflow } from "./dev_fuse_loop.ts";

/** The primary's start message. */
export interface WorkerStart {
  role: "primary";
  fd: number;
  hostDir: string;
  /** Image layers to serve merged instead of `hostDir`. */
  layers?: string[];
  options: PassthroughOptions;
  maxWrite: number;
  /** The gate: wakes helpers (if any) and shows the mount's close() the primary's progress. */
  gate?: SharedArrayBuffer;
  /** Splice large READ replies (`dev_fuse_splice.ts`). */
  splice?: boolean;
  /** Offer FUSE_PASSTHROUGH (`dev_fuse_backing.ts`). */
  passthrough?: boolean;
}

/** A helper's start message. */
export interface HelperStart {
  role: "helper";
  /** A non-blocking clone of the connection. */
  fd: number;
  share: PassthroughShare;
  maxWrite: number;
  gate: SharedArrayBuffer;
  /** Splice large READ replies (`dev_fuse_splice.ts`). */
  splice?: boolean;
  /** Offer FUSE_PASSTHROUGH (`dev_fuse_backing.ts`). */
  passthrough?: boolean;
}

/** How long the primary waits for helpers to finish their last request before closing the share. */
const HELPERS_GRACE_MS = 10_000;

let fs: PassthroughFs | LayeredFs | null = null;
let server: FuseServer | null = null;
let gate: OverflowGate | undefined;
let fd = -1;
let sender: SpliceSender | null = null;

/** A splice sender for `/dev/fuse` fd `devFd` if asked for and a pipe can be had. */
function spliceFor(
  devFd: number,
  want: boolean | undefined,
  maxWrite: number,
): SpliceSender | null {
  return want ? SpliceSender.open(devFd, maxWrite) : null;
}

function fail(err: unknown): void {
  self.postMessage({ type: "error", message: err instanceof Error ? err.message : String(err) });
}

self.onmessage = (e: MessageEvent<WorkerStart | HelperStart | "serve">) => {
  try {
    const m = e.data;
    if (m === "serve") {
      const stats = serveDevFuse(fd, server!, gate);
      if (gate) {
        gate.stop();
        gate.waitHelpers(HELPERS_GRACE_MS);
      }
      fs!.close();
      sender?.close();
      self.postMessage({ type: "done", stats });
      return;
    }
    if (m.role === "helper") {
      const helperGate = new OverflowGate(m.gate);
      let serving = false;
      let stats;
      try {
        const mine = PassthroughFs.attach(m.share);
        const own = spliceFor(m.fd, m.splice, m.maxWrite);
        const srv = new FuseServer(mine, {
          maxWrite: m.maxWrite,
          readSender: own ?? undefined,
          backing: m.passthrough ? new DevFuseBacking(m.fd) : undefined,
        });
        self.postMessage({ type: "ready" });
        serving = true; // from here serveOverflow leaves the gate itself
        stats = serveOverflow(m.fd, srv, helperGate);
        mine.close();
        own?.close();
      } catch (err) {
        if (!serving) helperGate.leave();
        throw err;
      }
      self.postMessage({ type: "done", stats });
      return;
    }
    fd = m.fd;
    if (m.gate) gate = new OverflowGate(m.gate);
    const passthrough = m.layers ? null : new PassthroughFs(m.hostDir, m.options);
    fs = passthrough ?? new LayeredFs({ layers: m.layers! });
    sender = spliceFor(fd, m.splice, m.maxWrite);
    server = new FuseServer(fs, {
      maxWrite: m.maxWrite,
      readSender: sender ?? undefined,
      backing: passthrough && m.passthrough ? new DevFuseBacking(fd) : undefined,
    });
    self.postMessage({ type: "ready", share: passthrough?.share() });
  } catch (err) {
    fail(err);
  }
};
