/**
 * The TAP attachment: a `/dev/net/tun` TAP device (TUNSETIFF, IFF_TAP |
 * IFF_NO_PI) whose frames feed a {@link NetStack}.
 *
 * Frames are read by a Worker (`tap_worker.ts`) with plain read(2) calls into
 * a ring of slots in a SharedArrayBuffer; the main thread wakes with
 * `Atomics.waitAsync` and hands a whole batch of frames to the stack without
 * copying them. Frames for the guest are written with a synchronous write(2)
 * (a TAP write does not block). A FFI `nonblocking: true` read costs a thread
 * hand-off per frame instead (≈60 µs per call here, see DESIGN.md), which caps
 * a 64 KiB-MTU link far below a Gbit/s.
 *
 * @module
 */

import { check, cstr, errno, eventfd, libc, O, open, SysError } from "../../kvm_ffi/libc.ts";
import type { NetLink, NetStack, PartialChecksum } from "./stack.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";

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
/**
 * Ring slots; each holds one vnet header and frame up to the largest the
 * kernel sends (a 64 KiB TSO frame plus headers).
 */
const SLOTS = 128; // a power of two (ring indices are masked)
const SLOT_SIZE = 65536 + 1024;

/** Control words shared with the worker (Int32Array indices). */
export const CTRL = { WRITE: 0, READ: 1, STOP: 2 } as const;

/** The message that starts `tap_worker.ts`. */
export interface TapWorkerInit {
  fd: number;
  wakeFd: number;
  ctrl: SharedArrayBuffer;
  ring: SharedArrayBuffer;
  lens: SharedArrayBuffer;
  slots: number;
  slotSize: number;
}

/** A TAP device owned by this process; removed by the kernel when closed. */
export class TapDevice implements NetLink, AsyncDisposable {
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
  /** The interface name the kernel gave the device. */
  readonly name: string;
  /** The tun file descriptor. */
  readonly fd: number;
  /** Frames the kernel refused on write (e.g. the device is down). */
  writeErrors = 0;
  #wakeFd = -1;
  #worker: Worker | null = null;
  #ctrl: Int32Array<SharedArrayBuffer> | null = null;
  #pump: Promise<void> | null = null;
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
   * Writes one frame to the device (towards the kernel's side of the TAP),
   * behind a vnet header: NEEDS_CSUM for a `partial` checksum, else
   * DATA_VALID is not claimed and the kernel checks the checksums itself.
   */
  send(frame: Uint8Array, partial?: PartialChecksum): void {
    if (this.#closed) return;
    let buf: Uint8Array<ArrayBuffer>;
    if (frame.byteOffset >= VNET_HDR_LEN && frame.buffer instanceof ArrayBuffer) {
      buf = new Uint8Array(
        frame.buffer,
        frame.byteOffset - VNET_HDR_LEN,
        frame.length + VNET_HDR_LEN,
      );
    } else {
      buf = new Uint8Array(frame.length + VNET_HDR_LEN);
      buf.set(frame, VNET_HDR_LEN);
    }
    buf.fill(0, 0, VNET_HDR_LEN);
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
    const r = libc.write(this.fd, buf, BigInt(buf.length));
    if (r < 0) this.writeErrors++;
  }

  /**
   * Attaches this device to `stack` and starts feeding it the frames the
   * device reads. Resolves once the reader Worker runs: a Worker can take
   * seconds to start on a busy machine, and a peer that sends before then
   * (ARP gives up after 3 s) must not find nobody reading. Rejects if the
   * Worker fails to start.
   */
  serve(stack: NetStack): Promise<void> {
    if (this.#worker) throw new Error(`tap ${this.name}: already serving`);
    stack.attach(this);
    this.#wakeFd = eventfd(0);
    const ctrlBuf = new SharedArrayBuffer(16);
    const ring = new SharedArrayBuffer(SLOTS * SLOT_SIZE);
    const lensBuf = new SharedArrayBuffer(SLOTS * 4);
    const ctrl = new Int32Array(ctrlBuf);
    this.#ctrl = ctrl;
    const worker = new Worker(runtimeModuleUrl("devices/net/tap_worker.ts"), { type: "module" });
    this.#worker = worker;
    const running = new Promise<void>((resolve, reject) => {
      worker.onmessage = (e: MessageEvent) => {
        if (e.data === "running") resolve();
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        reject(new Error(`tap ${this.name}: the reader Worker failed: ${e.message}`));
      };
    });
    const init: TapWorkerInit = {
      fd: this.fd,
      wakeFd: this.#wakeFd,
      ctrl: ctrlBuf,
      ring,
      lens: lensBuf,
      slots: SLOTS,
      slotSize: SLOT_SIZE,
    };
    worker.postMessage(init);
    const data = new Uint8Array(ring);
    const lens = new Int32Array(lensBuf);
    this.#pump = (async () => {
      let rp = 0;
      while (!this.#closed) {
        const wp = Atomics.load(ctrl, CTRL.WRITE);
        if (wp === rp) {
          const w = Atomics.waitAsync(ctrl, CTRL.WRITE, wp);
          if (w.async) await w.value;
          continue;
        }
        while (rp !== wp && !this.#closed) {
          // Indices wrap at 2^31 (| 0); SLOTS is a power of two, so & stays in range.
          const at = (rp & (SLOTS - 1)) * SLOT_SIZE;
          const len = lens[rp & (SLOTS - 1)];
          if (len > VNET_HDR_LEN) {
            // A partial (NEEDS_CSUM) or checked (DATA_VALID) checksum from the
            // local kernel needs no verification.
            const trusted = (data[at] & (NEEDS_CSUM | DATA_VALID)) !== 0;
            stack.input(data.subarray(at + VNET_HDR_LEN, at + len), trusted);
          }
          rp = (rp + 1) | 0;
          Atomics.store(ctrl, CTRL.READ, rp);
          Atomics.notify(ctrl, CTRL.READ);
        }
      }
    })();
    return running;
  }

  /** Stops the reader and closes the device (the kernel removes a non-persistent TAP). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const ctrl = this.#ctrl;
    if (ctrl && this.#worker) {
      Atomics.store(ctrl, CTRL.STOP, 1);
      Atomics.notify(ctrl, CTRL.READ);
      Atomics.add(ctrl, CTRL.WRITE, 0);
      Atomics.notify(ctrl, CTRL.WRITE);
      const one = new BigUint64Array([1n]);
      libc.write(this.#wakeFd, new Uint8Array(one.buffer), 8n);
      await new Promise<void>((resolve) => {
        const w = this.#worker!;
        const t = setTimeout(resolve, 1000);
        w.onmessage = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#worker.terminate();
      this.#worker = null;
      // Wake the pump so it sees #closed.
      Atomics.notify(ctrl, CTRL.WRITE);
      await Promise.race([this.#pump, new Promise((r) => setTimeout(r, 50))]);
    }
    if (this.#wakeFd >= 0) libc.close(this.#wakeFd);
    check(`close(tap ${this.name})`, libc.close(this.fd));
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
