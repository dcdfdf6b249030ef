/**
 * FUSE for skiff: the wire protocol, a transport-agnostic dispatching
 * server, the `FileSystem` interface, a passthrough backend over a host
 * directory, and the `/dev/fuse` transport. virtio-fs (devices/virtio) and
 * vhost-user serve the same {@link FuseServer}.
 *
 * ## Feeding a server (any transport)
 *
 * ```ts
 * const fs = new PassthroughFs("/srv/share", { readOnly: true });
 * const server = new FuseServer(fs, { maxWrite: 1 << 20 });
 * // request = whole FUSE request: fuse_in_header + arguments (+ WRITE data)
 * const reply = server.handle(request);          // Uint8Array | null (no reply: FORGET, BATCH_FORGET, INTERRUPT)
 * const n = server.handleInto(request, out);     // reply written into `out`, length returned (0 = none)
 * const m = server.handleV(request, [hdrSeg, dataSeg1, dataSeg2]); // scattered (virtqueue writable descriptors)
 * ```
 *
 * - Everything is synchronous and single-threaded per server; call it from
 *   one thread (a Worker for /dev/fuse; the device thread for virtio-fs).
 * - `request` must hold the whole request; `len` in its header may be
 *   shorter than the buffer (the rest is ignored). WRITE data is passed to
 *   the backend as a zero-copy view into `request`.
 * - READ replies go straight into `out` / the `iov` segments (pread /
 *   preadv into them, no intermediate copy). A reply that does not fit gets
 *   an ERANGE error reply; READ/READDIR are clipped to the room given.
 * - Size buffers with `server.requestBufferSize` / `server.replyBufferSize`.
 * - Nothing throws out of `handle*`: malformed requests get error replies.
 * - `server.save()` / `server.restore(state)` carry the negotiated protocol
 *   and the backend's node/handle tables across a snapshot (JSON-able).
 *
 * ## Passthrough options
 *
 * `new PassthroughFs(root, { readOnly, crossMounts, hide, credentials, entryTimeout, attrTimeout })`:
 * `readOnly` → EROFS for every mutation; `crossMounts: false` → directories
 * on another mount show as empty, other files on another mount are hidden;
 * `hide: ["home", "root"]` → those paths (relative to root) do not exist;
 * `credentials: { uid, gid }` → every host call runs with that fsuid/fsgid
 * (the user's rights). See `passthrough.ts`.
 *
 * ## /dev/fuse
 *
 * `mountDevFuse({ hostDir, mountpoint, ...options })` mounts and serves in a
 * Worker; `await mount.close()` unmounts. See `dev_fuse.ts`.
 *
 * @module
 */

export * from "./protocol.ts";
export * from "./filesystem.ts";
export * from "./server.ts";
