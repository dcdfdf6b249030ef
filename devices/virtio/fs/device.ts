/**
 * virtio-fs (virtio 1.2 §5.11): FUSE requests on virtqueues, answered by
 * skiff's {@link FuseServer} (devices/fuse). Queue 0 is the high-priority
 * queue (FORGET, INTERRUPT), queues 1.. are request queues. Each chain holds a
 * whole FUSE request in its device-readable buffers and room for the reply
 * in its device-writable ones (§5.11.6).
 *
 * The guest's vCPUs keep running while a request is served, so the request
 * is copied once into VMM-private memory and the server parses only that
 * copy (it reads names and lengths more than once: on a view of guest
 * memory a vCPU could turn a checked name into `../x` between the check and
 * the use). Replies are written straight into the guest's buffers and never
 * read back.
 *
 * @module
 */

import { parseVirtioFsState } from "./persist.ts";
import type { FuseServer, FuseServerState } from "../../fuse/server.ts";
import { RequestBuffer } from "../chain.ts";
import { DEVICE_ID, type DeviceContext, type VirtioDevice } from "../device.ts";
import type { DescriptorChain } from "../queue.ts";

/** §5.11.4: the tag field is 36 bytes, NUL-padded (not terminated when 36 long). */
export const FS_TAG_LEN = 36;
/** Queue size offered for each queue. */
const QUEUE_SIZE = 256;

/** Options of {@link VirtioFs}. */
export interface VirtioFsOptions {
  /** Mount tag (`mount -t virtiofs TAG /mnt`), 1..36 bytes of UTF-8. */
  tag: string;
  /** The FUSE server answering requests. */
  server: FuseServer;
  /** Number of request queues (default 1). */
  requestQueues?: number;
}

/** Serialisable virtio-fs state. */
export interface VirtioFsState {
  server: FuseServerState;
}

/** The virtio-fs device. */
export class VirtioFs implements VirtioDevice {
  readonly deviceType = DEVICE_ID.FS;
  readonly queueMaxSizes: readonly number[];
  /** No device-specific features (VIRTIO_FS_F_NOTIFICATION is not offered). */
  readonly features = 0n;
  readonly tag: string;
  readonly server: FuseServer;
  #tag: Uint8Array;
  #ctx: DeviceContext | null = null;
  #request: RequestBuffer;
  /** Requests served (for tests and diagnostics). */
  requests = 0;

  constructor(opts: VirtioFsOptions) {
    const tag = new TextEncoder().encode(opts.tag);
    if (tag.length === 0 || tag.length > FS_TAG_LEN) {
      throw new RangeError(`virtio-fs tag ${JSON.stringify(opts.tag)} must be 1..36 bytes`);
    }
    const n = opts.requestQueues ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > 64) {
      throw new RangeError(`virtio-fs request queue count ${n} is not in 1..64`);
    }
    this.tag = opts.tag;
    this.#tag = tag;
    this.server = opts.server;
    this.#request = new RequestBuffer(opts.server.requestBufferSize);
    this.queueMaxSizes = Array.from({ length: 1 + n }, () => QUEUE_SIZE);
  }

  readConfig(offset: number, data: Uint8Array): void {
    // §5.11.4: u8 tag[36]; le32 num_request_queues; (le32 notify_buf_size with F_NOTIFICATION).
    const cfg = new Uint8Array(FS_TAG_LEN + 4);
    cfg.set(this.#tag);
    new DataView(cfg.buffer).setUint32(FS_TAG_LEN, this.queueMaxSizes.length - 1, true);
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  writeConfig(): void {
    // §5.11.4: the config space is read-only for the driver.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
  }

  reset(): void {
    this.#ctx = null;
  }

  queueNotify(index: number): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    const q = ctx.queues[index];
    let any = false;
    for (let c = q.pop(ctx.mem); c; c = q.pop(ctx.mem)) {
      const n = this.#serve(ctx, c);
      q.addUsed(ctx.mem, c.head, n);
      any = true;
    }
    if (any) ctx.signalUsed(index);
  }

  /** One request → reply written into the chain's writable buffers; returns the reply length. */
  #serve(ctx: DeviceContext, c: DescriptorChain): number {
    this.requests++;
    // Copied once, then parsed: never a view of guest memory (see the module doc).
    const request = this.#request.copy(ctx.mem, c);
    // Views of the writable buffers: the reply (and READ data, by preadv) goes
    // straight to the guest; the server only writes them.
    const iov = c.writable.filter((s) => s.len > 0).map((s) => ctx.mem.slice(s.addr, s.len));
    // FORGET / BATCH_FORGET / INTERRUPT take no reply: handleV returns 0.
    if (iov.length === 0) {
      this.server.handle(request);
      return 0;
    }
    return this.server.handleV(request, iov);
  }

  save(): VirtioFsState {
    return { server: this.server.save() };
  }

  restore(state: unknown): void {
    this.server.restore(parseVirtioFsState(state).server);
  }
}
