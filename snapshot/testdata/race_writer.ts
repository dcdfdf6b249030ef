// Test helper: waits for a start file (so two processes overlap), then stores
// one snapshot under KEY in the cache at ROOT and prints the publish result.
import { RegionMemory } from "../../hv/memory.ts";
import { SnapshotCache } from "../cache.ts";

const [root, key, startFile, tag] = Deno.args;
using mem = RegionMemory.memfd([{ guestAddr: 0, size: 16 << 20 }]);
for (let i = 0; i < 256; i++) mem.writeU32(i * 65536, 0x1000 + i);
while (true) {
  try {
    Deno.statSync(startFile);
    break;
  } catch {
    await new Promise((r) => setTimeout(r, 2));
  }
}
const result = await new SnapshotCache(root).store(key, {
  memory: mem,
  vm: { clock: new Uint8Array([1]) },
  vcpus: [{ regs: new Uint8Array([2]) }],
  devices: {},
  source: { writer: tag },
});
console.log(result);
