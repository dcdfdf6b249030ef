/**
 * The TAP attachment: a `/dev/net/tun` TAP device (TUNSETIFF, IFF_TAP |
 * IFF_NO_PI | IFF_VNET_HDR) whose frames feed the network stack.
 *
 * {@link TapDevice} opens the device on the host thread; {@link NetStack}'s
 * loop then owns the reading and writing ({@link TapLink}, in the loop's
 * Worker): the TAP fd is one more fd in the loop's epoll, read without
 * blocking when it is ready, and written with a synchronous write(2) (a TAP
 * write does not block). Frames carry a virtio-net header, so the kernel
 * hands over partial checksums and 64 KiB TSO frames, and takes them back.
 *
 * @module
 */

import { check, cstr, errno, libc, O, open, SysError } from "../../kvm_ffi/libc.ts";
import type { NetEngine, NetLink, PartialChecksum } from "./stack.ts";
import { EPOLL, type Poller, type Watch } from "./poller.ts";
import type { NetStack } from "./service.ts";

/** TUNSETIFF = _IOW('T', 202, int) (linux/if_tun.h). */
const TUNSETIFF = 0x400454can;
/** TUNSETOFFLOAD = _IOW('T', 208, unsigned int) (linux/if_tun.h). */
const TUNSETOFFLOAD = 0x400454d0n;
/** linux/if_tun.h flags. */
const IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;
/** linux/if_tun.h offloads: partial checksums and TCP segmentation (IPv4) from the kernel. */
const TUN_F_CSUM = 0x01, TUN_F_TSO4 = 0x02;
/**
 * `struct virtio_net_hdr` (linux/virtio_net.h, virtio 1.2 §5.1.6 without
 * num_buffers): the TAP's default vnet header size.
 */
export const VNET_HDR_LEN = 10;
/** virtio_net_hdr flags (virtio 1.2 §5.1.6). */
const NEEDS_CSUM = 1, DATA_VALID = 2;
/** virtio_net_hdr gso_type for TCP over IPv4 (virtio 1.2 §5.1.6). */
const GSO_TCPV4 = 1;
/** IFNAMSIZ (linux/if.h). */
const IFNAMSIZ = 16;
/** Read buffer: one vnet header and the largest frame the kernel sends (a 64 KiB TSO frame). */
const READ_SIZE = 65536 + 1024;
const READ_SIZE_N = BigInt(READ_SIZE);
/** Frames read per readiness event before other fds get a turn. */
const READ_BATCH = 64;
/** A frame at least this large suggests a bulk transfer with more frames queued. */
const BULK_FRAME = 4096;

/** A TAP device owned by this process; removed by the kernel when closed. */
export class TapDevice implements AsyncDisposable {
  /** The interface name the kernel gave the device. */
  readonly name: string;
  /** The tun file descriptor (non-blocking). */
  readonly fd: number;
  #served: { detach(): Promise<void> } | null = null;
  #closed = false;

  private constructor(fd: number, name: string) {
    this.fd = fd;
    this.name = name;
  }

