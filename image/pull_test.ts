/**
 * Pulls into a temporary store: an OCI layout and a docker-archive built by
 * the test (umoci, skopeo, busybox-static), a layout with a wrong layer
 * digest, a truncated layer and a zstd layer — each failure leaves nothing
 * in layers/ or tmp/.
 */

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { parseReference } from "./reference.ts";
import { pullImage } from "./pull.ts";
import { ImageStore } from "./store.ts";
import { buildTestImage, imageTest, TEST_IMAGE, toDockerArchive } from "./testing/images.ts";
import { sha256Digest } from "./digest.ts";
import { makeTar } from "./testing/tar_writer.ts";
import { readLayerIndex } from "../devices/fuse/layer_index.ts";

/** Names in a store directory. */
function ls(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

async function withImage(fn: (base: string, layout: string, store: ImageStore) => Promise<void>) {
  const base = await Deno.makeTempDir({ prefix: "skiff-pull-test-" });
  try {
    const layout = await buildTestImage(base);
    await fn(base, layout, new ImageStore(`${base}/store`));
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

imageTest("pull: an OCI layout and its docker-archive give the same layers", [], async () => {
  await withImage(async (base, layout, store) => {
    const oci = await pullImage(parseReference(`oci:${layout}:${TEST_IMAGE.tag}`), {
      store,
      progress: null,
    });
    strictEqual(oci.record.name, `oci:${layout}:v1`);
    strictEqual(oci.record.layers.length, 2);
    strictEqual(oci.fetched, 2);
    deepStrictEqual(oci.config.config.Env.includes("GREETING=hello from the image"), true);
    strictEqual(oci.config.config.WorkingDir, "/srv");
    const manifest = store.getBlob(oci.record.manifestDigest)!;
    strictEqual(sha256Digest(manifest), oci.record.manifestDigest);
    const l2 = readLayerIndex(store.layerDir(oci.record.layers[1].diffId));
    ok(l2.some((e) => e.kind === "whiteout" && e.path === "etc/gone"));
    ok(l2.some((e) => e.kind === "opaque" && e.path === "opq"));
    deepStrictEqual(ls(`${store.root}/tmp`), []);
    // Pulled again: nothing fetched.
    strictEqual(
      (await pullImage(parseReference(`oci:${layout}`), { store, progress: null })).fetched,
      0,
    );

    await toDockerArchive(layout, `${base}/img.tar`);
    const da = await pullImage(parseReference(`docker-archive:${base}/img.tar`), {
      store,
      progress: null,
    });
    strictEqual(da.fetched, 0, "same diff IDs: the layers are shared");
    deepStrictEqual(da.record.layers.map((l) => l.diffId), oci.record.layers.map((l) => l.diffId));
    strictEqual(da.record.configDigest, oci.record.configDigest);
    // With an empty store the archive's layers are unpacked from it.
    const fresh = new ImageStore(`${base}/store2`);
    const da2 = await pullImage(parseReference(`docker-archive:${base}/img.tar`), {
      store: fresh,
      progress: null,
    });
    strictEqual(da2.fetched, 2);
    deepStrictEqual(
      readLayerIndex(fresh.layerDir(da2.record.layers[0].diffId)),
      readLayerIndex(store.layerDir(oci.record.layers[0].diffId)),
    );
    deepStrictEqual(store.records().map((r) => r.name).sort(), [
      `docker-archive:${base}/img.tar`,
      `oci:${layout}`,
      `oci:${layout}:v1`,
    ]);
  });
});

/** Rewrites a layout's manifest through `edit` and points index.json at the new one. */
async function editManifest(
  layout: string,
  edit: (m: Record<string, unknown>) => void,
): Promise<void> {
  const index = JSON.parse(await Deno.readTextFile(`${layout}/index.json`));
  const d = index.manifests[0];
  const m = JSON.parse(await Deno.readTextFile(`${layout}/blobs/sha256/${d.digest.slice(7)}`));
  edit(m);
  const bytes = new TextEncoder().encode(JSON.stringify(m));
  const digest = sha256Digest(bytes);
  await Deno.writeFile(`${layout}/blobs/sha256/${digest.slice(7)}`, bytes);
  index.manifests[0] = { ...d, digest, size: bytes.length };
  await Deno.writeTextFile(`${layout}/index.json`, JSON.stringify(index));
}

/** Adds a blob to a layout; returns its descriptor fields. */
async function addBlob(
  layout: string,
  bytes: Uint8Array,
): Promise<{ digest: string; size: number }> {
  const digest = sha256Digest(bytes);
  await Deno.writeFile(`${layout}/blobs/sha256/${digest.slice(7)}`, bytes);
  return { digest, size: bytes.length };
}

function assertNothingLeft(store: ImageStore, keep: string[] = []): void {
  deepStrictEqual(ls(`${store.root}/tmp`), [], "tmp/ is empty");
  deepStrictEqual(ls(`${store.root}/layers/sha256`), keep.sort(), "no partial layer");
  deepStrictEqual(ls(`${store.root}/images`), [], "no record");
}

imageTest(
  "pull: a wrong layer digest, a truncated layer, a zstd layer and a hostile layer fail cleanly",
  [],
  async () => {
    await withImage(async (_base, layout, store) => {
      const ref = parseReference(`oci:${layout}`);
      // 1. The last layer's blob is replaced by other bytes (the manifest keeps the old digest).
      const m = JSON.parse(
        await Deno.readTextFile(
          `${layout}/blobs/sha256/${
            JSON.parse(await Deno.readTextFile(`${layout}/index.json`)).manifests[0].digest.slice(7)
          }`,
        ),
      );
      const last = m.layers.at(-1);
      const path = `${layout}/blobs/sha256/${last.digest.slice(7)}`;
      const good = await Deno.readFile(path);
      const bad = good.slice();
      bad[bad.length >> 1] ^= 0xff;
      await Deno.writeFile(path, bad);
      // The gzip stream breaks before its end: the error names the layer.
      await rejects(pullImage(ref, { store, progress: null }), /: layer sha256:[0-9a-f]{12}: /);
      // The first layer (good) may have been unpacked; the bad one is not there, nor anything partial.
      const first = ls(`${store.root}/layers/sha256`);
      ok(first.length <= 1);
      assertNothingLeft(store, first);
      await Deno.writeFile(path, good);

      // 2. A layer whose gzip stream is cut short (digest and size in the manifest match the cut blob).
      const cut = await addBlob(layout, good.slice(0, good.length >> 1));
      await editManifest(layout, (mm) => {
        (mm.layers as Record<string, unknown>[]).at(-1)!.digest = cut.digest;
        (mm.layers as Record<string, unknown>[]).at(-1)!.size = cut.size;
      });
      await rejects(pullImage(ref, { store, progress: null }), /layer sha256:[0-9a-f]{12}: /);
      assertNothingLeft(store, first);

      // 3. A zstd layer is refused before anything is fetched.
      await editManifest(layout, (mm) => {
        (mm.layers as Record<string, unknown>[]).at(-1)!.mediaType =
          "application/vnd.oci.image.layer.v1.tar+zstd";
      });
      await rejects(
        pullImage(ref, { store, progress: null }),
        /is zstd-compressed .* skiff cannot unpack yet/,
      );

      // 4. A blob whose bytes are a valid tar of the right size but not the digest named.
      const a = makeTar([{ name: "a", data: "A".repeat(100) }]);
      const b = makeTar([{ name: "b", data: "B".repeat(100) }]);
      const ad = await addBlob(layout, a);
      await Deno.writeFile(`${layout}/blobs/sha256/${ad.digest.slice(7)}`, b);
      await editManifest(layout, (mm) => {
        const l = (mm.layers as Record<string, unknown>[]).at(-1)!;
        l.mediaType = "application/vnd.oci.image.layer.v1.tar";
        l.digest = ad.digest;
        l.size = ad.size;
      });
      await rejects(
        pullImage(ref, { store, progress: null }),
        /layer sha256:[0-9a-f]{12} \(sha256:[0-9a-f]{64}\): digest mismatch \(got sha256:[0-9a-f]{64}, expected sha256:/,
      );
      assertNothingLeft(store, first);

      // 5. A hostile layer (a symlink, then a file through it) with correct digests.
      const hostile = makeTar([{ name: "etc/ln", type: "2", linkname: "/" }, {
        name: "etc/ln/pwned",
        data: "x",
      }]);
      const hb = await addBlob(layout, hostile);
      await editManifest(layout, (mm) => {
        const l = (mm.layers as Record<string, unknown>[]).at(-1)!;
        l.mediaType = "application/vnd.oci.image.layer.v1.tar";
        l.digest = hb.digest;
        l.size = hb.size;
      });
      // The config's diff ID no longer matches: also refused, naming the layer.
      await rejects(
        pullImage(ref, { store, progress: null }),
        /diff ID|parent "etc\/ln" is a symlink/,
      );
      assertNothingLeft(store, first);
    });
  },
);
