/**
 * virtio-fs (virtio 1.2 §5.11) as a {@link VhostUserDevice}: queue 0 is the
 * high-priority queue, the rest are request queues. Each chain's readable
 * part is one FUSE request (in header + arguments + WRITE data) and its
 * writable part receives the reply (out header + payload) — the same
 * {@link FuseServer} answers `/dev/fuse` and skiff's in-process virtio-fs.
 *
 * The guest's vCPUs run while QEMU's guest memory is mapped here, so each
 * request is copied once into VMM-private memory and the server parses only
 * that copy (devices/virtio/fs/device.ts explains the double fetch this
 * prevents); replies are written into the guest's buffers and never read back.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import type { FuseServer } from "../fuse/server.ts";
import { RequestBuffer } from "../virtio/chain.ts";
import type { Queue } from "../virtio/queue.ts";
import type { VhostUserDevice } from "./backend.ts";

/** A virtio-fs device whose requests a {@link FuseServer} answers. */
export class VirtioFsDevice implements VhostUserDevice {
  readonly numQueues: number;
  readonly maxQueueSize = 1024;
  /** virtio-fs defines no device feature bits in virtio 1.2 besides notification (unused). */
  readonly features = 0n;
  readonly server: FuseServer;
  /** FUSE requests answered. */
  requests = 0;
  #request: RequestBuffer;

  /** @param requestQueues number of request queues (QEMU's `num-request-queues`, default 1) */
  constructor(server: FuseServer, requestQueues = 1) {
    this.server = server;
    this.#request = new RequestBuffer(server.requestBufferSize);
    this.numQueues = 1 + requestQueues;
  }

  process(_index: number, queue: Queue, mem: GuestMemory): boolean {
    let used = false;
    for (let chain = queue.pop(mem); chain; chain = queue.pop(mem)) {
      // Copied once, then parsed: the server never sees a view of guest memory.
      const request = this.#request.copy(mem, chain);
      const iov = chain.writable.filter((s) => s.len > 0).map((s) => mem.slice(s.addr, s.len));
      const n = this.server.handleV(request, iov);
      this.requests++;
      queue.addUsed(mem, chain.head, n);
      used = true;
    }
    return used;
  }
}
