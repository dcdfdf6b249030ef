/**
 * The content-addressed image store in skiff's cache
 * (`${XDG_CACHE_HOME:-~/.cache}/skiff/images/`):
 *
 * ```
 * blobs/sha256/HEX          manifests and configs, by digest (verified before they are written)
 * layers/sha256/HEX/        one unpacked layer per diff ID (index.json, root/, info.json)
 * images/HASH.json          one record per image name: manifest and config digests, layers, time
 * tmp/                      unpacks and writes in progress; renamed into place when complete
 * lock                      flock: shared while pulling or running, exclusive to remove
 * ```
 *
 * Every write is atomic: a layer is unpacked into a fresh directory under
 * `tmp/` and renamed into `layers/` only once its digests are verified, so an
 * interrupted or failed pull leaves no partial layer (its `tmp/` entry is
 * removed on failure, and by the next garbage collection if the process was
 * killed). Blobs and records are written to a temporary name and renamed.
 *
 * @module
 */

import { sha256Hex } from "../hv/sha256.ts";
import { parseDigest } from "./digest.ts";
import { LAYER_INDEX } from "../devices/fuse/layer_index.ts";

/** One image the store holds under a name. */
export interface ImageRecord {
  /** Canonical reference (`docker.io/library/busybox:latest`, `oci:/dir:tag`, …). */
  name: string;
  /** Digest of the image manifest (for a docker-archive: of the OCI manifest skiff wrote for it). */
  manifestDigest: string;
  configDigest: string;
  /** The layers bottom first: diff ID and unpacked regular-file bytes. */
  layers: { diffId: string; bytes: number }[];
  /** When it was pulled (ISO 8601). */
  pulled: string;
}

/** What a layer's `info.json` holds. */
export interface LayerInfo {
  diffId: string;
  entries: number;
  bytes: number;
}

/** A store operation that failed. */
export class StoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreError";
  }
}