  /**
   * Creates a TAP device named `name` (a `%d` in it is filled by the kernel).
   * Throws {@link SysError} naming TUNSETIFF and the name on failure.
   */
  static open(name = "skiff%d"): TapDevice {
    if (name.length >= IFNAMSIZ) throw new Error(`tap: interface name '${name}' is too long`);
    const fd = open("/dev/net/tun", O.RDWR | O.NONBLOCK);
    const ifr = new Uint8Array(40); // struct ifreq
    ifr.set(cstr(name));
    new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    if (libc.ioctl(fd, TUNSETIFF, ifr) < 0) {
      const err = new SysError(`TUNSETIFF(${name})`, errno());
      libc.close(fd);
      throw err;
    }
    // The kernel may then send partial checksums and TSO frames: the stack
    // terminates TCP, so a 64 KiB segment is just a large segment to it.
    if (libc.ioctl_val(fd, TUNSETOFFLOAD, BigInt(TUN_F_CSUM | TUN_F_TSO4)) < 0) {
      const err = new SysError(`TUNSETOFFLOAD(${name})`, errno());
      libc.close(fd);
      throw err;
    }
    const end = ifr.indexOf(0);
    return new TapDevice(fd, new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end)));
  }

  /**
   * Hands the device to `stack`'s loop, which reads its frames and attaches
   * it as the stack's link. The device keeps owning the fd.
   */
  serve(stack: NetStack): void {
    if (this.#served) throw new Error(`tap ${this.name}: already serving`);
    if (this.#closed) throw new Error(`tap ${this.name}: closed`);
    this.#served = stack.serveTap(this.fd);
  }

  /** Detaches the device from its stack's loop and closes it (the kernel removes a non-persistent TAP). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The loop lets go of the fd first, so its number is never reused under it.
    await this.#served?.detach();
    check(`close(tap ${this.name})`, libc.close(this.fd));
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * The loop's side of a TAP device: reads frames when the fd is ready and
 * feeds them to the engine; writes the engine's frames behind a vnet header.
 */
export class TapLink implements NetLink {
  /** Frames carry a vnet header, so TCP checksums are left to the kernel (CHECKSUM_PARTIAL). */
  readonly partialChecksums = true;
  /** Room for the vnet header before frames the stack builds. */
  readonly headroom = VNET_HDR_LEN;
  /**
   * TCP frames up to ~64 KiB go to the kernel as one TSO frame
   * (VIRTIO_NET_HDR_GSO_TCPV4), whatever the MTU: the receiving stack takes
   * them whole, as GRO would have merged them.
   */
  readonly tsoMax = 65535 - 20 - 60;
  /** Each frame is written before {@link send} returns. */
  readonly consumesFrames = true;
  /** Frames the kernel refused on write (e.g. the device is down). */
  writeErrors = 0;
  #fd: number;
  #engine: NetEngine;
  #watch: Watch;
  #buf = new Uint8Array(READ_SIZE);
  /** A view from the vnet header before the last frame sent to the end of its buffer. */
  #view: Uint8Array<ArrayBuffer> | null = null;
  #closed = false;

  /** Starts reading `fd` in `poller` into `engine` and attaches as its link. */
  constructor(fd: number, engine: NetEngine, poller: Poller) {
    this.#fd = fd;
    this.#engine = engine;
    this.#watch = poller.watch(fd, EPOLL.IN, () => this.#readable());
    engine.attach(this);
  }

  #readable(): void {
    const buf = this.#buf;
    for (let i = 0; i < READ_BATCH && !this.#closed; i++) {
      const n = libc.read_n(this.#fd, buf, READ_SIZE_N);
      if (n <= 0) return; // EAGAIN: drained (level-triggered epoll reports more)
      if (n <= VNET_HDR_LEN) continue;
      // A partial (NEEDS_CSUM) or checked (DATA_VALID) checksum from the
      // local kernel needs no verification.
      const trusted = (buf[0] & (NEEDS_CSUM | DATA_VALID)) !== 0;
      this.#engine.input(buf.subarray(VNET_HDR_LEN, n), trusted);
      // After a small frame (interactive traffic) another read would most
      // likely be an EAGAIN: leave it to epoll, which reports the fd again
      // if more is queued. Bulk traffic reads on.
      if (n < BULK_FRAME) return;
    }
  }

  /**
   * Writes one frame to the device (towards the kernel's side of the TAP),
   * behind a vnet header: NEEDS_CSUM for a `partial` checksum, else
   * DATA_VALID is not claimed and the kernel checks the checksums itself.
   */
  send(frame: Uint8Array, partial?: PartialChecksum): void {
    if (this.#closed) return;
    const len = frame.length + VNET_HDR_LEN;
    let buf = this.#view;
    if (
      buf === null || buf.buffer !== frame.buffer ||
      buf.byteOffset !== frame.byteOffset - VNET_HDR_LEN
    ) {
      if (frame.byteOffset >= VNET_HDR_LEN && frame.buffer instanceof ArrayBuffer) {
        // The header goes into the headroom before the frame. The engine
        // builds most frames at one place of one buffer: the view (to the
        // end of that buffer; write(2) is given the length) is kept for the
        // next frame, so sending allocates nothing.
        buf = this.#view = new Uint8Array(frame.buffer, frame.byteOffset - VNET_HDR_LEN);
      } else {
        buf = new Uint8Array(len);
        buf.set(frame, VNET_HDR_LEN);
      }
    }
    for (let i = 0; i < VNET_HDR_LEN; i++) buf[i] = 0;
    if (partial) {
      buf[0] = NEEDS_CSUM;
      if (partial.tsoSize) {
        buf[1] = GSO_TCPV4; // gso_type
        buf[2] = partial.headerLength! & 255; // hdr_len
        buf[3] = partial.headerLength! >> 8;
        buf[4] = partial.tsoSize & 255; // gso_size
        buf[5] = partial.tsoSize >> 8;
      }
      buf[6] = partial.start & 255; // csum_start (little-endian)
      buf[7] = partial.start >> 8;
      buf[8] = partial.offset & 255; // csum_offset
      buf[9] = partial.offset >> 8;
    }
    const r = libc.write_n(this.#fd, buf, BigInt(len));
    if (r < 0) this.writeErrors++;
  }

  /** Stops reading and detaches from the engine; the fd stays open (its {@link TapDevice} closes it). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    this.#engine.detach(this);
  }
}
