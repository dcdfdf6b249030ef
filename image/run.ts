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
import type { Share } from "../hv/config.ts";
import { parseImageConfig, type RunDefaults } from "./manifest.ts";
import { parseReference } from "./reference.ts";
import { type PulledImage, pullImage } from "./pull.ts";
import { ImageStore } from "./store.ts";
import type { PullProgress } from "./progress.ts";

/** A pulled image with what a run needs. */
export interface PreparedImage {
  /** The canonical reference. */
  name: string;
  manifestDigest: string;
  /** Layer directories in the store, bottom first. */
  layers: string[];
  /** The store's directory (an existing host path for the root share). */
  storeRoot: string;
  /** The image's run defaults. */
  defaults: RunDefaults;
  /** The image's /etc/passwd and /etc/group (empty when absent). */
  passwd: string;
  group: string;
}

/** A run setting that the image cannot satisfy (bad user, no command). */
export class ImageRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageRunError";
  }
}

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

/** The command settings of a run (CLI or library). */
export interface ImageRunSpec {
  /** The user's CMD (may be empty: the image's Cmd runs). */
  argv: string[];
  /** `--workdir`. */
  workdir?: string;
  /** `--user NAME|UID[:GROUP|GID]`. */
  user?: string;
}

/** What the guest runs. */
export interface ImageCommand {
  argv: string[];
  /** The image's environment with PATH and HOME defaulted (`--env` goes on top). */
  env: Record<string, string>;
  workdir: string;
  /** Null for root without supplementary groups (the init's own credentials). */
  user: { uid: number; gid: number; groups: number[] } | null;
}

/** Default PATH when the image sets none (Docker's). */
export const IMAGE_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Applies the image config and the user's settings; see the module documentation. */
export function imageCommand(img: PreparedImage, spec: ImageRunSpec): ImageCommand {
  const d = img.defaults;
  const argv = [...(d.Entrypoint ?? []), ...(spec.argv.length ? spec.argv : d.Cmd ?? [])];
  if (argv.length === 0) {
    throw new ImageRunError(
      `${img.name} has no Entrypoint or Cmd: give a command (skiff run --image REF -- CMD ARGS…)`,
    );
  }
  const env: Record<string, string> = {};
  for (const e of d.Env) {
    const eq = e.indexOf("=");
    env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  env.PATH ??= IMAGE_DEFAULT_PATH;
  const who = resolveUser(spec.user ?? d.User, img.passwd, img.group, img.name);
  env.HOME ??= who.home;
  const wd = spec.workdir ?? (d.WorkingDir || "/");
  const workdir = resolve("/", wd);
  const user =
    who.uid === 0 && who.gid === 0 && who.groups.every((g) => g === 0) && !spec.user && !d.User
      ? null
      : { uid: who.uid, gid: who.gid, groups: who.groups };
  return { argv, env, workdir, user };
}

interface Resolved {
  uid: number;
  gid: number;
  groups: number[];
  home: string;
}

/**
 * Resolves `NAME|UID[:GROUP|GID]` against passwd/group texts (runc's
 * `GetExecUser` rules): a name must exist; a numeric uid need not (gid 0,
 * HOME /); supplementary groups are the groups listing the user's name.
 */
export function resolveUser(
  spec: string,
  passwd: string,
  group: string,
  image = "the image",
): Resolved {
  const users = passwd.split("\n").map((l) => l.split(":")).filter((f) => f.length >= 7);
  const groups = group.split("\n").map((l) => l.split(":")).filter((f) => f.length >= 4);
  const [u, g] = spec === "" ? ["0", undefined] : spec.split(/:(.*)/s);
  if (u === "") throw new ImageRunError(`--user ${spec}: empty user`);
  const isNum = (s: string) => /^\d+$/.test(s) && Number(s) <= 0xfffffffe;
  let entry = isNum(u) ? users.find((f) => f[2] === u) : users.find((f) => f[0] === u);
  if (!entry && !isNum(u)) {
    throw new ImageRunError(`user '${u}' is not in ${image}'s /etc/passwd`);
  }
  if (entry && (!isNum(entry[2]) || !isNum(entry[3]))) entry = undefined;
  const uid = entry ? Number(entry[2]) : Number(u);
  let gid = entry ? Number(entry[3]) : 0;
  const home = entry?.[5] || "/";
  if (g !== undefined) {
    if (g === "") throw new ImageRunError(`--user ${spec}: empty group`);
    if (isNum(g)) gid = Number(g);
    else {
      const ge = groups.find((f) => f[0] === g);
      if (!ge || !isNum(ge[2])) {
        throw new ImageRunError(`group '${g}' is not in ${image}'s /etc/group`);
      }
      gid = Number(ge[2]);
    }
  }
  const supplementary = entry
    ? groups.filter((f) => isNum(f[2]) && f[3].split(",").includes(entry![0])).map((f) =>
      Number(f[2])
    )
    : [];
  return { uid, gid, groups: [...new Set([gid, ...supplementary])], home };
}

/** The root share of an image: its layers merged read-only (under the guest's tmpfs overlay). */
export function imageRootShare(img: PreparedImage): Share {
  return {
    tag: "root",
    hostPath: img.storeRoot,
    guestPath: "/",
    readOnly: true,
    image: { name: img.name, manifestDigest: img.manifestDigest, layers: img.layers },
  };
}