/** `${XDG_CACHE_HOME:-~/.cache}/skiff/images`. */
export function defaultImageRoot(
  env: Record<string, string | undefined> = Deno.env.toObject(),
): string {
  const cache = env.XDG_CACHE_HOME || (env.HOME ? `${env.HOME}/.cache` : null);
  if (!cache) {
    throw new StoreError("neither XDG_CACHE_HOME nor HOME is set: no place for the image store");
  }
  return `${cache}/skiff/images`;
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes `bytes` to `path` through a temporary file and a rename. */
function writeAtomic(path: string, bytes: Uint8Array, tmpDir: string): void {
  const tmp = `${tmpDir}/${crypto.randomUUID()}`;
  Deno.writeFileSync(tmp, bytes, { mode: 0o644 });
  try {
    Deno.renameSync(tmp, path);
  } catch (e) {
    Deno.removeSync(tmp);
    throw e;
  }
}

/** The image store; see the module documentation. */
export class ImageStore {
  /** The store's directory. */
  readonly root: string;

  constructor(root: string = defaultImageRoot()) {
    this.root = root;
  }

  /** Creates the directories (private to the user: images may hold secrets). */
  ensure(): void {
    Deno.mkdirSync(this.root, { recursive: true, mode: 0o700 });
    for (
      const d of ["blobs/sha256", "blobs/sha512", "layers/sha256", "layers/sha512", "images", "tmp"]
    ) {
      Deno.mkdirSync(`${this.root}/${d}`, { recursive: true, mode: 0o755 });
    }
  }

  #path(kind: "blobs" | "layers", digest: string): string {
    const d = parseDigest(digest);
    return `${this.root}/${kind}/${d.algorithm}/${d.hex}`;
  }

  /** The directory of the layer with this diff ID (whether it exists or not). */
  layerDir(diffId: string): string {
    return this.#path("layers", diffId);
  }

  /** Whether the layer is unpacked (complete: its index exists). */
  hasLayer(diffId: string): boolean {
    return exists(`${this.layerDir(diffId)}/${LAYER_INDEX}`);
  }

  /** A layer's info.json, or null when absent or unreadable. */
  layerInfo(diffId: string): LayerInfo | null {
    try {
      return JSON.parse(Deno.readTextFileSync(`${this.layerDir(diffId)}/info.json`));
    } catch {
      return null;
    }
  }

  /** A new empty directory under tmp/ for work in progress. */
  tempDir(prefix: string): string {
    this.ensure();
    return Deno.makeTempDirSync({ dir: `${this.root}/tmp`, prefix });
  }

  /**
   * Unpacks a layer with `fill` into a fresh temporary directory and renames it
   * to its place. A failure removes the temporary directory. Another process
   * that finished the same layer first wins (ours is discarded).
   */
  async addLayer(
    diffId: string,
    fill: (dir: string) => Promise<{ entries: number; bytes: number }>,
  ): Promise<LayerInfo> {
    const dest = this.layerDir(diffId);
    const tmp = this.tempDir("layer-");
    try {
      const r = await fill(tmp);
      const info: LayerInfo = { diffId, entries: r.entries, bytes: r.bytes };
      Deno.writeTextFileSync(`${tmp}/info.json`, JSON.stringify(info) + "\n");
      try {
        Deno.renameSync(tmp, dest);
      } catch (e) {
        if (!this.hasLayer(diffId)) throw e;
        Deno.removeSync(tmp, { recursive: true }); // a concurrent pull put it there first
      }
      return info;
    } catch (e) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** Stores a verified blob (manifest, config) under its digest. */
  putBlob(digest: string, bytes: Uint8Array): void {
    this.ensure();
    const path = this.#path("blobs", digest);
    if (!exists(path)) writeAtomic(path, bytes, `${this.root}/tmp`);
  }

  /** A stored blob, or null. */
  getBlob(digest: string): Uint8Array | null {
    try {
      return Deno.readFileSync(this.#path("blobs", digest));
    } catch {
      return null;
    }
  }

  #recordPath(name: string): string {
    return `${this.root}/images/${sha256Hex(name).slice(0, 32)}.json`;
  }

  /** Writes (replaces) the record of `rec.name`. */
  putRecord(rec: ImageRecord): void {
    this.ensure();
    writeAtomic(
      this.#recordPath(rec.name),
      new TextEncoder().encode(JSON.stringify(rec, null, 2) + "\n"),
      `${this.root}/tmp`,
    );
  }

  /** The record of a name, or null. */
  getRecord(name: string): ImageRecord | null {
    try {
      const r = JSON.parse(Deno.readTextFileSync(this.#recordPath(name)));
      return isRecord(r) && r.name === name ? r : null;
    } catch {
      return null;
    }
  }

  /** Every record (unreadable ones are skipped), sorted by name. */
  records(): ImageRecord[] {
    const out: ImageRecord[] = [];
    try {
      for (const e of Deno.readDirSync(`${this.root}/images`)) {
        if (!e.name.endsWith(".json")) continue;
        try {
          const r = JSON.parse(Deno.readTextFileSync(`${this.root}/images/${e.name}`));
          if (isRecord(r)) out.push(r);
        } catch {
          // a record being replaced, or garbage: not an image
        }
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Removes the record of `name`; false when there was none. */
  removeRecord(name: string): boolean {
    try {
      Deno.removeSync(this.#recordPath(name));
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  }

  /**
   * Removes layers and blobs no record refers to, and everything in tmp/.
   * Hold the exclusive lock ({@link lock}) while calling it. Returns what was removed.
   */
  gc(): { layers: number; blobs: number; bytes: number } {
    const keepLayers = new Set<string>();
    const keepBlobs = new Set<string>();
    for (const r of this.records()) {
      keepBlobs.add(r.manifestDigest);
      keepBlobs.add(r.configDigest);
      for (const l of r.layers) keepLayers.add(l.diffId);
    }
    let layers = 0, blobs = 0, bytes = 0;
    for (const alg of ["sha256", "sha512"]) {
      for (const kind of ["layers", "blobs"] as const) {
        const dir = `${this.root}/${kind}/${alg}`;
        let names: string[];
        try {
          names = [...Deno.readDirSync(dir)].map((e) => e.name);
        } catch {
          continue;
        }
        for (const hex of names) {
          const digest = `${alg}:${hex}`;
          if ((kind === "layers" ? keepLayers : keepBlobs).has(digest)) continue;
          if (kind === "layers") {
            bytes += this.layerInfo(digest)?.bytes ?? 0;
            layers++;
          } else blobs++;
          Deno.removeSync(`${dir}/${hex}`, { recursive: true });
        }
      }
    }
    try {
      for (const e of Deno.readDirSync(`${this.root}/tmp`)) {
        Deno.removeSync(`${this.root}/tmp/${e.name}`, { recursive: true });
      }
    } catch {
      // no tmp/
    }
    return { layers, blobs, bytes };
  }

  /**
   * Takes the store's lock: shared (pulls and runs) or exclusive (removal and
   * garbage collection). `onWait` is called once if the lock is not free at
   * once. Dispose the result to release it.
   */
  async lock(exclusive: boolean, onWait?: () => void): Promise<Disposable> {
    this.ensure();
    const file = Deno.openSync(`${this.root}/lock`, { read: true, write: true, create: true });
    const timer = onWait ? setTimeout(onWait, 300) : undefined;
    try {
      await file.lock(exclusive);
    } catch (e) {
      file.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return {
      [Symbol.dispose]() {
        try {
          file.unlockSync();
        } finally {
          file.close();
        }
      },
    };
  }
}

function isRecord(r: unknown): r is ImageRecord {
  const o = r as ImageRecord;
  return typeof o === "object" && o !== null && typeof o.name === "string" &&
    typeof o.manifestDigest === "string" && typeof o.configDigest === "string" &&
    Array.isArray(o.layers) &&
    o.layers.every((l) => typeof l?.diffId === "string" && typeof l.bytes === "number") &&
    typeof o.pulled === "string";
}
