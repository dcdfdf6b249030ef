/**
 * What an image's config means for the command (as Docker applies an image
 * config, image-spec `config.md`); see image/run.ts for the rules. Apart from
 * run.ts (which pulls and unpacks) so that `skiff run`'s option parsing loads
 * none of the puller, the store or the FUSE layers before QEMU is spawned
 * (measured here: spawned at +36 ms instead of +38–40).
 *
 * @module
 */

import { resolve } from "node:path";
import type { Share } from "../hv/config.ts";
import type { RunDefaults } from "./manifest.ts";

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

/** Applies the image config and the user's settings; the rules are in image/run.ts's module documentation. */
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
