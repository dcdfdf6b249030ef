/**
 * The host resources behind the kvm engine's devices: a FUSE server per
 * share (its directory, with the share's policy) and skiff's network stack.
 * They belong to the run, not to a snapshot: the engine hands them to the
 * device manager, which asks for the one a device needs when it constructs
 * it — from the plan on a cold boot, from the snapshot's record on a
 * restore. Each is made on first use and released with the machine.
 *
 * @module
 */

import { FuseServer } from "../../devices/fuse/server.ts";
import { NetStack } from "../../devices/net/service.ts";
import { ConfigError } from "../errors.ts";
import type { Share } from "../config.ts";
import { shareFileSystem } from "../engine/share_fs.ts";
import type { MachinePlan } from "./plan.ts";

/** What the device manager may ask the engine for. */
export interface DeviceBackends {
  /** The FUSE server for the share tagged `tag`, or null when the run has no such share. */
  fs(tag: string): FuseServer | null;
  /** The network stack, or null when the run has no network. */
  net(): NetStack | null;
}

/** The back-ends of plan `p`; `cleanups` gets their release. */
export function planBackends(
  p: MachinePlan,
  cleanups: (() => void | Promise<void>)[],
): DeviceBackends {
  const shares = new Map<string, Share>(p.shares.map((s) => [s.tag, s]));
  const servers = new Map<string, FuseServer>();
  let stack: NetStack | null = null;
  return {
    fs(tag) {
      const share = shares.get(tag);
      if (!share) return null;
      let server = servers.get(tag);
      if (!server) {
        const fs = shareFileSystem(share);
        cleanups.push(() => fs.close());
        server = new FuseServer(fs);
        servers.set(tag, server);
      }
      return server;
    },
    net() {
      const options = p.workload ? p.config.net : undefined;
      if (!options) return null;
      if (!stack) {
        let s: NetStack;
        try {
          // Binds the --publish ports now: a taken one fails before the guest runs.
          s = new NetStack({
            hostLoopback: options.hostLoopback,
            publish: options.publish.map((r) => ({
              hostIp: r.hostIp,
              hostPort: r.hostPort,
              guestPort: r.guestPort,
              proto: r.protocol,
            })),
          });
        } catch (e) {
          throw new ConfigError((e as Error).message, { cause: e });
        }
        s.ready.catch((e) => console.error(`skiff: ${(e as Error).message}`));
        cleanups.push(() => s[Symbol.asyncDispose]());
        stack = s;
      }
      return stack;
    },
  };
}
