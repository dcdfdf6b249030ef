/**
 * Image references as `skiff run --image` and `skiff image pull` take them:
 *
 * - `oci:DIR[:TAG]` — an OCI image layout directory (image-spec `image-layout.md`);
 *   TAG is matched against the `org.opencontainers.image.ref.name` annotation of
 *   `index.json`. As in skopeo, DIR ends at the first `:`.
 * - `docker-archive:FILE` — the tar that `docker save` (or `skopeo copy … docker-archive:`) writes.
 * - `[REGISTRY/]NAME[:TAG][@DIGEST]` — an image in a registry, normalised as Docker does
 *   (distribution/reference `normalize.go`): without a registry it is `docker.io`, a
 *   one-component name on Docker Hub gets `library/`, and without a tag or digest the
 *   tag is `latest`. The first component is a registry when it contains `.` or `:`,
 *   or is `localhost`.
 *
 * @module
 */

import { resolve } from "node:path";
import { parseDigest } from "./digest.ts";

/** A reference that cannot be used, with what is wrong. */
export class ReferenceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageReferenceError";
  }
}

/** An OCI image layout directory. */
export interface OciLayoutRef {
  kind: "oci";
  /** Absolute path of the layout directory. */
  dir: string;
  /** The `org.opencontainers.image.ref.name` to pick, or null: the only image in it. */
  tag: string | null;
  /** Canonical text, `oci:DIR[:TAG]` with DIR absolute. */
  name: string;
}

/** A `docker save` tar. */
export interface DockerArchiveRef {
  kind: "docker-archive";
  /** Absolute path of the tar. */
  file: string;
  /** Canonical text, `docker-archive:FILE` with FILE absolute. */
  name: string;
}

/** An image in a registry (OCI distribution API). */
export interface RegistryRef {
  kind: "registry";
  /** Registry host as written (`docker.io`, `ghcr.io`, `localhost:5000`, `[::1]:5000`). */
  registry: string;
  /** Repository path, e.g. `library/busybox`. */
  repository: string;
  /** The tag, or null when only a digest was given. */
  tag: string | null;
  /** `sha256:…` when pinned by digest (it wins over the tag). */
  digest: string | null;
  /** Canonical text, e.g. `docker.io/library/busybox:latest`. */
  name: string;
}

/** Any image reference. */
export type ImageRef = OciLayoutRef | DockerArchiveRef | RegistryRef;

/** Docker Hub's canonical name, and the names that mean it. */
export const DOCKER_HUB = "docker.io";
const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);

/** distribution/reference: path components, separated by `/`. */
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
/** distribution/reference: `[\w][\w.-]{0,127}`. */
const TAG = /^[\w][\w.-]{0,127}$/;
/** A host name, IPv4 address or bracketed IPv6 address, with an optional port. */
const DOMAIN =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$/;
/** distribution/reference `NameTotalLengthMax`. */
const NAME_MAX = 255;

/** Parses an image reference; `cwd` resolves relative `oci:`/`docker-archive:` paths. */
export function parseReference(text: string, cwd = Deno.cwd()): ImageRef {
  if (text === "") throw new ReferenceError("empty image reference");
  if (text.startsWith("oci:")) {
    const rest = text.slice(4);
    const colon = rest.indexOf(":");
    const dir = colon < 0 ? rest : rest.slice(0, colon);
    const tag = colon < 0 ? null : rest.slice(colon + 1);
    if (dir === "") throw new ReferenceError(`${text}: expected oci:DIR[:TAG]`);
    if (tag !== null && tag === "") throw new ReferenceError(`${text}: empty tag after ':'`);
    if (tag !== null && /[\0\n]/.test(tag)) {
      throw new ReferenceError(`${text}: the tag contains a NUL or newline`);
    }
    const abs = resolve(cwd, dir);
    return { kind: "oci", dir: abs, tag, name: `oci:${abs}${tag === null ? "" : `:${tag}`}` };
  }
  if (text.startsWith("docker-archive:")) {
    const file = text.slice("docker-archive:".length);
    if (file === "") throw new ReferenceError(`${text}: expected docker-archive:FILE`);
    const abs = resolve(cwd, file);
    return { kind: "docker-archive", file: abs, name: `docker-archive:${abs}` };
  }
  // `docker://x`, `dir:x`, `containers-storage:x`…: skopeo transports skiff does not read
  // (a digit after the colon is a registry port, as in `docker:5000/x`).
  const transport = /^(docker|dir|containers-storage|docker-daemon|oci-archive):(?!\d)/.exec(text);
  if (transport) {
    throw new ReferenceError(
      `${text}: the '${transport[1]}:' transport is not supported ` +
        "(use oci:DIR[:TAG], docker-archive:FILE or [REGISTRY/]NAME[:TAG|@DIGEST])",
    );
  }
  return parseRegistryReference(text);
}

