/**
 * A registry as an {@link ImageSource}, over the OCI distribution API
 * (distribution-spec `spec.md`: `GET /v2/NAME/manifests/REF`,
 * `GET /v2/NAME/blobs/DIGEST`).
 *
 * - HTTPS, or plain HTTP for a loopback registry (`localhost`, `127.0.0.1`, `[::1]`).
 * - Anonymous token auth as Docker Hub and GHCR do it (Docker's token
 *   protocol): a 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
 *   is answered by fetching a token from the realm and retrying with
 *   `Authorization: Bearer`. Registries that want credentials (`Basic`) are
 *   refused with a clear error: skiff pulls anonymously.
 * - Manifests are asked for in all four media types (OCI and Docker schema 2,
 *   manifest and index/list); the bytes must hash to the digest asked for, or
 *   to `Docker-Content-Digest` when the registry sends it.
 * - Redirects (blob storage, CDNs) are followed by hand: at most 10, never
 *   from HTTPS down to HTTP, and the `Authorization` header is dropped when
 *   the origin changes (presigned storage URLs carry their own credentials).
 *
 * @module
 */

import { isDigest, parseDigest, sha256Digest, verifyBytes } from "./digest.ts";
import {
  type Descriptor,
  MANIFEST_ACCEPT,
  MANIFEST_MAX,
  ManifestError,
  parseManifestOrIndex,
  selectPlatform,
} from "./manifest.ts";
import { isLoopbackRegistry, registryBaseUrl, type RegistryRef } from "./reference.ts";
import { type ImageSource, readAll, type ResolvedManifest } from "./source.ts";

/** A registry request that failed. */
export class RegistryError extends Error {
  /** HTTP status, when there was a response. */
  readonly status: number | null;
  constructor(message: string, status: number | null = null) {
    super(message);
    this.name = "RegistryError";
    this.status = status;
  }
}

/** Options of a {@link RegistrySource}. */
export interface RegistryOptions {
  /** The fetch to use (tests). */
  fetch?: typeof fetch;
  /** Aborts every request. */
  signal?: AbortSignal;
}

/** A parsed `WWW-Authenticate` challenge (RFC 7235 §4.1). */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a `WWW-Authenticate` value (its first challenge): `Bearer realm="…",service="…"`. */
export function parseChallenge(header: string): Challenge | null {
  const m = /^\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s+([^]*))?$/.exec(header);
  if (!m) return null;
  const params: Record<string, string> = {};
  const s = m[2] ?? "";
  let i = 0;
  const spaces = () => {
    while (i < s.length && (s[i] === " " || s[i] === "\t" || s[i] === ",")) i++;
  };
  for (;;) {
    spaces();
    const key = /^[A-Za-z0-9_.-]+/.exec(s.slice(i));
    if (!key) break;
    i += key[0].length;
    while (s[i] === " ") i++;
    if (s[i] !== "=") break; // a second challenge starts here
    i++;
    while (s[i] === " ") i++;
    let value = "";
    if (s[i] === '"') {
      for (i++; i < s.length && s[i] !== '"'; i++) value += s[i] === "\\" ? s[++i] ?? "" : s[i];
      i++;
    } else {
      while (i < s.length && s[i] !== "," && s[i] !== " ") value += s[i++];
    }
    params[key[0].toLowerCase()] = value;
  }
  return { scheme: m[1].toLowerCase(), params };
}

const MAX_REDIRECTS = 10;
const ERROR_BODY_MAX = 8192;

/** An image in a registry; see the module documentation. */
export class RegistrySource implements ImageSource {
  readonly name: string;
  #ref: RegistryRef;
  #base: string;
  #fetch: typeof fetch;
  #signal?: AbortSignal;
  #token: string | null = null;

  constructor(ref: RegistryRef, o: RegistryOptions = {}) {
    this.name = ref.name;
    this.#ref = ref;
    this.#base = registryBaseUrl(ref.registry);
    this.#fetch = o.fetch ?? fetch;
    this.#signal = o.signal;
  }

