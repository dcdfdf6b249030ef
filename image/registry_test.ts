/**
 * The registry source: L0 against a fake registry on the loopback (anonymous
 * bearer tokens, a manifest list, a redirect of blobs to another origin,
 * Basic auth refused, errors); L3 against Debian's `docker-registry` with an
 * image pushed by `skopeo`, and a blob corrupted in the registry's storage.
 */

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { parseChallenge } from "./registry.ts";
import { parseReference } from "./reference.ts";
import { pullImage } from "./pull.ts";
import { ImageStore } from "./store.ts";
import { sha256Digest } from "./digest.ts";
import { MEDIA } from "./manifest.ts";
import { gzip, makeTar } from "./testing/tar_writer.ts";
import { buildTestImage, imageTest, run, TEST_IMAGE } from "./testing/images.ts";
import { startRegistry } from "./testing/registry.ts";
import { readLayerIndex } from "../devices/fuse/layer_index.ts";

Deno.test("registry: WWW-Authenticate challenges", () => {
  deepStrictEqual(
    parseChallenge(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
    ),
    {
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/busybox:pull",
      },
    },
  );
  deepStrictEqual(parseChallenge('Basic realm="Registry Realm"'), {
    scheme: "basic",
    params: { realm: "Registry Realm" },
  });
  deepStrictEqual(parseChallenge('Bearer realm=https://x/t, service="a \\"q\\" b"'), {
    scheme: "bearer",
    params: { realm: "https://x/t", service: 'a "q" b' },
  });
  strictEqual(parseChallenge(""), null);
});

const enc = new TextEncoder();
const json = (v: unknown) => enc.encode(JSON.stringify(v));

/** A one-layer image (Docker schema 2 media types) under a manifest list with two platforms. */
async function fakeImage() {
  const tar = makeTar([{ name: "etc/", type: "5" }, {
    name: "etc/hello",
    data: "from the fake registry\n",
  }]);
  const layer = await gzip(tar);
  const config = json({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [sha256Digest(tar)] },
    config: { Cmd: ["/bin/true"] },
  });
  const manifest = json({
    schemaVersion: 2,
    mediaType: MEDIA.DOCKER_MANIFEST,
    config: { mediaType: MEDIA.DOCKER_CONFIG, digest: sha256Digest(config), size: config.length },
    layers: [{
      mediaType: MEDIA.DOCKER_LAYER_GZIP,
      digest: sha256Digest(layer),
      size: layer.length,
    }],
  });
  const list = json({
    schemaVersion: 2,
    mediaType: MEDIA.DOCKER_LIST,
    manifests: [
      {
        mediaType: MEDIA.DOCKER_MANIFEST,
        digest: `sha256:${"0".repeat(64)}`,
        size: 10,
        platform: { architecture: "arm64", os: "linux" },
      },
      {
        mediaType: MEDIA.DOCKER_MANIFEST,
        digest: sha256Digest(manifest),
        size: manifest.length,
        platform: { architecture: "amd64", os: "linux" },
      },
    ],
  });
  const blobs = new Map([[sha256Digest(layer), layer], [sha256Digest(config), config]]);
  const manifests = new Map([
    ["v1", [list, MEDIA.DOCKER_LIST] as const],
    [sha256Digest(list), [list, MEDIA.DOCKER_LIST] as const],
    [sha256Digest(manifest), [manifest, MEDIA.DOCKER_MANIFEST] as const],
  ]);
  return { blobs, manifests, manifestDigest: sha256Digest(manifest), tar };
}

interface Fake {
  registry: string;
  log: string[];
  close(): Promise<void>;
}

/** The fake: a registry that wants bearer tokens and redirects blobs to a storage server. */
function fakeRegistry(
  image: Awaited<ReturnType<typeof fakeImage>>,
  mode: "bearer" | "basic" = "bearer",
): Fake {
  const log: string[] = [];
  const storage = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const u = new URL(req.url);
    if (u.pathname === "/token") {
      log.push(`token ${u.searchParams.get("service")} ${u.searchParams.get("scope")}`);
      return Response.json({ token: "tok-123" });
    }
    const digest = u.pathname.slice("/blob/".length);
    log.push(`storage ${digest.slice(0, 14)} auth=${req.headers.get("authorization") ?? "none"}`);
    const b = image.blobs.get(digest);
    return b ? new Response(b as Uint8Array<ArrayBuffer>) : new Response("no", { status: 404 });
  });
  const sp = storage.addr.port;
  const registry = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const u = new URL(req.url);
    if (req.headers.get("authorization") !== "Bearer tok-123") {
      log.push(`401 ${u.pathname}`);
      return new Response(
        JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }),
        {
          status: 401,
          headers: {
            "www-authenticate": mode === "bearer"
              ? `Bearer realm="http://127.0.0.1:${sp}/token",service="fake",scope="repository:test/img:pull"`
              : 'Basic realm="fake"',
          },
        },
      );
    }
    const m = /^\/v2\/test\/img\/(manifests|blobs)\/(.+)$/.exec(u.pathname);
    if (m?.[1] === "manifests") {
      const got = image.manifests.get(m[2]);
      if (!got) {
        return new Response(
          JSON.stringify({ errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }] }),
          {
            status: 404,
          },
        );
      }
      log.push(`manifest ${m[2].slice(0, 14)}`);
      return new Response(got[0] as Uint8Array<ArrayBuffer>, {
        headers: { "content-type": got[1], "docker-content-digest": sha256Digest(got[0]) },
      });
    }
    if (m?.[1] === "blobs") {
      return new Response(null, {
        status: 307,
        headers: { location: `http://127.0.0.1:${sp}/blob/${m[2]}` },
      });
    }
    return new Response("?", { status: 404 });
  });
  return {
    registry: `127.0.0.1:${registry.addr.port}`,
    log,
    async close() {
      await registry.shutdown();
      await storage.shutdown();
    },
  };
}

