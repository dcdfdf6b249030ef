/**
 * Backing files of a `/dev/fuse` connection (FUSE_PASSTHROUGH, Linux 6.9+):
 * the server names an open host file in its OPEN reply and the client reads
 * and writes it itself (fs/fuse/passthrough.c), so READ and WRITE requests
 * of that file never reach the server. Registering a file needs
 * CAP_SYS_ADMIN (the mount already needs root); ids belong to the
 * connection, so any reader's fd (a clone included) may close any id.
 *
 * @module
 */

import type { BackingFiles } from "./filesystem.ts";
import { FUSE_DEV_IOC_BACKING_CLOSE, FUSE_DEV_IOC_BACKING_OPEN, r, sys } from "./sys.ts";

/** {@link BackingFiles} through the ioctls of `/dev/fuse` fd `dev`. */
export class DevFuseBacking implements BackingFiles {
  #dev: number;
  /** struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; } */
  #map = new Int32Array(4);
  #mapBytes = new Uint8Array(this.#map.buffer);
  #id = new Uint32Array(1);
  #idBytes = new Uint8Array(this.#id.buffer);

  constructor(dev: number) {
    this.#dev = dev;
  }

  open(fd: number): number {
    this.#map[0] = fd;
    return r(sys.ioctl(this.#dev, FUSE_DEV_IOC_BACKING_OPEN, this.#mapBytes));
  }

  close(id: number): void {
    this.#id[0] = id;
    sys.ioctl(this.#dev, FUSE_DEV_IOC_BACKING_CLOSE, this.#idBytes);
  }
}
