// Test helper: a small valid qemu-engine entry without QEMU (a sparse fake RAM
// file and a fake migration stream).
import { join } from "node:path";
import { writeQemuEntry } from "../qemu_entry.ts";

/** Size of the fake RAM file. */
export const SAMPLE_RAM_SIZE = 8 << 20;

/**
 * Writes a qemu entry at `dir` from a fake RAM file (data at 1 MiB and 5 MiB,
 * a zero page inside the first run) and a fake state stream, both made in
 * `work`. Returns the fake inputs' paths.
 */
export async function writeQemuSample(
  dir: string,
  work: string,
): Promise<{ ramPath: string; statePath: string }> {
  const ramPath = join(work, "ram-src");
  const statePath = join(work, "state-src");
  using f = Deno.openSync(ramPath, { write: true, create: true, truncate: true });
  f.truncateSync(SAMPLE_RAM_SIZE);
  const page = new Uint8Array(4096);
  for (const [at, byte] of [[1 << 20, 0x11], [(1 << 20) + 8192, 0x22], [5 << 20, 0x33]]) {
    page.fill(byte);
    f.seekSync(at, Deno.SeekMode.Start);
    f.writeSync(page);
  }
  // An explicit zero page between the two data pages of the first run.
  page.fill(0);
  f.seekSync((1 << 20) + 4096, Deno.SeekMode.Start);
  f.writeSync(page);
  Deno.writeFileSync(statePath, new TextEncoder().encode("QEVM fake device state ".repeat(100)));
  await writeQemuEntry(dir, {
    ramPath,
    statePath,
    qemuVersion: "7.2.22",
    machine: ["-M", "q35", "-m", "8M"],
    source: { test: "qemu-sample", engine: "qemu" },
  });
  return { ramPath, statePath };
}
