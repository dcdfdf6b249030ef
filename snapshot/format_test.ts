import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { SnapshotError } from "./errors.ts";
import {
  decodeManifest,
  encodeManifest,
  finishManifest,
  FORMAT_VERSION,
  manifestChecksum,
  parseManifest,
  SNAPSHOT_MAGIC,
  type SnapshotManifest,
} from "./format.ts";

function sample(): SnapshotManifest {
  return {
    version: FORMAT_VERSION,
    createdAt: "2026-01-01T00:00:00.000Z",
    memory: {
      fileSize: 0x20000,
      regions: [{ guestAddr: 0, size: 0x10000, fileOffset: 0 }, {
        guestAddr: 0x100000,
        size: 0x10000,
        fileOffset: 0x10000,
      }],
      dataBytes: 4096,
      digest: "sha256:00",
    },
    vm: { pit2: new Uint8Array([1, 2, 3]), ioapic: new Uint8Array(8) },
    vcpus: [{ regs: new Uint8Array([9, 9]) }, { regs: new Uint8Array([7]) }],
    devices: { console0: { avail: 5, bytes: new Uint8Array([1]), id: 1n << 63n } },
    source: { cmdline: "console=ttyS0", memoryMiB: 256 },
  };
}

function problemOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof SnapshotError) return e.problem;
    throw e;
  }
  throw new Error("did not throw");
}

Deno.test("state.json round-trips every section", () => {
  const m = sample();
  const text = encodeManifest(m);
  const doc = JSON.parse(text);
  strictEqual(doc.magic, SNAPSHOT_MAGIC);
  strictEqual(doc.version, FORMAT_VERSION);
  strictEqual(typeof doc.checksum, "string");
  deepStrictEqual(decodeManifest(text, "/x"), m);
});

Deno.test("decodeManifest names magic, version and checksum problems", () => {
  const doc = JSON.parse(encodeManifest(sample()));
  strictEqual(problemOf(() => decodeManifest("{not json", "/x")), "corrupt");
  strictEqual(problemOf(() => decodeManifest("[]", "/x")), "corrupt");
  strictEqual(
    problemOf(() => decodeManifest(JSON.stringify({ ...doc, magic: "elf" }), "/x")),
    "magic",
  );
  strictEqual(
    problemOf(() => decodeManifest(JSON.stringify({ ...doc, version: FORMAT_VERSION + 1 }), "/x")),
    "version",
  );
  // A version-1 file (checksum over canonical JSON) is a version mismatch, not corruption.
  strictEqual(
    problemOf(() => decodeManifest(JSON.stringify({ ...doc, version: 1 }), "/x")),
    "version",
  );
  // Any edit that keeps the JSON valid breaks the checksum.
  const edited = { ...doc, source: { ...doc.source, memoryMiB: 512 } };
  strictEqual(problemOf(() => decodeManifest(JSON.stringify(edited), "/x")), "corrupt");
  const flipped = encodeManifest(sample()).replace('"memoryMiB": 256', '"memoryMiB": 257');
  throws(() => decodeManifest(flipped, "/snap/x"), /snapshot \/snap\/x: checksum mismatch/);
  // Whitespace does not matter: the checksum is over the compact JSON.stringify text.
  strictEqual(decodeManifest(JSON.stringify(doc), "/x").memory.fileSize, 0x20000);
});

Deno.test("decodeManifest rejects a layout that does not fit the memory file", () => {
  const m = sample();
  m.memory.regions[1].fileOffset = 0x18000; // region ends past fileSize
  strictEqual(problemOf(() => decodeManifest(encodeManifest(m), "/x")), "corrupt");
  const n = sample();
  n.memory.regions[0].size = 100; // not page aligned
  throws(() => decodeManifest(encodeManifest(n), "/x"), /bad memory region/);
});

Deno.test("manifestChecksum (WebCrypto) is the checksum written; finishManifest checks the one given", async () => {
  const text = encodeManifest(sample());
  const parsed = parseManifest(text, "/x");
  const sum = await manifestChecksum(parsed);
  strictEqual(sum, JSON.parse(text).checksum);
  deepStrictEqual(finishManifest(parsed, "/x", sum), decodeManifest(text, "/x"));
  const flipped = parseManifest(text.replace('"memoryMiB": 256', '"memoryMiB": 257'), "/x");
  const flippedSum = await manifestChecksum(flipped);
  throws(() => finishManifest(flipped, "/x", flippedSum), /checksum mismatch/);
});
