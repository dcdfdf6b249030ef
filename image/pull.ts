/**
 * Pulling an image into the store: resolve the reference to a manifest,
 * fetch and check the config, then fetch, verify and unpack each missing
 * layer — streaming, one pass per layer:
 *
 * ```
 * blob ─▶ digest + size check ─▶ gunzip (DecompressionStream) ─▶ diff-ID check ─▶ tar ─▶ unpack
 * ```
 *
 * A layer is renamed into the store only when both digests matched at the
 * end of its stream (store.ts), so a bad blob, a corrupt gzip stream or an
 * interrupted pull leaves nothing behind. Layers already in the store (by
 * diff ID) are not fetched. The record is written last.
 *
 * @module
 */

import { shortDigest, verifyBytes, verifyStream } from "./digest.ts";
import {
  checkConfig,
  type Compression,
  CONFIG_MAX,
  type Descriptor,
  type ImageConfig,
  layerCompression,
  parseImageConfig,
} from "./manifest.ts";
import type { ImageRef } from "./reference.ts";
import { DockerArchiveSource } from "./docker_archive.ts";
import { dirFiles, OciLayoutSource } from "./oci_layout.ts";
import { RegistrySource } from "./registry.ts";
import { type ImageSource, readAll } from "./source.ts";
import { type ImageRecord, type ImageStore, type LayerInfo } from "./store.ts";
import { unpackLayer, type UnpackLimits } from "./unpack.ts";
import { PullProgress } from "./progress.ts";

/** Options of {@link pullImage}. */
export interface PullOptions {
  store: ImageStore;
  /** Progress reporter; null for none (default: one on stderr). */
  progress?: PullProgress | null;
  /** Caps per layer. */
  limits?: UnpackLimits;
  /** fetch for registries (tests). */
  fetch?: typeof fetch;
  signal?: AbortSignal;
  /** Layers fetched at once (default 3). */
  concurrency?: number;
}

/** A pull that failed; the message says which image and why. */
export class PullError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PullError";
  }
}

/** The source for a reference. */
export function openSource(
  ref: ImageRef,
  o: { fetch?: typeof fetch; signal?: AbortSignal } = {},
): ImageSource {
  switch (ref.kind) {
    case "oci":
      return new OciLayoutSource(ref.name, dirFiles(ref.dir), ref.dir, ref.tag);
    case "docker-archive":
      return new DockerArchiveSource(ref.name, ref.file);
    case "registry":
      return new RegistrySource(ref, o);
  }
}

/** A pulled image: its record and config. */
export interface PulledImage {
  record: ImageRecord;
  config: ImageConfig;
  /** Layers fetched and unpacked by this pull (the others were in the store). */
  fetched: number;
}

