/**
 * From `skiff run` options to a {@link VmConfig} and a {@link Workload}:
 * the defaults of DESIGN.md (host `/` read-only with a tmpfs overlay, the
 * current directory shared read-only at the same path and used as the working
 * directory), `--volume`, `--env` and `--workdir` parsing, and the checks that
 * must fail before boot (a missing host path, a bad size, a bad host name, two
 * volumes at one guest path).
 *
 * @module
 */

import { isAbsolute } from "node:path";
import { ConfigError } from "../errors.ts";
import {
  checkHostname,
  defaultRootShare,
  GUEST_PATH,
  guestMountPoint,
  MAX_CPUS,
  MAX_MEMORY_MIB,
  MAX_TIMER_MS,
  MIN_MEMORY_MIB,
  type NetOptions,
  type Share,
  type VmConfig,
  volumeShare,
  type Workload,
} from "../config.ts";
import { parsePublish, publishOption } from "../../devices/net/config.ts";
import { checkWorkdir } from "./workdir_check.ts";
import {
  imageCommand,
  imageRootShare,
  ImageRunError,
  type PreparedImage,
  resolveUser,
} from "../../image/command.ts";

/** `skiff run` options as the CLI parsed them (strings are unparsed flag values). */
export interface RunOptions {
  argv: string[];
  cpus?: string;
  memory?: string;
  env?: string[];
  workdir?: string;
  volume?: string[];
  kernel?: string;
  modules?: string;
  cmdlineExtra?: string;
  hostname?: string;
  verbose?: boolean;
  /** `--net` value: "on" (or true) for the user-mode network, "host-loopback" to reach host 127.0.0.1. */
  net?: string | boolean;
  /** `--publish [HOSTIP:]HOSTPORT:GUESTPORT[/udp]` rules (need `--net`). */
  publish?: string[];
  /** Host environment (for `--env NAME` without a value and TERM); default Deno.env. */
  hostEnv?: Record<string, string>;
  /** Host working directory; default Deno.cwd(). */
  cwd?: string;
  /** `--image`: the guest root is this image, and its config shapes the command. */
  image?: PreparedImage;
  /** `--user NAME|UID[:GROUP|GID]` (against the image's, or the host's, /etc/passwd). */
  user?: string;
}

/**
 * The one parser of numeric flags: `value` (the flag's text) as a number in
 * `[min, max]`, whole unless `fraction`; `undefined` when the flag is absent.
 * A bad value is a {@link ConfigError} naming the flag and the range
 * (`expected` replaces the generic description of the range).
 */
export function flagNumber(
  flag: string,
  value: string | undefined,
  o: { min: number; max: number; fraction?: boolean; expected?: string },
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  const ok = o.fraction
    ? /^\d+(\.\d+)?$/.test(value) && Number.isFinite(n)
    : /^\d+$/.test(value) && Number.isSafeInteger(n);
  if (!ok || n < o.min || n > o.max) {
    const kind = o.fraction ? "number" : "whole number";
    const range = o.expected ??
      (o.max === Infinity ? `a positive ${kind}` : `a ${kind} from ${o.min} to ${o.max}`);
    throw new ConfigError(`${flag} ${value}: expected ${range}`);
  }
  return n;
}

/**
 * Least guest RAM `--memory` takes with the default kernel, in MiB: the
 * Debian cloud kernel hangs at 64 MiB and panics ("System is deadlocked on
 * memory") up to about 72, so 128 leaves it room. With `--kernel` the
 * engines' own floor ({@link MIN_MEMORY_MIB}) applies: a kernel of one's
 * own may need less.
 */
export const DEFAULT_KERNEL_MIN_MEMORY_MIB = 128;
/** Longest `--timeout`, in seconds: the longest timer ({@link MAX_TIMER_MS}). */
export const MAX_TIMEOUT_S = Math.floor(MAX_TIMER_MS / 1000);

/** Parses `--cpus N` (1 to {@link MAX_CPUS}); undefined when absent. */
export function parseCpus(value: string | undefined): number | undefined {
  return flagNumber("--cpus", value, { min: 1, max: MAX_CPUS });
}

/**
 * Parses `--memory MiB`: from {@link DEFAULT_KERNEL_MIN_MEMORY_MIB} (from
 * {@link MIN_MEMORY_MIB} when `ownKernel`, i.e. with `--kernel`) to
 * {@link MAX_MEMORY_MIB}; undefined when absent.
 */
export function parseMemory(value: string | undefined, ownKernel = false): number | undefined {
  const min = ownKernel ? MIN_MEMORY_MIB : DEFAULT_KERNEL_MIN_MEMORY_MIB;
  return flagNumber("--memory", value, {
    min,
    max: MAX_MEMORY_MIB,
    expected: `a whole number of MiB from ${min} to ${MAX_MEMORY_MIB}${
      ownKernel ? " (with --kernel)" : ""
    }`,
  });
}

/** The image's command settings, or `--user` against the host's user database. */
function commandOf(o: RunOptions): ReturnType<typeof imageCommand> | null {
  try {
    if (o.image) return imageCommand(o.image, { argv: o.argv, workdir: o.workdir, user: o.user });
    if (o.user === undefined) return null;
    const read = (p: string) => {
      try {
        return Deno.readTextFileSync(p);
      } catch {
        return "";
      }
    };
    const u = resolveUser(o.user, read("/etc/passwd"), read("/etc/group"), "the host");
    return {
      argv: o.argv,
      env: {},
      workdir: "",
      user: { uid: u.uid, gid: u.gid, groups: u.groups },
    };
  } catch (e) {
    if (e instanceof ImageRunError) throw new ConfigError(e.message);
    throw e;
  }
}

