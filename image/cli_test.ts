import { strictEqual } from "node:assert/strict";
import { pullSummary } from "./cli.ts";

Deno.test("pullSummary: one layer is singular, others plural", () => {
  const record = (bytes: number[]) => ({
    name: "docker.io/library/busybox:latest",
    manifestDigest: "sha256:00",
    configDigest: "sha256:01",
    layers: bytes.map((b, i) => ({ diffId: `sha256:${i}`, bytes: b })),
    pulled: "2024-01-01T00:00:00Z",
  });
  strictEqual(
    pullSummary({ record: record([2 ** 20]), fetched: 1 }),
    "skiff image: pulled docker.io/library/busybox:latest (1 layer, 1 fetched, 1.0 MiB unpacked)",
  );
  strictEqual(
    pullSummary({ record: record([2 ** 20, 2 ** 19]), fetched: 0 }),
    "skiff image: pulled docker.io/library/busybox:latest (2 layers, 0 fetched, 1.5 MiB unpacked)",
  );
  strictEqual(
    pullSummary({ record: record([]), fetched: 0 }),
    "skiff image: pulled docker.io/library/busybox:latest (0 layers, 0 fetched, 0.0 MiB unpacked)",
  );
});
