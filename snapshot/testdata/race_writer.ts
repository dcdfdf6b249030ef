// Test helper: prints "ready", waits for a line on stdin (the test sends it to
// both writers once both are ready, so they overlap), then stores one snapshot
// under KEY in the cache at ROOT and prints the publish result.
import { RegionMemory } from "../../hv/memory.ts";
import { SnapshotCache } from "../cache.ts";

const [root, key, tag] = Deno.args;
using mem = RegionMemory.memfd([{ guestAddr: 0, size: 16 << 20 }]);
for (let i = 0; i < 256; i++) mem.writeU32(i * 65536, 0x1000 + i);
console.log("ready");
await Deno.stdin.read(new Uint8Array(1)); // the start signal
const result = await new SnapshotCache(root).store(key, {
  memory: mem,
  vm: { clock: new Uint8Array([1]) },
  vcpus: [{ regs: new Uint8Array([2]) }],
  devices: {},
  source: { writer: tag },
});
console.log(result);
