// L0: the kvm engine's virtio-fs device against a racing vCPU (hostile guest
// memory): a FUSE request is copied once and the server only sees the copy.
import { RegionMemory } from "../../../hv/memory.ts";
import { HostileMemory } from "../hostile_memory.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { VirtioFs } from "./device.ts";
import { registerFuseRaceTests } from "./race_cases.ts";

const ALL = (1n << 64n) - 1n;

registerFuseRaceTests("virtio-fs (kvm engine)", (server) => {
  const inner = RegionMemory.fromBytes(4 << 20);
  const mem = new HostileMemory(inner);
  const dev = new VirtioFs({ tag: "race", server });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, inner, 0x10000, 0x3e0000);
  drv.init(ALL, dev.queueMaxSizes.length, 16);
  const queue = drv.queues[1];
  return {
    mem,
    queue,
    kick: () => drv.kick(1),
    polled: [{ addr: queue.rings.avail + 2, length: 2 }],
  };
});
