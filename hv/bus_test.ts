import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { Bus, type BusDevice, BusError, mmioBus, portBus } from "./bus.ts";

class Recorder implements BusDevice {
  log: string[] = [];
  constructor(readonly tag: string) {}
  read(offset: number, data: Uint8Array, base: number): void {
    this.log.push(`r ${base}+${offset}/${data.length}`);
    data.fill(0x40 + offset);
  }
  write(offset: number, data: Uint8Array, base: number): void {
    this.log.push(`w ${base}+${offset}=${[...data].join(",")}`);
  }
}

Deno.test("bus routes accesses to the owning range with its offset", () => {
  const bus = portBus();
  const a = new Recorder("a"), b = new Recorder("b");
  bus.insert(0x3f8, 8, "uart", a);
  bus.insert(0x60, 5, "i8042", b);
  const d = new Uint8Array(1);
  strictEqual(bus.read(0x3fd, d), true);
  strictEqual(d[0], 0x45);
  strictEqual(bus.write(0x64, new Uint8Array([0xfe])), true);
  strictEqual(bus.read(0x3f7, d), false);
  strictEqual(bus.read(0x400, d), false);
  deepStrictEqual(a.log, ["r 1016+5/1"]);
  deepStrictEqual(b.log, ["w 96+4=254"]);
  deepStrictEqual(bus.ranges.map((r) => r.name), ["i8042", "uart"]);
});

Deno.test("bus rejects overlapping ranges naming both devices", () => {
  const bus = mmioBus();
  bus.insert(0xd0000000, 0x1000, "virtio-blk", new Recorder("x"));
  throws(
    () => bus.insert(0xd0000800, 0x1000, "virtio-net", new Recorder("y")),
    (e: unknown) =>
      e instanceof BusError &&
      e.message ===
        "MMIO range 0xd0000800-0xd00017ff for virtio-net overlaps 0xd0000000-0xd0000fff of virtio-blk",
  );
  bus.insert(0xd0001000, 0x1000, "virtio-net", new Recorder("y"));
  throws(() => bus.insert(0xcffff000, 0x1001, "z", new Recorder("z")), /overlaps .* of virtio-blk/);
  throws(() => new Bus("port I/O", 0x10000).insert(0xfffe, 4, "p", new Recorder("p")), /exceeds/);
  throws(() => portBus().insert(0, 0, "p", new Recorder("p")), /bad base/);
  strictEqual(bus.remove(0xd0000000), true);
  strictEqual(bus.find(0xd0000000), null);
  strictEqual(bus.find(0xd0001fff)?.name, "virtio-net");
});
