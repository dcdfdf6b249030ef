import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  downloadStatus,
  extractVmlinux,
  kernelDependency,
  parseAptShow,
  stderrProgress,
} from "./fetch.ts";
import { lz4LegacyLiterals, makeBzImage, makeElf } from "./testdata.ts";

Deno.test("parseAptShow and kernelDependency resolve the metapackage", () => {
  const show = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n" +
    "Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n" +
    "Size: 1508\nDescription: Linux for x86-64 cloud (meta-package)\n\nPackage: other\n";
  const p = parseAptShow(show)!;
  deepStrictEqual(p, {
    package: "linux-image-cloud-amd64",
    version: "6.1.192-2",
    depends: "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)",
    size: 1508,
  });
  strictEqual(kernelDependency(p.depends), "linux-image-6.1.0-56-cloud-amd64");
  strictEqual(kernelDependency("kmod, linux-base (>= 4.3~)"), undefined);
  strictEqual(parseAptShow("E: No packages found\n"), undefined);
});

Deno.test("extractVmlinux: LZ4 payload with the appended size → ELF", () => {
  const elf = makeElf({ ".text": new Uint8Array(1000).fill(0x90) }, 2);
  const frame = lz4LegacyLiterals(elf, 256);
  const payload = new Uint8Array(frame.length + 4);
  payload.set(frame);
  new DataView(payload.buffer).setUint32(frame.length, elf.length, true);
  deepStrictEqual(extractVmlinux(makeBzImage(payload)), elf);
  // A gzip payload is refused with a hint.
  throws(() => extractVmlinux(makeBzImage(new Uint8Array([0x1f, 0x8b, 8, 0, 0, 0]))), /not LZ4/);
});

Deno.test("stderrProgress: off a terminal, status lines are sampled every few seconds", () => {
  const out: string[] = [];
  let t = 0;
  const p = stderrProgress({ tty: false, write: (s) => out.push(s), now: () => t });
  p.line("skiff: downloading x");
  for (let i = 0; i <= 10; i++, t += 1000) p.status(downloadStatus(i * 1_000_000, 10_000_000));
  p.line("skiff: downloaded x");
  deepStrictEqual(out, [
    "skiff: downloading x\n",
    "  downloading: 0% (0.0 of 9.5 MiB)\n",
    "  downloading: 30% (2.9 of 9.5 MiB)\n",
    "  downloading: 60% (5.7 of 9.5 MiB)\n",
    "  downloading: 90% (8.6 of 9.5 MiB)\n",
    "skiff: downloaded x\n",
  ]);
  strictEqual(downloadStatus(5 << 20, 0), "  downloading: 5.0 MiB");
});

Deno.test("stderrProgress: on a terminal, status lines are rewritten in place", () => {
  const out: string[] = [];
  const p = stderrProgress({ tty: true, write: (s) => out.push(s) });
  p.status("a");
  p.status("b");
  p.line("done");
  deepStrictEqual(out, ["\r\x1b[Ka", "\r\x1b[Kb", "\r\x1b[Kdone\n"]);
});
