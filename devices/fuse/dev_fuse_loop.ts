/**
 * The synchronous `/dev/fuse` request loop: blocking `read` of one request,
 * {@link FuseServer.handleInto}, `write` of the reply. Runs on a Worker
 * (see `dev_fuse.ts`) so the blocking read never stalls an event loop; one
 * request costs two FFI calls plus the backend's syscalls.
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { FuseServer } from "./server.ts";
import { r, sys } from "./sys.ts";

/** Counters of a finished loop. */
export interface LoopStats {
  requests: number;
  /** Why the loop ended: "unmounted" (ENODEV) or an errno name. */
  reason: string;
}

/**
 * Serves `fd` (an open `/dev/fuse` or a clone of it) until the connection
 * ends (unmount → ENODEV). Blocks the calling thread.
 */
export function serveDevFuse(fd: number, server: FuseServer): LoopStats {
  const req = new Uint8Array(Math.max(server.requestBufferSize, 8192 + 4096));
  const out = new Uint8Array(server.replyBufferSize);
  let requests = 0;
  for (;;) {
    const n = r(sys.read(fd, req, BigInt(req.length)));
    if (n < 0) {
      // EINTR: a signal; ENOENT: the request was interrupted before we read it.
      if (n === -Errno.EINTR || n === -Errno.EAGAIN || n === -Errno.ENOENT) continue;
      return { requests, reason: n === -Errno.ENODEV ? "unmounted" : `errno ${-n}` };
    }
    requests++;
    const m = server.handleInto(req.subarray(0, n), out);
    if (m > 0) {
      // ENOENT here means the client gave up on the request (interrupted): nothing to do.
      sys.write(fd, out, BigInt(m));
    }
  }
}
