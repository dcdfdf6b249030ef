/**
 * A `docker save` tar as an {@link ImageSource}. Two forms exist:
 *
 * - **OCI** (Docker 25 and later, and `docker save` of containerd images): the
 *   archive holds an OCI image layout (`oci-layout`, `index.json`,
 *   `blobs/sha256/…`), read as {@link OciLayoutSource} reads a directory.
 * - **legacy** (older Docker, `skopeo copy … docker-archive:`): `manifest.json`
 *   lists one image's config file and layer tars (`<id>/layer.tar`, or
 *   `<hex>.tar`), which may be symlinks to one another inside the archive.
 *   There is no image manifest: skiff writes an OCI manifest for it (config
 *   and layers by their sha256, media types by sniffing each layer's first
 *   bytes), whose digest then names the image.
 *
 * The archive is indexed once by seeking over its members (no layer is read
 * to find the others); members are then read in place.
 *
 * @module
 */

import { sha256Digest, verifyBytes } from "./digest.ts";
import {
  CONFIG_MAX,
  type Descriptor,
  encodeManifest,
  MANIFEST_MAX,
  ManifestError,
  MEDIA,
  parseImageConfig,
  parseManifestOrIndex,
} from "./manifest.ts";
import { type LayoutFiles, OciLayoutSource } from "./oci_layout.ts";
import { type ImageSource, readAll, type ResolvedManifest } from "./source.ts";
import { showName, TarReader } from "./tar.ts";
import { Hasher } from "./digest.ts";

interface Member {
  offset: number;
  size: number;
  /** Symlink target (cleaned, relative to the archive root), or null for a file. */
  link: string | null;
}

/** Cleans a member name (`./a//b` → `a/b`); null when it leaves the archive. */
function clean(name: string): string | null {
  const out: string[] = [];
  for (const c of name.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (out.length === 0) return null;
      out.pop();
    } else out.push(c);
  }
  return out.join("/");
}

/** Indexes the regular files and symlinks of a tar file by seeking over their data. */
async function indexArchive(path: string): Promise<Map<string, Member>> {
  const file = await Deno.open(path);
  try {
    const size = (await file.stat()).size;
    const tar = new TarReader({ file, size }, { metaMax: 1 << 20 });
    const members = new Map<string, Member>();
    for (let e = await tar.next(); e; e = await tar.next()) {
      const name = clean(e.name);
      if (name === null || name === "") continue;
      if (e.type === "file") {
        members.set(name, { offset: tar.dataOffset, size: e.size, link: null });
      } else if (e.type === "symlink" || e.type === "hardlink") {
        const base = e.type === "symlink" ? name.slice(0, Math.max(0, name.lastIndexOf("/"))) : "";
        const target = clean(e.linkname.startsWith("/") ? e.linkname : `${base}/${e.linkname}`);
        if (target !== null) members.set(name, { offset: 0, size: 0, link: target });
      }
    }
    return members;
  } catch (e) {
    throw new ManifestError(`${path}: not a readable tar archive: ${(e as Error).message}`);
  } finally {
    file.close();
  }
}

/** The members of an archive as layout files. */
class ArchiveFiles implements LayoutFiles {
  #path: string;
  #members: Map<string, Member>;
  constructor(path: string, members: Map<string, Member>) {
    this.#path = path;
    this.#members = members;
  }

  /** The file member a name leads to (following links inside the archive, a few hops). */
  member(rel: string): Member | null {
    let m = this.#members.get(rel) ?? null;
    for (let hops = 0; m?.link != null && hops < 8; hops++) m = this.#members.get(m.link) ?? null;
    return m && m.link === null ? m : null;
  }

  has(rel: string): boolean {
    return this.member(rel) !== null;
  }

  async read(rel: string, max: number): Promise<Uint8Array> {
    return await readAll(await this.open(rel), max, `${this.#path}: ${rel}`);
  }