/** Parses `[REGISTRY/]NAME[:TAG][@DIGEST]` with Docker's defaults. */
export function parseRegistryReference(text: string): RegistryRef {
  let rest = text;
  let digest: string | null = null;
  const at = rest.indexOf("@");
  if (at >= 0) {
    const d = rest.slice(at + 1);
    try {
      parseDigest(d);
    } catch (e) {
      throw new ReferenceError(`${text}: ${(e as Error).message}`);
    }
    digest = d;
    rest = rest.slice(0, at);
  }
  // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
  let tag: string | null = null;
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) {
      throw new ReferenceError(
        `${text}: invalid tag '${tag}' (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')`,
      );
    }
  }
  if (rest === "") throw new ReferenceError(`${text}: no image name`);
  let registry = DOCKER_HUB;
  let path = rest;
  const first = rest.indexOf("/");
  if (first >= 0) {
    const head = rest.slice(0, first);
    if (
      head.includes(".") || head.includes(":") || head === "localhost" ||
      head !== head.toLowerCase()
    ) {
      if (!DOMAIN.test(head)) throw new ReferenceError(`${text}: invalid registry host '${head}'`);
      registry = DOCKER_HUB_ALIASES.has(head) ? DOCKER_HUB : head;
      path = rest.slice(first + 1);
    }
  }
  if (path === "") throw new ReferenceError(`${text}: no repository name after the registry`);
  for (const c of path.split("/")) {
    if (!PATH_COMPONENT.test(c)) {
      throw new ReferenceError(
        c !== c.toLowerCase()
          ? `${text}: repository names must be lowercase ('${c}')`
          : `${text}: invalid repository name component '${c}'`,
      );
    }
  }
  if (registry === DOCKER_HUB && !path.includes("/")) path = `library/${path}`;
  if (tag === null && digest === null) tag = "latest";
  const repoName = `${registry}/${path}`;
  if (repoName.length > NAME_MAX) {
    throw new ReferenceError(`${text}: the name is longer than ${NAME_MAX} characters`);
  }
  const name = `${repoName}${tag === null ? "" : `:${tag}`}${digest === null ? "" : `@${digest}`}`;
  return { kind: "registry", registry, repository: path, tag, digest, name };
}

/**
 * The base URL of a registry's API (`https://HOST/v2/`). Docker Hub's API is
 * at `registry-1.docker.io`. Plain HTTP only for a loopback registry
 * (`localhost`, `127.0.0.1`, `[::1]`, any port), as Docker treats them as insecure
 * by default; everything else is HTTPS.
 */
export function registryBaseUrl(registry: string): string {
  const host = registry === DOCKER_HUB ? "registry-1.docker.io" : registry;
  return `${isLoopbackRegistry(registry) ? "http" : "https"}://${host}/v2/`;
}

/** Whether `registry` (HOST[:PORT]) names this machine's loopback. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith("[")
    ? registry.slice(0, registry.indexOf("]") + 1)
    : registry.split(":")[0];
  return host === "localhost" || host === "127.0.0.1" || host === "[::1]";
}
