import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { extractVmlinux, kernelDependency, parseAptShow } from "./fetch.ts";
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
