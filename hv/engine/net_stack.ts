/**
 * The user-mode network stack behind a VM's `--net`: both engines build it
 * the same way, before the guest runs, so that a taken `--publish` port fails
 * the boot with a configuration error instead of surfacing later.
 *
 * @module
 */

import { ConfigError } from "../errors.ts";
import type { NetOptions } from "../config.ts";
import { NetStack } from "../../devices/net/service.ts";

/**
 * Starts the stack for `net` (binding its `--publish` ports now). A port that
 * cannot be bound, or an invalid rule, is a {@link ConfigError} naming it.
 * The caller awaits `ready` and closes the stack.
 */
export function startNetStack(net: NetOptions): NetStack {
  try {
    return new NetStack({
      hostLoopback: net.hostLoopback,
      publish: net.publish.map((p) => ({
        hostIp: p.hostIp,
        hostPort: p.hostPort,
        guestPort: p.guestPort,
        proto: p.protocol,
      })),
    });
  } catch (e) {
    throw new ConfigError((e as Error).message, { cause: e });
  }
}