  /** GET `path` under the repository, with auth and redirects; the response is 2xx. */
  async #get(path: string, accept?: string): Promise<Response> {
    const url = `${this.#base}${this.#ref.repository}/${path}`;
    let authTried = false;
    for (;;) {
      const res = await this.#follow(url, accept);
      if (res.status === 401 && !authTried) {
        authTried = true;
        const challenge = parseChallenge(res.headers.get("www-authenticate") ?? "");
        await res.body?.cancel();
        await this.#authenticate(challenge, url);
        continue;
      }
      if (res.ok) return res;
      throw await this.#httpError(res, url);
    }
  }

  /** One request with redirects followed (see the module doc). */
  async #follow(start: string, accept?: string): Promise<Response> {
    let url = new URL(start);
    const origin = url.origin;
    for (let hops = 0;; hops++) {
      const headers: Record<string, string> = { "user-agent": "skiff" };
      if (accept) headers.accept = accept;
      if (this.#token && url.origin === origin) headers.authorization = `Bearer ${this.#token}`;
      let res: Response;
      try {
        res = await this.#fetch(url, { headers, redirect: "manual", signal: this.#signal });
      } catch (e) {
        if (this.#signal?.aborted) throw e;
        throw new RegistryError(`cannot reach ${url.host}: ${(e as Error).message}`);
      }
      if (res.status < 300 || res.status >= 400 || res.status === 304) return res;
      const location = res.headers.get("location");
      await res.body?.cancel();
      if (!location) {
        throw new RegistryError(
          `GET ${url}: ${res.status} redirect without a Location`,
          res.status,
        );
      }
      if (hops >= MAX_REDIRECTS) {
        throw new RegistryError(`GET ${start}: more than ${MAX_REDIRECTS} redirects`);
      }
      const next = new URL(location, url);
      if (
        next.protocol !== "https:" && !(next.protocol === "http:" && (url.protocol === "http:"))
      ) {
        throw new RegistryError(
          `GET ${url}: refusing a redirect to ${next.protocol}//${next.host}`,
        );
      }
      url = next;
    }
  }

  /** Fetches an anonymous token for the challenge (Docker token protocol). */
  async #authenticate(c: Challenge | null, url: string): Promise<void> {
    if (!c || c.scheme !== "bearer" || !c.params.realm) {
      const how = c ? `${c.scheme} authentication` : "authentication without a usable challenge";
      throw new RegistryError(
        `${this.#ref.registry} asks for ${how} at ${url}; skiff pulls anonymously (public images only)`,
        401,
      );
    }
    let realm: URL;
    try {
      realm = new URL(c.params.realm);
    } catch {
      throw new RegistryError(`${this.#ref.registry}: bad token realm '${c.params.realm}'`);
    }
    if (
      realm.protocol !== "https:" && !(realm.protocol === "http:" && isLoopbackRegistry(realm.host))
    ) {
      throw new RegistryError(
        `${this.#ref.registry}: refusing a token realm over ${realm.protocol}//${realm.host}`,
      );
    }
    if (c.params.service) realm.searchParams.set("service", c.params.service);
    realm.searchParams.set("scope", c.params.scope ?? `repository:${this.#ref.repository}:pull`);
    let res: Response;
    try {
      res = await this.#fetch(realm, { headers: { "user-agent": "skiff" }, signal: this.#signal });
    } catch (e) {
      if (this.#signal?.aborted) throw e;
      throw new RegistryError(
        `cannot reach the token service ${realm.host}: ${(e as Error).message}`,
      );
    }
    if (!res.ok) throw await this.#httpError(res, realm.toString(), "token request");
    let body: { token?: unknown; access_token?: unknown };
    try {
      body = JSON.parse(new TextDecoder().decode(await readAll(res.body!, 1 << 20, "token")));
    } catch (e) {
      throw new RegistryError(`token from ${realm.host}: ${(e as Error).message}`);
    }
    const token = body.token ?? body.access_token;
    if (typeof token !== "string" || token === "" || /[\r\n]/.test(token)) {
      throw new RegistryError(`token from ${realm.host}: no token in the answer`);
    }
    this.#token = token;
  }

  async #httpError(res: Response, url: string, what = "GET"): Promise<RegistryError> {
    let detail = "";
    try {
      const text = new TextDecoder().decode(await readAll(res.body!, ERROR_BODY_MAX, "error"));
      const j = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
      detail = (j.errors ?? []).map((e) => [e.code, e.message].filter(Boolean).join(": ")).join(
        "; ",
      );
    } catch {
      // not a distribution-spec error body
    }
    const hint = res.status === 404 || (res.status === 401 && /UNAUTHORIZED|DENIED/.test(detail))
      ? ` (does ${this.#ref.name} exist, and is it public?)`
      : "";
    return new RegistryError(
      `${what} ${url}: ${res.status} ${res.statusText}${detail ? ` — ${detail}` : ""}${hint}`,
      res.status,
    );
  }

  /** Fetches and verifies one manifest or index by tag or digest. */
  async #manifestAt(ref: string): Promise<{ digest: string; bytes: Uint8Array; type: string }> {
    const res = await this.#get(`manifests/${ref}`, MANIFEST_ACCEPT);
    const what = `${this.#ref.registry}/${this.#ref.repository} manifest ${ref}`;
    const bytes = await readAll(res.body!, MANIFEST_MAX, what);
    let digest: string;
    if (isDigest(ref)) {
      verifyBytes(bytes, ref, null, what);
      digest = ref;
    } else {
      digest = sha256Digest(bytes);
      const said = res.headers.get("docker-content-digest");
      if (said && said.startsWith("sha256:") && said !== digest) {
        throw new ManifestError(
          `${what}: the registry says ${said} but the bytes hash to ${digest}`,
        );
      }
    }
    return { digest, bytes, type: (res.headers.get("content-type") ?? "").split(";")[0].trim() };
  }

  async manifest(): Promise<ResolvedManifest> {
    let ref = this.#ref.digest ?? this.#ref.tag!;
    for (let depth = 0; depth < 4; depth++) {
      const got = await this.#manifestAt(ref);
      const what = `${this.#ref.name} (${got.digest})`;
      const m = parseManifestOrIndex(got.bytes, what, got.type);
      if (m.kind === "manifest") return { digest: got.digest, bytes: got.bytes, manifest: m };
      const d = selectPlatform(m, what);
      parseDigest(d.digest);
      ref = d.digest;
    }
    throw new ManifestError(`${this.#ref.name}: image indexes nested too deep`);
  }

  async blob(d: Descriptor): Promise<ReadableStream<Uint8Array>> {
    parseDigest(d.digest);
    const res = await this.#get(`blobs/${d.digest}`);
    if (!res.body) throw new RegistryError(`GET blob ${d.digest}: empty response`);
    return res.body;
  }

  close(): void {}
}