  async head(rel: string, n: number): Promise<Uint8Array> {
    const m = this.member(rel)!;
    const f = await Deno.open(this.#path);
    try {
      await f.seek(m.offset, Deno.SeekMode.Start);
      const buf = new Uint8Array(Math.min(n, m.size));
      let got = 0;
      while (got < buf.length) {
        const k = await f.read(buf.subarray(got));
        if (k === null) break;
        got += k;
      }
      return buf.subarray(0, got);
    } finally {
      f.close();
    }
  }

  async open(rel: string): Promise<ReadableStream<Uint8Array>> {
    const m = this.member(rel);
    if (!m) throw new ManifestError(`${this.#path}: no member ${showName(rel)}`);
    const f = await Deno.open(this.#path);
    await f.seek(m.offset, Deno.SeekMode.Start);
    let left = m.size;
    return new ReadableStream<Uint8Array>({
      type: "bytes",
      async pull(ctl) {
        if (left === 0) {
          f.close();
          ctl.close();
          return;
        }
        const buf = new Uint8Array(Math.min(left, 1 << 20));
        const n = await f.read(buf);
        if (n === null) {
          f.close();
          ctl.error(new ManifestError(`archive member ${rel}: the file ends early`));
          return;
        }
        left -= n;
        ctl.enqueue(buf.subarray(0, n));
      },
      cancel() {
        f.close();
      },
    });
  }

  close(): void {}
}

/** Docker's legacy `manifest.json` entry. */
interface LegacyEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** A `docker save` archive; see the module documentation. */
export class DockerArchiveSource implements ImageSource {
  readonly name: string;
  #path: string;
  #files: ArchiveFiles | null = null;
  #oci: OciLayoutSource | null = null;
  /** Blob paths of the legacy form, by the digests of the manifest skiff wrote. */
  #paths = new Map<string, string>();

  constructor(name: string, path: string) {
    this.name = name;
    this.#path = path;
  }

  async manifest(): Promise<ResolvedManifest> {
    const files = this.#files = new ArchiveFiles(this.#path, await indexArchive(this.#path));
    if (files.has("oci-layout") && files.has("index.json")) {
      this.#oci = new OciLayoutSource(this.name, files, this.#path, null);
      return await this.#oci.manifest();
    }
    return await this.#legacy(files);
  }

  async #legacy(files: ArchiveFiles): Promise<ResolvedManifest> {
    const w = this.#path;
    if (!files.has("manifest.json")) {
      throw new ManifestError(`${w} is not a docker save archive (no manifest.json or index.json)`);
    }
    let list: LegacyEntry[];
    try {
      list = JSON.parse(new TextDecoder().decode(await files.read("manifest.json", MANIFEST_MAX)));
    } catch (e) {
      throw new ManifestError(`${w}: manifest.json: ${(e as Error).message}`);
    }
    if (!Array.isArray(list) || list.length === 0) {
      throw new ManifestError(`${w}: manifest.json lists no image`);
    }
    if (list.length > 1) {
      const tags = list.flatMap((e) => e?.RepoTags ?? []).join(", ");
      throw new ManifestError(
        `${w} holds ${list.length} images (${tags || "untagged"}); save one image per archive`,
      );
    }
    const entry = list[0];
    if (
      typeof entry?.Config !== "string" || !Array.isArray(entry.Layers) ||
      entry.Layers.some((l) => typeof l !== "string")
    ) {
      throw new ManifestError(`${w}: manifest.json: an entry without Config or Layers`);
    }
    const member = (rel: string, what: string) => {
      const name = clean(rel);
      if (name === null || !files.has(name)) {
        throw new ManifestError(`${w}: ${what} ${rel} is missing from the archive`);
      }
      return name;
    };
    const configPath = member(entry.Config, "config");
    const configBytes = await files.read(configPath, CONFIG_MAX);
    const configDigest = sha256Digest(configBytes);
    const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(configPath);
    if (named) verifyBytes(configBytes, `sha256:${named[1]}`, null, `${w}: config ${entry.Config}`);
    const config = parseImageConfig(configBytes, `${w}: config`);
    this.#paths.set(configDigest, configPath);
    const layers: Descriptor[] = [];
    for (const [i, rel] of entry.Layers.entries()) {
      const path = member(rel, "layer");
      const m = files.member(path)!;
      const head = await files.head(path, 4);
      const mediaType = head[0] === 0x1f && head[1] === 0x8b
        ? MEDIA.OCI_LAYER_GZIP
        : head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd
        ? MEDIA.OCI_LAYER_ZSTD
        : MEDIA.OCI_LAYER;
      let digest: string;
      const byName = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(path);
      if (byName) digest = `sha256:${byName[1]}`;
      else if (mediaType === MEDIA.OCI_LAYER && config.diffIds[i]) digest = config.diffIds[i];
      else {
        // A compressed layer known only by its path: its digest is what it hashes to.
        const h = new Hasher();
        for await (const c of await files.open(path)) h.update(c);
        digest = h.digest();
      }
      this.#paths.set(digest, path);
      layers.push({ mediaType, digest, size: m.size });
    }
    const configDesc = {
      mediaType: MEDIA.OCI_CONFIG,
      digest: configDigest,
      size: configBytes.length,
    };
    const bytes = encodeManifest(configDesc, layers);
    const manifest = parseManifestOrIndex(bytes, `${w}: manifest`);
    if (manifest.kind !== "manifest") throw new Error("unreachable");
    return { digest: sha256Digest(bytes), bytes, manifest };
  }

  blob(d: Descriptor): Promise<ReadableStream<Uint8Array>> {
    if (this.#oci) return this.#oci.blob(d);
    const path = this.#paths.get(d.digest);
    if (!path || !this.#files) {
      return Promise.reject(new ManifestError(`${this.#path}: no blob ${d.digest} in the archive`));
    }
    return this.#files.open(path);
  }

  close(): void {
    this.#files?.close();
  }
}
