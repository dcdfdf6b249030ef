/**
 * Hot-plugging skiff's devices into a running (or restored, still paused)
 * q35 QEMU over QMP, each into a free `pcie-root-port` (hv/qemu/slots.ts):
 *
 * - `vhost-user-fs-pci` (virtio-fs, a tag) served by skiff's FUSE server;
 * - `vhost-user-vsock-pci` served by a vhost-user vsock back-end. QEMU 7.2's
 *   device has no `guest-cid` property: the guest CID is the back-end's
 *   answer to `VHOST_USER_GET_CONFIG` (virtio 1.2 §5.10.4 `guest_cid`), so
 *   the back-end must offer `VHOST_USER_PROTOCOL_F_CONFIG`;
 * - `virtio-net-pci` over a `netdev_add` of type `stream` (skiff's network
 *   stack on a Unix socket) or `vhost-user`.
 *
 * The back-end must already listen: QEMU's chardev connects as the client
 * at `chardev-add`, and `device_add` runs the vhost-user handshake. Plug
 * only after an incoming migration has `completed` — QEMU accepts a
 * `device_add` before it, but the incoming root-port state then overwrites
 * the slot and the guest never sees the device (measured in the spike).
 * Each plug returns a handle that unplugs: `device_del` (the guest
 * acknowledges the ACPI eject), then the chardev or netdev is removed and
 * the port freed. A refusal is a {@link HotplugError} naming the device, the
 * port and QEMU's message, with everything the plug had added removed.
 *
 * @module
 */

import type { QemuProcess } from "./process.ts";
import { QmpError, type QmpWaitOptions } from "./qmp_types.ts";
import type { RootPort } from "./slots.ts";

/** QEMU refused a hot-plug or unplug (or no port was free). */
export class HotplugError extends Error {
  /** QEMU's own message, when QEMU refused. */
  readonly qemuMessage?: string;
  constructor(message: string, options?: ErrorOptions & { qemuMessage?: string }) {
    super(message, options);
    this.name = "HotplugError";
    this.qemuMessage = options?.qemuMessage;
  }
}

/** A hot-plugged device; disposing it unplugs it. */
export interface PluggedDevice extends AsyncDisposable {
  /** The device id (`device_add` id). */
  readonly id: string;
  /** The driver (`vhost-user-fs-pci`, …). */
  readonly driver: string;
  /** The root port it sits in. */
  readonly port: RootPort;
  /**
   * Unplugs: `device_del` and the guest's acknowledgement, then the chardev
   * or netdev, then the port is freed. Idempotent. Rejects with a
   * {@link HotplugError} when QEMU refuses or the guest does not let go
   * within the bound.
   */
  unplug(o?: QmpWaitOptions): Promise<void>;
}

const ID = /^[A-Za-z][A-Za-z0-9_-]{0,30}$/;

function checkId(id: string): void {
  if (!ID.test(id)) throw new RangeError(`bad device id '${id}'`);
}

/** Wraps a QMP failure as a HotplugError for `what`. */
function refused(what: string, e: unknown): HotplugError {
  const qemu = e instanceof QmpError ? e.qemuMessage : undefined;
  return new HotplugError(`${what}: ${qemu ?? (e as Error).message ?? String(e)}`, {
    cause: e,
    qemuMessage: qemu,
  });
}

/** The back-end object a device depends on (a chardev or a netdev) and how to remove it. */
interface Backing {
  add(): Promise<void>;
  remove(): Promise<void>;
  describe: string;
}

/**
 * Plugs `driver` with `props` into a free root port of `vm`, after adding
 * its backing (chardev/netdev). On refusal, removes what it added and frees
 * the port.
 */
async function plug(
  vm: QemuProcess,
  driver: string,
  id: string,
  backing: Backing,
  props: Record<string, unknown>,
): Promise<PluggedDevice> {
  checkId(id);
  let port: RootPort;
  try {
    port = vm.slots.take(id);
  } catch (e) {
    throw new HotplugError(`cannot plug ${driver} '${id}': ${(e as Error).message}`, { cause: e });
  }
  const where = `${driver} '${id}' into root port ${port.id}`;
  try {
    try {
      await backing.add();
    } catch (e) {
      throw refused(`QEMU refused ${backing.describe} for ${where}`, e);
    }
    try {
      await vm.qmp.deviceAdd(driver, id, { bus: port.id, ...props });
    } catch (e) {
      await backing.remove().catch(() => {});
      throw refused(`QEMU refused device_add of ${where}`, e);
    }
  } catch (e) {
    vm.slots.release(port.id);
    throw e;
  }
  let gone: Promise<void> | null = null;
  const unplug = (o: QmpWaitOptions = {}) =>
    gone ??= (async () => {
      try {
        await vm.qmp.deviceDel(id, o);
      } catch (e) {
        gone = null; // may be retried
        throw refused(`unplugging ${driver} '${id}' from root port ${port.id} failed`, e);
      }
      await backing.remove().catch(() => {});
      vm.slots.release(port.id);
    })();
  return {
    id,
    driver,
    port,
    unplug,
    [Symbol.asyncDispose]: () => unplug(),
  };
}

