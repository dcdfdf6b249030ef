// Test helper: writes a small valid snapshot (4 MiB memory, one vCPU).
import { RegionMemory } from "../../hv/memory.ts";
import { writeSnapshot } from "../store.ts";

/** Writes a small valid snapshot at `dir` (0xfeedface at 0x1234, device `uart`). */
export async function writeSample(dir: string): Promise<void> {
  using mem = RegionMemory.memfd([{ guestAddr: 0, size: 4 << 20 }]);
  mem.writeU32(0x1234, 0xfeedface);
  await writeSnapshot(dir, {
    memory: mem,
    vm: { clock: new Uint8Array([1, 2]) },
    vcpus: [{ regs: new Uint8Array(144).fill(3) }],
    devices: { uart: { lcr: 3 } },
    source: { test: "store" },
  });
}
