// L0: the vhost-user fs back-end's device against a racing vCPU (hostile
// guest memory), driven as VhostUserBackend drives it after a kick.
import { RegionMemory } from "../../hv/memory.ts";
import { HostileMemory } from "../virtio/hostile_memory.ts";
import { MockQueueDriver } from "../virtio/mock_driver.ts";
import { Queue } from "../virtio/queue.ts";
import { registerFuseRaceTests } from "../virtio/fs/race_cases.ts";
import { VirtioFsDevice } from "./fs.ts";

registerFuseRaceTests("vhost-user fs (qemu engine)", (server) => {
  const inner = RegionMemory.fromBytes(1 << 20);
  const mem = new HostileMemory(inner);
  const dev = new VirtioFsDevice(server);
  const queue = new MockQueueDriver(inner, 16, 0x1000, 0x10000, 0x40000);
  const q = new Queue(dev.maxQueueSize);
  q.size = 16;
  q.descTable = queue.rings.desc;
  q.availRing = queue.rings.avail;
  q.usedRing = queue.rings.used;
  q.eventIdx = true;
  q.ready = true;
  return {
    mem,
    queue,
    // What VhostUserBackend does when the ring's kick eventfd fires.
    kick: () => {
      let used = false;
      do used = dev.process(1, q, mem) || used; while (q.setNotification(mem, true));
      if (used) q.needsNotification(mem);
    },
    polled: [{ addr: queue.rings.avail + 2, length: 2 }],
  };
});