/** Parses `--volume HOST:GUEST[:ro|:rw]`; the host path must be an existing directory. */
export function parseVolume(spec: string, index: number, cwd: string): Share {
  const parts = spec.split(":");
  let mode = "rw";
  if (parts.length === 3 && (parts[2] === "ro" || parts[2] === "rw")) mode = parts.pop()!;
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new ConfigError(`--volume ${spec}: expected HOST:GUEST or HOST:GUEST:ro`);
  }
  return volumeShare(
    { hostPath: parts[0], guestPath: parts[1], readOnly: mode === "ro" },
    index,
    cwd,
    `--volume ${spec}`,
  );
}

/**
 * Parses every `--volume` and refuses two at the same guest path (`/x`,
 * `/x/` and `/x/.` are one mount point): the later mount would hide the
 * earlier one silently. The error names both volumes.
 */
export function parseVolumes(specs: string[], cwd: string): Share[] {
  const shares = specs.map((v, i) => parseVolume(v, i, cwd));
  const seen = new Map<string, number>();
  shares.forEach((s, i) => {
    const at = guestMountPoint(s.guestPath);
    const first = seen.get(at);
    if (first !== undefined) {
      throw new ConfigError(
        `--volume ${specs[first]} and --volume ${specs[i]}: both mount at ${at}`,
      );
    }
    seen.set(at, i);
  });
  return shares;
}

/** Parses `--env K=V` (or `--env K`, taking the host's value) into `env`. */
export function parseEnv(
  specs: string[],
  hostEnv: Record<string, string>,
  env: Record<string, string>,
) {
  for (const spec of specs) {
    const eq = spec.indexOf("=");
    const name = eq < 0 ? spec : spec.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new ConfigError(`--env ${spec}: '${name}' is not a valid variable name`);
    }
    if (eq >= 0) env[name] = spec.slice(eq + 1);
    else if (name in hostEnv) env[name] = hostEnv[name];
    else delete env[name];
  }
}

/** Builds the VM configuration and workload for `skiff run`; throws {@link ConfigError}. */
export function runConfig(o: RunOptions): { config: VmConfig; workload: Workload } {
  if (o.argv.length === 0 && !o.image) {
    throw new ConfigError("no command given (skiff run -- CMD ARGS…)");
  }
  const cwd = o.cwd ?? Deno.cwd();
  const hostEnv = o.hostEnv ?? Deno.env.toObject();
  // Before anything boots: the guest would refuse it only once the engine runs.
  if (o.hostname !== undefined) checkHostname(o.hostname);
  const volumes = parseVolumes(o.volume ?? [], cwd);
  // The current directory, read-only at the same path, unless a volume covers it (host root only).
  if (!o.image && cwd !== "/" && !volumes.some((v) => guestMountPoint(v.guestPath) === cwd)) {
    volumes.unshift({ tag: "cwd", hostPath: cwd, guestPath: cwd, readOnly: true });
  }
  if (o.workdir !== undefined && !isAbsolute(o.workdir)) {
    throw new ConfigError(`--workdir ${o.workdir}: must be absolute`);
  }
  const cmd = commandOf(o);
  const workdir = o.image ? cmd!.workdir : o.workdir ?? cwd;
  if (!o.image && o.workdir !== undefined) checkWorkdir(workdir, defaultRootShare(), volumes);
  const env: Record<string, string> = o.image ? { ...cmd!.env } : { PATH: GUEST_PATH, HOME: "/" };
  if (hostEnv.TERM) env.TERM = hostEnv.TERM;
  parseEnv(o.env ?? [], hostEnv, env);
  const config: VmConfig = {
    kernel: o.kernel,
    modules: o.modules,
    cpus: parseCpus(o.cpus) ?? 1,
    memoryMiB: parseMemory(o.memory, o.kernel !== undefined) ?? 512,
    cmdlineExtra: o.cmdlineExtra ?? "",
    root: o.image ? imageRootShare(o.image) : defaultRootShare(),
    volumes,
    net: parseNet(o.net, o.publish ?? []),
    hostname: o.hostname ?? "skiff",
    verbose: o.verbose ?? false,
  };
  const argv = cmd ? cmd.argv : o.argv;
  return { config, workload: { argv, env, workdir, ...(cmd?.user ? { user: cmd.user } : {}) } };
}

/** Parses `--net[=host-loopback]` and `--publish`; null when the network is off. */
export function parseNet(net: string | boolean | undefined, publish: string[]): NetOptions | null {
  if (net === undefined || net === false) {
    if (publish.length > 0) throw new ConfigError("--publish needs --net");
    return null;
  }
  if (net !== true && net !== "on" && net !== "host-loopback") {
    throw new ConfigError(`--net=${net}: expected --net, --net=on or --net=host-loopback`);
  }
  return {
    hostLoopback: net === "host-loopback",
    publish: publish.map((spec) => {
      try {
        return publishOption(parsePublish(spec));
      } catch (e) {
        throw new ConfigError((e as Error).message);
      }
    }),
  };
}

/**
 * Parses `--timeout S` (seconds, may be fractional, at most
 * {@link MAX_TIMEOUT_S}); undefined when absent.
 */
export function parseTimeout(value: string | undefined): number | undefined {
  return flagNumber("--timeout", value, {
    min: 0.001,
    max: MAX_TIMEOUT_S,
    fraction: true,
    expected: `a positive number of seconds up to ${MAX_TIMEOUT_S} (about 24.8 days)`,
  });
}