/** A chardev that connects to a back-end's Unix socket. */
function socketChardev(vm: QemuProcess, id: string, socketPath: string): Backing {
  return {
    describe: `chardev-add of '${id}' (socket ${socketPath})`,
    add: () => vm.qmp.chardevAddSocket(id, socketPath),
    remove: () => vm.qmp.chardevRemove(id),
  };
}

/** What {@link plugVirtioFs} needs. */
export interface FsPlug {
  /** Device id; the chardev is `<id>-chr`. */
  id: string;
  /** The vhost-user back-end's socket (listening already). */
  socketPath: string;
  /** virtio-fs tag the guest mounts (≤ 36 bytes, virtio 1.2 §5.11.4). */
  tag: string;
  /** Request queues (QEMU `num-request-queues`, default 1). */
  requestQueues?: number;
  /** Ring size (QEMU `queue-size`, default 128). */
  queueSize?: number;
}

/** Hot-plugs a `vhost-user-fs-pci` served at `f.socketPath`. */
export function plugVirtioFs(vm: QemuProcess, f: FsPlug): Promise<PluggedDevice> {
  if (new TextEncoder().encode(f.tag).length > 36 || f.tag.length === 0) {
    throw new RangeError(`virtio-fs tag '${f.tag}' must be 1..36 bytes`);
  }
  const chr = `${f.id}-chr`;
  return plug(vm, "vhost-user-fs-pci", f.id, socketChardev(vm, chr, f.socketPath), {
    chardev: chr,
    tag: f.tag,
    ...(f.requestQueues ? { "num-request-queues": f.requestQueues } : {}),
    ...(f.queueSize ? { "queue-size": f.queueSize } : {}),
  });
}

/** What {@link plugVsock} needs. */
export interface VsockPlug {
  /** Device id; the chardev is `<id>-chr`. */
  id: string;
  /** The vhost-user vsock back-end's socket (listening; it answers GET_CONFIG with the guest CID). */
  socketPath: string;
}

/** Hot-plugs a `vhost-user-vsock-pci` served at `v.socketPath`. */
export function plugVsock(vm: QemuProcess, v: VsockPlug): Promise<PluggedDevice> {
  const chr = `${v.id}-chr`;
  return plug(vm, "vhost-user-vsock-pci", v.id, socketChardev(vm, chr, v.socketPath), {
    chardev: chr,
  });
}

/** What {@link plugNet} needs. */
export interface NetPlug {
  /** Device id; the netdev is `<id>-net` (and a vhost-user chardev `<id>-chr`). */
  id: string;
  /**
   * `stream`: QEMU connects to skiff's network stack on a Unix socket (frames
   * with a 4-byte big-endian length, QEMU's `-netdev stream`); `vhost-user`:
   * a vhost-user net back-end serves the rings.
   */
  backend: { type: "stream"; socketPath: string } | { type: "vhost-user"; socketPath: string };
  /** Guest MAC address. */
  mac?: string;
}

/** Hot-plugs a `virtio-net-pci` behind a `netdev_add`. */
export function plugNet(vm: QemuProcess, n: NetPlug): Promise<PluggedDevice> {
  if (n.mac !== undefined && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(n.mac)) {
    throw new RangeError(`bad MAC address '${n.mac}'`);
  }
  const netdev = `${n.id}-net`;
  const chr = `${n.id}-chr`;
  const b = n.backend;
  const backing: Backing = b.type === "stream"
    ? {
      describe: `netdev_add of stream '${netdev}' (socket ${b.socketPath})`,
      add: () =>
        vm.qmp.netdevAdd({
          type: "stream",
          id: netdev,
          server: false,
          addr: { type: "unix", path: b.socketPath },
        }),
      remove: () => vm.qmp.netdevDel(netdev),
    }
    : {
      describe: `netdev_add of vhost-user '${netdev}' (socket ${b.socketPath})`,
      add: async () => {
        await vm.qmp.chardevAddSocket(chr, b.socketPath);
        try {
          await vm.qmp.netdevAdd({ type: "vhost-user", id: netdev, chardev: chr });
        } catch (e) {
          await vm.qmp.chardevRemove(chr).catch(() => {});
          throw e;
        }
      },
      remove: async () => {
        await vm.qmp.netdevDel(netdev).catch(() => {});
        await vm.qmp.chardevRemove(chr);
      },
    };
  return plug(vm, "virtio-net-pci", n.id, backing, {
    netdev,
    ...(n.mac ? { mac: n.mac } : {}),
    // No option ROM: the guest boots by -kernel, and the ROM would be a RAM
    // block a later migration target does not have.
    romfile: "",
    // With a vhost-user back-end, QEMU 7.2 crashes (SIGSEGV in vhost_net_start →
    // msix_set_vector_notifiers, seen here with gdb) when the guest starts a
    // hot-plugged virtio-net-pci using MSI-X: no MSI-X vectors (INTx) and no
    // control queue, whose notifier the back-end does not own either. Nothing
    // the control queue offers (MAC filters, VLANs, multiqueue) is used by skiff.
    ...(b.type === "vhost-user"
      ? {
        ctrl_vq: false,
        ctrl_rx: false,
        ctrl_vlan: false,
        ctrl_mac_addr: false,
        mq: false,
        vectors: 0,
      }
      : {}),
  });
}
