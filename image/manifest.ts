/**
 * Manifests, image indexes and image configs (OCI image-spec `manifest.md`,
 * `image-index.md`, `config.md`; Docker Image Manifest V2 Schema 2 and its
 * manifest list), parsed from untrusted JSON into checked, typed data.
 *
 * Only what skiff uses is kept: descriptors (media type, digest, size,
 * platform, annotations), a manifest's config and layers, and a config's
 * architecture, OS, `rootfs.diff_ids` and the run defaults (Entrypoint, Cmd,
 * Env, WorkingDir, User).
 *
 * @module
 */

import { parseDigest } from "./digest.ts";

/** Media types skiff reads (image-spec `media-types.md`; Docker manifest v2 schema 2). */
export const MEDIA = {
  OCI_INDEX: "application/vnd.oci.image.index.v1+json",
  OCI_MANIFEST: "application/vnd.oci.image.manifest.v1+json",
  OCI_CONFIG: "application/vnd.oci.image.config.v1+json",
  OCI_LAYER: "application/vnd.oci.image.layer.v1.tar",
  OCI_LAYER_GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
  OCI_LAYER_ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
  OCI_LAYER_ND: "application/vnd.oci.image.layer.nondistributable.v1.tar",
  OCI_LAYER_ND_GZIP: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  DOCKER_LIST: "application/vnd.docker.distribution.manifest.list.v2+json",
  DOCKER_MANIFEST: "application/vnd.docker.distribution.manifest.v2+json",
  DOCKER_MANIFEST_V1: "application/vnd.docker.distribution.manifest.v1+json",
  DOCKER_MANIFEST_V1_SIGNED: "application/vnd.docker.distribution.manifest.v1+prettyjws",
  DOCKER_CONFIG: "application/vnd.docker.container.image.v1+json",
  DOCKER_LAYER_GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  DOCKER_LAYER_FOREIGN: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
} as const;

/** The manifest media types a registry may answer with, for `Accept`. */
export const MANIFEST_ACCEPT = [
  MEDIA.OCI_INDEX,
  MEDIA.OCI_MANIFEST,
  MEDIA.DOCKER_LIST,
  MEDIA.DOCKER_MANIFEST,
].join(", ");

/** Largest manifest or index skiff reads (the distribution spec lets registries cap at 4 MiB). */
export const MANIFEST_MAX = 4 << 20;
/** Largest image config skiff reads. */
export const CONFIG_MAX = 8 << 20;

/** An invalid manifest, index or config. */
export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ManifestError";
  }
}

/** A platform (image-index.md). */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

/** A content descriptor (descriptor.md). */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
  urls?: string[];
}

/** An image index or Docker manifest list. */
export interface ImageIndex {
  kind: "index";
  mediaType: string;
  manifests: Descriptor[];
}

