/**
 * A restore's devices, constructed from the snapshot's device records
 * (device_manager.ts): each record is checked — kind, constructor
 * arguments, placement — and the device is built at its saved place from
 * its saved state and transport state. A record that does not check is a
 * `SnapshotError` (`corrupt`) naming the device; one whose host back-end the
 * run lacks (a share, the network) is a `SnapshotError` (`mismatch`).
 *
 * @module
 */

import * as check from "../state.ts";
import { StateError } from "../state.ts";
import { I8042 } from "../../devices/legacy/i8042.ts";
import { FS_TAG_LEN } from "../../devices/virtio/fs/device.ts";
import { isGuestCid } from "../../devices/virtio/vsock/persist.ts";
import { MMIO_WINDOW } from "../../devices/virtio/mmio_regs.ts";
import { SnapshotError } from "../../snapshot/errors.ts";
import { LAYOUT } from "../boot/layout.ts";
import type { AddressRange } from "../device.ts";
import type { RegionMemory } from "../memory.ts";
import type { Vm } from "../vm.ts";
import {
  DEVICE_KINDS,
  DeviceBackendError,
  type DeviceKind,
  DeviceManager,
  type DeviceManagerOptions,
  type DeviceRecord,
} from "./device_manager.ts";

function ranges(v: unknown, path: string): AddressRange[] {
  return check.array(v, path, { maxLength: 8 }).map((r, i) => {
    const p = `${path}[${i}]`;
    const o = check.object(r, p);
    return {
      base: check.field(o, "base", p, check.u32),
      length: check.field(o, "length", p, (x, q) => check.int(x, q, 1, 1 << 24)),
    };
  });
}

/** Checks one device record's common shape; throws `StateError` naming the bad field. */
export function parseDeviceRecord(v: unknown, path = "$"): DeviceRecord {
  const o = check.object(v, path);
  const kind = check.field(o, "kind", path, check.string) as DeviceKind;
  if (!DEVICE_KINDS.includes(kind)) {
    throw new StateError(`${path}.kind`, `unknown device kind ${JSON.stringify(kind)}`);
  }
  const pl = check.field(o, "placement", path, check.object);
  const pp = `${path}.placement`;
  const placement = {
    ports: pl.ports === undefined ? undefined : ranges(pl.ports, `${pp}.ports`),
    mmio: pl.mmio === undefined ? undefined : ranges(pl.mmio, `${pp}.mmio`),
    gsi: pl.gsi === undefined
      ? undefined
      : check.field(pl, "gsi", pp, (x, p) => check.int(x, p, 0, LAYOUT.DEVICE_IRQ_LAST)),
  };
  return {
    kind,
    args: check.field(o, "args", path, check.object),
    placement,
    transport: o.transport,
    state: o.state,
  } as DeviceRecord;
}

/** The first range of `list`, which must exist and be `length` long. */
function only(list: AddressRange[] | undefined, length: number, path: string): number {
  if (!list || list.length < 1 || list[0].length !== length) {
    throw new StateError(path, `expected a range of ${length}`);
  }
  return list[0].base;
}

function gsiOf(r: DeviceRecord, first: number): number {
  const gsi = r.placement.gsi;
  if (gsi === undefined || gsi < first) {
    throw new StateError("$.placement.gsi", `expected a GSI ≥ ${first}, got ${gsi}`);
  }
  return gsi;
}

/** Builds one device of `dm` from its checked record. */
function construct(dm: DeviceManager, name: string, r: DeviceRecord): void {
  const args = r.args;
  switch (r.kind) {
    case "uart":
      return dm.addUart(
        name,
        only(r.placement.ports, 8, "$.placement.ports"),
        gsiOf(r, 0),
        r.state,
      );
    case "i8042": {
      const ports = (r.placement.ports ?? []).map((p) => p.base);
      if (ports.join() !== `${I8042.DATA},${I8042.COMMAND}`) {
        throw new StateError("$.placement.ports", "the i8042 sits at ports 0x60 and 0x64");
      }
      return dm.addI8042(name, r.state);
    }
    case "acpi-sleep":
      return dm.addSleep(name, only(r.placement.ports, 2, "$.placement.ports"));
  }
  const base = only(r.placement.mmio, MMIO_WINDOW, "$.placement.mmio");
  if (base < LAYOUT.VIRTIO_MMIO_START || base + MMIO_WINDOW > LAYOUT.VIRTIO_MMIO_END) {
    throw new StateError(
      "$.placement.mmio",
      `window 0x${base.toString(16)} is outside the virtio range`,
    );
  }
  const at = { base, gsi: gsiOf(r, LAYOUT.DEVICE_IRQ_FIRST) };
  const saved = { transport: r.transport, state: r.state };
  switch (r.kind) {
    case "virtio-console": {
      const ports = check.field(
        args,
        "ports",
        "$.args",
        (x, p) =>
          check.array(x, p, { maxLength: 30 }).map((n, i) => check.string(n, `${p}[${i}]`, 255)),
      );
      dm.addVirtio(name, "console", { ports }, at, saved);
      return;
    }
    case "virtio-fs": {
      const tag = check.field(args, "tag", "$.args", (x, p) => check.string(x, p, FS_TAG_LEN));
      dm.addVirtio(name, "fs", { tag }, at, saved);
      return;
    }
    case "virtio-net": {
      const mac = check.field(args, "mac", "$.args", (x, p) => check.array(x, p, { length: 6 }))
        .map((b, i) => check.u8(b, `$.args.mac[${i}]`));
      dm.addVirtio(name, "net", { mac }, at, saved);
      return;
    }
    case "virtio-vsock": {
      const guestCid = check.field(args, "guestCid", "$.args", (x, p) => {
        const cid = check.u32(x, p);
        if (!isGuestCid(cid)) throw new StateError(p, `${cid} is not a guest CID`);
        return cid;
      });
      dm.addVirtio(name, "vsock", { guestCid }, at, saved);
      return;
    }
  }
}

/**
 * Constructs a machine's devices from a snapshot's records (`manifest.devices`
 * of snapshot `dir`), in their saved order and places. Throws `SnapshotError`
 * naming the device whose record is bad or whose back-end is missing.
 */
export function restoreDevices(
  vm: Vm,
  memory: RegionMemory,
  records: Record<string, unknown>,
  dir: string,
  opts: DeviceManagerOptions,
): DeviceManager {
  const dm = new DeviceManager(vm, memory, opts);
  for (const [name, raw] of Object.entries(records)) {
    try {
      construct(dm, name, parseDeviceRecord(raw));
    } catch (e) {
      const problem = e instanceof DeviceBackendError ? "mismatch" : "corrupt";
      throw new SnapshotError(problem, dir, `device ${name}: ${(e as Error).message ?? e}`, {
        cause: e,
      });
    }
  }
  if (!dm.uart) throw new SnapshotError("corrupt", dir, "the snapshot has no uart device");
  return dm;
}