/** Pulls `ref` into the store; see the module documentation. */
export async function pullImage(ref: ImageRef, o: PullOptions): Promise<PulledImage> {
  const { store } = o;
  using _lock = await store.lock(false);
  const source = openSource(ref, o);
  const progress = o.progress === undefined ? new PullProgress(ref.name) : o.progress;
  try {
    const m = await source.manifest();
    const cd = m.manifest.config;
    let configBytes = store.getBlob(cd.digest);
    if (!configBytes) {
      if (cd.size > CONFIG_MAX) {
        throw new PullError(`${ref.name}: config of ${cd.size} bytes is too large`);
      }
      configBytes = await readAll(await source.blob(cd), CONFIG_MAX, `${ref.name}: config`);
    }
    verifyBytes(configBytes, cd.digest, cd.size, `${ref.name}: config ${cd.digest}`);
    const config = parseImageConfig(configBytes, `${ref.name}: config`);
    checkConfig(config, m.manifest.layers.length, `${ref.name}: config`);
    const layers = m.manifest.layers;
    // Refuse what cannot be unpacked before fetching anything.
    const compression = layers.map((l, i) => layerCompression(l, `${ref.name}: layer ${i}`));
    const zstd = compression.indexOf("zstd");
    if (zstd >= 0) {
      throw new PullError(
        `${ref.name}: layer ${layers[zstd].digest} is zstd-compressed (${
          layers[zstd].mediaType
        }), ` +
          "which skiff cannot unpack yet; use an image with gzip or uncompressed layers",
      );
    }
    const missing = layers.map((_, i) => i).filter((i) => !store.hasLayer(config.diffIds[i]));
    progress?.plan(missing.length, missing.reduce((n, i) => n + layers[i].size, 0));
    const infos: (LayerInfo | null)[] = layers.map((_, i) =>
      missing.includes(i) ? null : store.layerInfo(config.diffIds[i])
    );
    // A few layers at a time: downloads overlap, and gunzip/hash/unpack use both cores.
    // After a failure no new layer starts, and the pull waits for the running ones to
    // end (and clean up) before it reports the first error.
    const queue = [...missing];
    const worker = async () => {
      for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
        try {
          infos[i] = await fetchLayer(
            source,
            layers[i],
            config.diffIds[i],
            compression[i],
            o,
            progress,
          );
        } catch (e) {
          queue.length = 0;
          throw e;
        }
        progress?.layerDone();
      }
    };
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(o.concurrency ?? 3, queue.length) }, worker),
    );
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    store.putBlob(cd.digest, configBytes);
    store.putBlob(m.digest, m.bytes);
    const record: ImageRecord = {
      name: ref.name,
      manifestDigest: m.digest,
      configDigest: cd.digest,
      layers: config.diffIds.map((diffId, i) => ({ diffId, bytes: infos[i]?.bytes ?? 0 })),
      pulled: new Date().toISOString(),
    };
    store.putRecord(record);
    return { record, config, fetched: missing.length };
  } catch (e) {
    if (o.signal?.aborted) throw o.signal.reason ?? e;
    if (e instanceof PullError) throw e;
    const msg = (e as Error).message ?? String(e);
    throw new PullError(msg.startsWith(ref.name) ? msg : `${ref.name}: ${msg}`, { cause: e });
  } finally {
    progress?.finish();
    source.close();
  }
}

/** Fetches, verifies and unpacks one layer into the store. */
async function fetchLayer(
  source: ImageSource,
  d: Descriptor,
  diffId: string,
  compression: Compression,
  o: PullOptions,
  progress: PullProgress | null,
): Promise<LayerInfo> {
  const what = `layer ${shortDigest(d.digest)}`;
  return await o.store.addLayer(diffId, async (dir) => {
    o.signal?.throwIfAborted();
    let s = await source.blob(d);
    if (progress || o.signal) {
      // Progress, and an abort (Ctrl-C) that stops local sources too, not only fetches.
      s = s.pipeThrough(
        new TransformStream({
          transform(c, ctl) {
            o.signal?.throwIfAborted();
            progress?.add(c.length);
            ctl.enqueue(c);
          },
        }),
      );
    }
    s = s.pipeThrough(verifyStream(d.digest, d.size, `${what} (${d.digest})`));
    if (compression === "gzip") {
      s = s.pipeThrough(new DecompressionStream("gzip") as TransformStream<Uint8Array, Uint8Array>);
    }
    // An uncompressed layer's blob digest is its diff ID: checked once above.
    if (compression !== "none" || d.digest !== diffId) {
      s = s.pipeThrough(
        verifyStream(diffId, null, `${what}: uncompressed content (diff ID ${diffId})`),
      );
    }
    try {
      return await unpackLayer(s, dir, what, o.limits);
    } catch (e) {
      // Unpack and digest errors name the layer; the stream's own (gzip, network) do not.
      const msg = (e as Error).message ?? String(e);
      if (msg.startsWith(what)) throw e;
      throw new PullError(`${what}: ${msg}`, { cause: e });
    }
  });
}
