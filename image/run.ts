/**
 * An image ready to be a guest root, and what its config means for the
 * command (as Docker applies an image config, image-spec `config.md`):
 *
 * - argv = Entrypoint + (the user's CMD, or the image's Cmd when none is given);
 * - env = the image's Env, PATH and HOME defaulted, then `--env` on top;
 * - workdir = `--workdir`, else WorkingDir, else `/`;
 * - user = `--user`, else User: `NAME|UID[:GROUP|GID]`, resolved against the
 *   image's own /etc/passwd and /etc/group (read through the merged layers),
 *   with the user's supplementary groups from /etc/group.
 *
 * @module
 */

import { resolve } from "node:path";
import { LayeredFs } from "../devices/fuse/layered.ts";
import { parseImageConfig, type RunDefaults } from "./manifest.ts";
import { parseReference } from "./reference.ts";
import { type PulledImage, pullImage } from "./pull.ts";
import { ImageStore } from "./store.ts";
import type { PullProgress } from "./progress.ts";
import type { PreparedImage } from "./command.ts";

export {
  IMAGE_DEFAULT_PATH,
  type ImageCommand,
  imageCommand,
  imageRootShare,
  ImageRunError,
  type ImageRunSpec,
  type PreparedImage,
  resolveUser,
} from "./command.ts";

/** Options of {@link prepareImage}. */
export interface PrepareOptions {
  store?: ImageStore;
  /** "missing" (default): a registry image already in the store is not pulled again; "always". */
  pull?: "missing" | "always";
  progress?: PullProgress | null;
  signal?: AbortSignal;
  cwd?: string;
  /** fetch for registries (tests). */
  fetch?: typeof fetch;
}

/**
 * Makes `ref` ready: pulls it when needed (an `oci:` or `docker-archive:`
 * image is always re-read, which is quick when its layers are in the store),
 * and reads its config and user database.
 */
export async function prepareImage(text: string, o: PrepareOptions = {}): Promise<PreparedImage> {
  const store = o.store ?? new ImageStore();
  const ref = parseReference(text, o.cwd);
  let rec = ref.kind === "registry" && o.pull !== "always" ? store.getRecord(ref.name) : null;
  let defaults: RunDefaults | null = null;
  if (rec && !rec.layers.every((l) => store.hasLayer(l.diffId))) rec = null;
  if (rec) {
    const bytes = store.getBlob(rec.configDigest);
    if (bytes) defaults = parseImageConfig(bytes, `${rec.name}: config`).config;
    else rec = null;
  }
  if (!rec || !defaults) {
    const pulled: PulledImage = await pullImage(ref, {
      store,
      progress: o.progress,
      signal: o.signal,
      fetch: o.fetch,
    });
    rec = pulled.record;
    defaults = pulled.config.config;
  }
  const layers = rec.layers.map((l) => store.layerDir(l.diffId));
  const fs = new LayeredFs({ layers });
  try {
    return {
      name: rec.name,
      manifestDigest: rec.manifestDigest,
      layers,
      storeRoot: store.root,
      defaults,
      passwd: readText(fs, "etc/passwd"),
      group: readText(fs, "etc/group"),
    };
  } finally {
    fs.close();
  }
}

const ctx = { uid: 0, gid: 0, pid: 0 };
const enc = new TextEncoder();

/** A small text file of the merged image (symlinks followed inside the image), or "". */
export function readText(fs: LayeredFs, path: string, max = 1 << 20): string {
  let parts = path.split("/").filter(Boolean);
  let id = 1;
  for (let hops = 0, i = 0; i < parts.length;) {
    let e;
    try {
      e = fs.lookup(ctx, id, enc.encode(parts[i]));
    } catch {
      return "";
    }
    if ((e.attr.mode & 0o170000) === 0o120000) {
      if (++hops > 40) return "";
      const target = new TextDecoder().decode(fs.readlink(ctx, e.nodeid));
      // Resolve inside the image: an absolute target starts again at its root.
      const rest = parts.slice(i + 1);
      const base = target.startsWith("/") ? [] : parts.slice(0, i);
      parts = resolve("/", ...base, target, ...rest).split("/").filter(Boolean);
      id = 1;
      i = 0;
      continue;
    }
    id = e.nodeid;
    i++;
  }
  try {
    const { fh } = fs.open(ctx, id, 0);
    try {
      const buf = new Uint8Array(max);
      const n = fs.read(ctx, id, fh, 0n, [buf]);
      return new TextDecoder().decode(buf.subarray(0, n));
    } finally {
      fs.release(ctx, id, fh);
    }
  } catch {
    return "";
  }
}
