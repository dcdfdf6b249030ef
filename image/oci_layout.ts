/**
 * An OCI image layout (image-spec `image-layout.md`) as an {@link ImageSource}:
 * `oci-layout` (version check), `index.json`, and `blobs/ALG/HEX`. The same
 * code reads a layout directory and the OCI layout inside a `docker save`
 * archive of Docker 25 and later, through {@link LayoutFiles}.
 *
 * The image is chosen by the `org.opencontainers.image.ref.name` annotation
 * when a tag is given, else the only entry of `index.json`; a nested image
 * index is followed to its `linux/amd64` manifest.
 *
 * @module
 */

import { parseDigest, verifyBytes } from "./digest.ts";
import {
  type Descriptor,
  type ImageIndex,
  MANIFEST_MAX,
  ManifestError,
  MEDIA,
  parseManifestOrIndex,
  selectPlatform,
} from "./manifest.ts";
import { type ImageSource, readAll, type ResolvedManifest } from "./source.ts";

/** The files of a layout, wherever they are. */
export interface LayoutFiles {
  /** Whether a file exists. */
  has(rel: string): boolean;
  /** A file's bytes (at most `max`). */
  read(rel: string, max: number): Promise<Uint8Array>;
  /** A file's bytes as a stream. */
  open(rel: string): Promise<ReadableStream<Uint8Array>>;
  close(): void;
}

/** The annotation naming an image in `index.json` (image-spec annotations.md). */
export const REF_NAME = "org.opencontainers.image.ref.name";
/** Nested indexes followed at most. */
const MAX_DEPTH = 4;

/** A layout directory on the host. */
export function dirFiles(dir: string): LayoutFiles {
  return {
    has(rel) {
      try {
        Deno.statSync(`${dir}/${rel}`);
        return true;
      } catch {
        return false;
      }
    },
    async read(rel, max) {
      const f = await Deno.open(`${dir}/${rel}`);
      return await readAll(f.readable, max, `${dir}/${rel}`);
    },
    async open(rel) {
      return (await Deno.open(`${dir}/${rel}`)).readable;
    },
    close() {},
  };
}

/** The path of a blob in a layout. */
export function blobPath(digest: string): string {
  const d = parseDigest(digest);
  return `blobs/${d.algorithm}/${d.hex}`;
}

/** An OCI layout as an image source. */
export class OciLayoutSource implements ImageSource {
  readonly name: string;
  #files: LayoutFiles;
  #where: string;
  #tag: string | null;

  /** `where` names the layout in messages; `tag` picks an image by its ref.name annotation. */
  constructor(name: string, files: LayoutFiles, where: string, tag: string | null) {
    this.name = name;
    this.#files = files;
    this.#where = where;
    this.#tag = tag;
  }

  async #json(d: Descriptor, what: string): Promise<Uint8Array> {
    if (d.size > MANIFEST_MAX) throw new ManifestError(`${what}: ${d.size} bytes is too large`);
    const path = blobPath(d.digest);
    if (!this.#files.has(path)) {
      throw new ManifestError(`${what}: blob ${d.digest} is missing from ${this.#where}`);
    }
    const bytes = await this.#files.read(path, MANIFEST_MAX);
    verifyBytes(bytes, d.digest, d.size, what);
    return bytes;
  }

  async manifest(): Promise<ResolvedManifest> {
    const w = this.#where;
    if (!this.#files.has("oci-layout") || !this.#files.has("index.json")) {
      throw new ManifestError(`${w} is not an OCI image layout (no oci-layout or index.json)`);
    }
    let layout: { imageLayoutVersion?: unknown };
    try {
      layout = JSON.parse(new TextDecoder().decode(await this.#files.read("oci-layout", 4096)));
    } catch (e) {
      throw new ManifestError(`${w}/oci-layout: ${(e as Error).message}`);
    }
    if (
      typeof layout?.imageLayoutVersion !== "string" || !layout.imageLayoutVersion.startsWith("1.")
    ) {
      throw new ManifestError(
        `${w}/oci-layout: unsupported imageLayoutVersion ${
          JSON.stringify(layout?.imageLayoutVersion)
        }`,
      );
    }
    const index = parseManifestOrIndex(
      await this.#files.read("index.json", MANIFEST_MAX),
      `${w}/index.json`,
      MEDIA.OCI_INDEX,
    );
    if (index.kind !== "index") throw new ManifestError(`${w}/index.json is not an image index`);
    let d = this.#pick(index);
    for (let depth = 0;; depth++) {
      const what = `${w}: manifest ${d.digest}`;
      const bytes = await this.#json(d, what);
      const m = parseManifestOrIndex(bytes, what, d.mediaType);
      if (m.kind === "manifest") return { digest: d.digest, bytes, manifest: m };
      if (depth >= MAX_DEPTH) throw new ManifestError(`${what}: image indexes nested too deep`);
      d = selectPlatform(m, what);
    }
  }

  /** The index entry for the tag, or the only entry. */
  #pick(index: ImageIndex): Descriptor {
    const w = this.#where;
    const tags = index.manifests.map((m) => m.annotations?.[REF_NAME]).filter((t) =>
      t !== undefined
    );
    if (this.#tag !== null) {
      const hits = index.manifests.filter((m) => m.annotations?.[REF_NAME] === this.#tag);
      if (hits.length === 0) {
        throw new ManifestError(
          `${w} has no image tagged '${this.#tag}' (tags: ${
            tags.length ? tags.join(", ") : "none"
          })`,
        );
      }
      return hits.length === 1
        ? hits[0]
        : selectPlatform({ ...index, manifests: hits }, `${w}:${this.#tag}`);
    }
    if (index.manifests.length === 1) return index.manifests[0];
    if (index.manifests.length === 0) throw new ManifestError(`${w} holds no image`);
    // Several entries without a tag: platform variants of one image are fine.
    if (tags.length === 0) return selectPlatform(index, w);
    throw new ManifestError(
      `${w} holds ${index.manifests.length} images; name one with oci:DIR:TAG (tags: ${
        tags.join(", ")
      })`,
    );
  }

  blob(d: Descriptor): Promise<ReadableStream<Uint8Array>> {
    const path = blobPath(d.digest);
    if (!this.#files.has(path)) {
      return Promise.reject(new ManifestError(`blob ${d.digest} is missing from ${this.#where}`));
    }
    return this.#files.open(path);
  }

  close(): void {
    this.#files.close();
  }
}