Deno.test("registry: anonymous bearer token, manifest list → linux/amd64, blobs redirected without Authorization", async () => {
  const image = await fakeImage();
  const fake = fakeRegistry(image);
  const base = await Deno.makeTempDir({ prefix: "skiff-registry-l0-" });
  try {
    const store = new ImageStore(`${base}/store`);
    const r = await pullImage(parseReference(`${fake.registry}/test/img:v1`), {
      store,
      progress: null,
    });
    strictEqual(r.record.name, `${fake.registry}/test/img:v1`);
    strictEqual(r.record.manifestDigest, image.manifestDigest);
    strictEqual(r.record.layers[0].diffId, sha256Digest(image.tar));
    ok(
      readLayerIndex(store.layerDir(r.record.layers[0].diffId)).some((e) => e.path === "etc/hello"),
    );
    strictEqual(fake.log.filter((l) => l.startsWith("token")).length, 1, fake.log.join("\n"));
    strictEqual(fake.log[1], "token fake repository:test/img:pull");
    ok(
      fake.log.filter((l) => l.startsWith("storage")).every((l) => l.endsWith("auth=none")),
      fake.log.join("\n"),
    );

    await rejects(
      pullImage(parseReference(`${fake.registry}/test/img:nope`), { store, progress: null }),
      /manifests\/nope: 404 Not Found — MANIFEST_UNKNOWN: manifest unknown \(does .* exist, and is it public\?\)/,
    );
    await rejects(
      pullImage(parseReference(`${fake.registry}/test/img@sha256:${"1".repeat(64)}`), {
        store,
        progress: null,
      }),
      /404/,
    );
  } finally {
    await fake.close();
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("registry: Basic auth is refused in one line (skiff pulls anonymously)", async () => {
  const fake = fakeRegistry(await fakeImage(), "basic");
  const base = await Deno.makeTempDir({ prefix: "skiff-registry-l0-" });
  try {
    await rejects(
      pullImage(parseReference(`${fake.registry}/test/img:v1`), {
        store: new ImageStore(`${base}/s`),
        progress: null,
      }),
      /asks for basic authentication .* skiff pulls anonymously/,
    );
  } finally {
    await fake.close();
    await Deno.remove(base, { recursive: true });
  }
});

imageTest(
  "registry: push to docker-registry on 127.0.0.1 with skopeo, pull with skiff; a corrupt blob fails cleanly",
  ["docker-registry"],
  async () => {
    const base = await Deno.makeTempDir({ prefix: "skiff-registry-l3-" });
    try {
      const layout = await buildTestImage(base);
      await Deno.mkdir(`${base}/registry`);
      await using reg = await startRegistry(`${base}/registry`);
      await run("skopeo", [
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        `oci:${layout}:${TEST_IMAGE.tag}`,
        `docker://${reg.host}/test/image:${TEST_IMAGE.tag}`,
      ]);
      const store = new ImageStore(`${base}/store`);
      const pulled = await pullImage(parseReference(`${reg.host}/test/image:${TEST_IMAGE.tag}`), {
        store,
        progress: null,
      });
      const local = await pullImage(parseReference(`oci:${layout}:${TEST_IMAGE.tag}`), {
        store: new ImageStore(`${base}/store-oci`),
        progress: null,
      });
      deepStrictEqual(
        pulled.record.layers.map((l) => l.diffId),
        local.record.layers.map((l) => l.diffId),
      );
      strictEqual(pulled.fetched, 2);
      // By digest too.
      const byDigest = await pullImage(
        parseReference(`${reg.host}/test/image@${pulled.record.manifestDigest}`),
        {
          store,
          progress: null,
        },
      );
      strictEqual(byDigest.fetched, 0);
      strictEqual(byDigest.record.manifestDigest, pulled.record.manifestDigest);

      // Corrupt the first layer's bytes in the registry's storage (same size): the registry
      // now serves a blob that does not match the manifest's digest.
      const m = JSON.parse(new TextDecoder().decode(store.getBlob(pulled.record.manifestDigest)!));
      const hex = m.layers[0].digest.slice(7);
      const data = `${reg.storage}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
      const bytes = await Deno.readFile(data);
      bytes[bytes.length - 20] ^= 0x55;
      await Deno.writeFile(data, bytes);
      const fresh = new ImageStore(`${base}/store-fresh`);
      await rejects(
        pullImage(parseReference(`${reg.host}/test/image:${TEST_IMAGE.tag}`), {
          store: fresh,
          progress: null,
        }),
        (e: Error) => {
          ok(new RegExp(`layer sha256:${hex.slice(0, 12)}`).test(e.message), e.message);
          strictEqual(e.message.includes("\n"), false);
          return true;
        },
      );
      const left = (d: string) => {
        try {
          return [...Deno.readDirSync(`${fresh.root}/${d}`)].map((e) => e.name);
        } catch {
          return [];
        }
      };
      deepStrictEqual(left("tmp"), []);
      deepStrictEqual(left("images"), []);
      ok(
        !left("layers/sha256").includes(pulled.record.layers[0].diffId.slice(7)),
        "no partial layer",
      );
    } finally {
      await Deno.remove(base, { recursive: true });
    }
  },
);