/** An image manifest (OCI or Docker schema 2). */
export interface ImageManifest {
  kind: "manifest";
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

/** How a layer blob is compressed. */
export type Compression = "none" | "gzip" | "zstd";

/** The run defaults of an image config (`config` object of config.md). */
export interface RunDefaults {
  Entrypoint: string[] | null;
  Cmd: string[] | null;
  Env: string[];
  WorkingDir: string;
  User: string;
}

/** An image config (config.md), the parts skiff uses. */
export interface ImageConfig {
  architecture: string;
  os: string;
  /** `rootfs.diff_ids`: the digest of each layer's uncompressed tar, bottom first. */
  diffIds: string[];
  config: RunDefaults;
}

function fail(what: string, msg: string): never {
  throw new ManifestError(`${what}: ${msg}`);
}

function parseJson(bytes: Uint8Array, what: string, max: number): Record<string, unknown> {
  if (bytes.length > max) fail(what, `${bytes.length} bytes (more than ${max})`);
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    fail(what, `not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(what, "not a JSON object");
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, key: string, what: string): string {
  const v = o[key];
  if (typeof v !== "string") fail(what, `'${key}' is not a string`);
  return v;
}

function optStr(o: Record<string, unknown>, key: string, what: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") fail(what, `'${key}' is not a string`);
  return v;
}

function strList(v: unknown, what: string, key: string): string[] | null {
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
    fail(what, `'${key}' is not a list of strings`);
  }
  return v as string[];
}

/** Parses a descriptor object; checks digest and size. */
export function parseDescriptor(v: unknown, what: string): Descriptor {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(what, "not an object");
  const o = v as Record<string, unknown>;
  const mediaType = str(o, "mediaType", what);
  const digest = str(o, "digest", what);
  try {
    parseDigest(digest);
  } catch (e) {
    fail(what, (e as Error).message);
  }
  const size = o.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    fail(what, `'size' is not a non-negative integer`);
  }
  const d: Descriptor = { mediaType, digest, size };
  if (o.platform !== undefined && o.platform !== null) {
    const p = o.platform as Record<string, unknown>;
    if (typeof p !== "object" || Array.isArray(p)) fail(what, "'platform' is not an object");
    d.platform = {
      architecture: str(p, "architecture", `${what} platform`),
      os: str(p, "os", `${what} platform`),
      ...(optStr(p, "variant", `${what} platform`) ? { variant: p.variant as string } : {}),
    };
  }
  if (o.annotations !== undefined && o.annotations !== null) {
    const a = o.annotations as Record<string, unknown>;
    if (
      typeof a !== "object" || Array.isArray(a) ||
      Object.values(a).some((x) => typeof x !== "string")
    ) {
      fail(what, "'annotations' is not a string map");
    }
    d.annotations = { ...(a as Record<string, string>) };
  }
  const urls = strList(o.urls, what, "urls");
  if (urls) d.urls = urls;
  return d;
}

/**
 * Parses a manifest or index. `mediaType` is what the transport said (HTTP
 * Content-Type, a parent descriptor), used when the document has no
 * `mediaType` field (allowed for OCI documents).
 */
export function parseManifestOrIndex(
  bytes: Uint8Array,
  what: string,
  mediaType?: string,
): ImageManifest | ImageIndex {
  const o = parseJson(bytes, what, MANIFEST_MAX);
  let mt = optStr(o, "mediaType", what) ?? mediaType ?? "";
  if (
    o.schemaVersion === 1 || mt === MEDIA.DOCKER_MANIFEST_V1 ||
    mt === MEDIA.DOCKER_MANIFEST_V1_SIGNED
  ) {
    fail(what, "Docker manifest schema 1 is not supported (deprecated; push the image again)");
  }
  if (o.schemaVersion !== 2) {
    fail(what, `schemaVersion ${JSON.stringify(o.schemaVersion)} (expected 2)`);
  }
  if (!mt) {
    // OCI documents may omit mediaType; tell them apart by their fields.
    if (Array.isArray(o.manifests)) mt = MEDIA.OCI_INDEX;
    else if (o.config !== undefined) mt = MEDIA.OCI_MANIFEST;
  }
  if (mt === MEDIA.OCI_INDEX || mt === MEDIA.DOCKER_LIST) {
    if (!Array.isArray(o.manifests)) fail(what, "'manifests' is not a list");
    return {
      kind: "index",
      mediaType: mt,
      manifests: o.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`)),
    };
  }
  if (mt === MEDIA.OCI_MANIFEST || mt === MEDIA.DOCKER_MANIFEST) {
    if (!Array.isArray(o.layers)) fail(what, "'layers' is not a list");
    return {
      kind: "manifest",
      mediaType: mt,
      config: parseDescriptor(o.config, `${what} config`),
      layers: o.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`)),
    };
  }
  fail(what, `unsupported media type '${mt || "(none)"}'`);
}

/** The compression of a layer by its media type; throws for non-layer types. */
export function layerCompression(d: Descriptor, what: string): Compression {
  switch (d.mediaType) {
    case MEDIA.OCI_LAYER:
    case MEDIA.OCI_LAYER_ND:
      return "none";
    case MEDIA.OCI_LAYER_GZIP:
    case MEDIA.OCI_LAYER_ND_GZIP:
    case MEDIA.DOCKER_LAYER_GZIP:
      return "gzip";
    case MEDIA.OCI_LAYER_ZSTD:
      return "zstd";
    case MEDIA.DOCKER_LAYER_FOREIGN:
      fail(what, "foreign (Windows) layers are not supported");
  }
  fail(what, `unsupported layer media type '${d.mediaType}'`);
}

/** The platform skiff's guests run. */
export const GUEST_PLATFORM: Platform = { architecture: "amd64", os: "linux" };

function platformText(p?: Platform): string {
  return p ? `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}` : "(no platform)";
}

/**
 * Picks the `linux/amd64` entry of an index (one without a variant first, as
 * containerd's default matcher ranks them). Entries without a platform are
 * skipped (attestations, signatures), unless the index has only one entry.
 */
export function selectPlatform(index: ImageIndex, what: string): Descriptor {
  const manifests = index.manifests.filter((m) =>
    m.mediaType === MEDIA.OCI_MANIFEST || m.mediaType === MEDIA.DOCKER_MANIFEST ||
    m.mediaType === MEDIA.OCI_INDEX || m.mediaType === MEDIA.DOCKER_LIST
  );
  const match = manifests.filter((m) =>
    m.platform?.os === GUEST_PLATFORM.os && m.platform.architecture === GUEST_PLATFORM.architecture
  );
  const pick = match.find((m) => !m.platform!.variant) ?? match[0];
  if (pick) return pick;
  if (manifests.length === 1 && !manifests[0].platform) return manifests[0];
  const have = [...new Set(index.manifests.map((m) => platformText(m.platform)))].join(", ");
  fail(what, `no linux/amd64 image in the index (it has: ${have || "nothing"})`);
}

/** Parses an image config; checks the diff IDs and the run defaults. */
export function parseImageConfig(bytes: Uint8Array, what: string): ImageConfig {
  const o = parseJson(bytes, what, CONFIG_MAX);
  const architecture = str(o, "architecture", what);
  const os = str(o, "os", what);
  const rootfs = o.rootfs as Record<string, unknown> | undefined;
  if (typeof rootfs !== "object" || rootfs === null) fail(what, "'rootfs' is missing");
  if (rootfs.type !== "layers") fail(what, `rootfs.type '${rootfs.type}' (expected 'layers')`);
  const diffIds = strList(rootfs.diff_ids, what, "rootfs.diff_ids") ?? [];
  for (const d of diffIds) {
    try {
      parseDigest(d);
    } catch (e) {
      fail(what, `rootfs.diff_ids: ${(e as Error).message}`);
    }
  }
  const c = (o.config ?? {}) as Record<string, unknown>;
  if (typeof c !== "object" || Array.isArray(c)) fail(what, "'config' is not an object");
  const env = strList(c.Env, what, "config.Env") ?? [];
  for (const e of env) {
    if (!/^[^=\0]+=/.test(e) || e.includes("\0")) {
      fail(what, `config.Env entry '${e}' is not NAME=VALUE`);
    }
  }
  const cw = `${what} config`;
  return {
    architecture,
    os,
    diffIds,
    config: {
      Entrypoint: strList(c.Entrypoint, what, "config.Entrypoint"),
      Cmd: strList(c.Cmd, what, "config.Cmd"),
      Env: env,
      WorkingDir: optStr(c, "WorkingDir", cw) ?? "",
      User: optStr(c, "User", cw) ?? "",
    },
  };
}

/** Checks that a config is for the guest platform and matches the manifest's layer count. */
export function checkConfig(config: ImageConfig, layers: number, what: string): void {
  if (config.os !== GUEST_PLATFORM.os || config.architecture !== GUEST_PLATFORM.architecture) {
    fail(
      what,
      `the image is for ${config.os}/${config.architecture}; skiff's guests are linux/amd64`,
    );
  }
  if (config.diffIds.length !== layers) {
    fail(what, `rootfs.diff_ids has ${config.diffIds.length} entries for ${layers} layers`);
  }
}

/** The canonical JSON of a manifest skiff writes for an image that came without one (docker-archive). */
export function encodeManifest(config: Descriptor, layers: Descriptor[]): Uint8Array {
  const strip = (d: Descriptor) => ({ mediaType: d.mediaType, digest: d.digest, size: d.size });
  return new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.OCI_MANIFEST,
    config: strip(config),
    layers: layers.map(strip),
  }));
}
