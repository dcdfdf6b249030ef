/**
 * `skiff kernel fetch`: resolves Debian's `linux-image-cloud-amd64` to its
 * current versioned package, downloads it with `apt-get download`, unpacks it
 * with `dpkg-deb`, extracts the ELF `vmlinux` from the LZ4 bzImage payload,
 * writes `modules.dep`, and records the result in the kernel cache.
 *
 * @module
 */

import { join } from "node:path";
import { SkiffError } from "../errors.ts";
import { makePidDir, sweepPidDirs } from "../pid_dir.ts";
import { isElf } from "../boot/elf.ts";
import { bzImagePayload, parseSetupHeader } from "../boot/setup_header.ts";
import {
  exists,
  kernelCacheDir,
  type KernelInfo,
  type KernelJson,
  readCachedKernel,
  setDefaultKernel,
} from "./cache.ts";
import { decodeLz4Legacy, isLz4Legacy } from "./lz4.ts";
import { buildModulesDep } from "./modules.ts";

/** The Debian metapackage that always depends on the current cloud kernel. */
export const DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64";

/** Fetching the kernel failed; the message says which step and what to do. */
export class KernelFetchError extends SkiffError {}

/** apt's package lists do not know a package (a fresh machine needs `apt-get update`). */
export class AptListsError extends KernelFetchError {}

/** A Debian package as `apt-cache show` describes it. */
export interface AptPackage {
  package: string;
  version: string;
  /** The `Depends:` field, raw. */
  depends: string;
  /** Download size in bytes (0 if unknown). */
  size: number;
}

/** Where progress lines go (stderr by default). */
export interface FetchProgress {
  /** A finished step or a notice: one line. */
  line(text: string): void;
  /** An in-place status update (rewritten on a terminal, sampled otherwise). */
  status(text: string): void;
}

/** Options of {@link stderrProgress} (injectable for tests). */
export interface StderrProgressOptions {
  /** Whether stderr is a terminal (default: asked). */
  tty?: boolean;
  /** Writes text (default: stderr). */
  write?: (text: string) => void;
  /** Milliseconds clock (default `performance.now`). */
  now?: () => number;
  /** Off a terminal, the shortest interval between two status lines (default 3000 ms). */
  statusIntervalMs?: number;
}

/**
 * Progress on stderr: in-place updates on a terminal; elsewhere (a log, CI)
 * plain lines, with status updates sampled to one every few seconds so a
 * long download shows that it advances without flooding the log.
 */
export function stderrProgress(opts: StderrProgressOptions = {}): FetchProgress {
  const enc = new TextEncoder();
  const tty = opts.tty ?? Deno.stderr.isTerminal();
  const write = opts.write ?? ((s: string) => void Deno.stderr.writeSync(enc.encode(s)));
  const now = opts.now ?? (() => performance.now());
  const every = opts.statusIntervalMs ?? 3000;
  let pending = false;
  let lastStatus = -Infinity;
  return {
    line(text) {
      write((pending ? "\r\x1b[K" : "") + text + "\n");
      pending = false;
    },
    status(text) {
      if (tty) {
        write("\r\x1b[K" + text);
        pending = true;
        return;
      }
      const t = now();
      if (t - lastStatus < every) return;
      lastStatus = t;
      write(text + "\n");
    },
  };
}

/** `  downloading: 42% (11.2 of 26.7 MiB)`, or without a total when the size is unknown. */
export function downloadStatus(got: number, total: number): string {
  if (total <= 0) return `  downloading: ${mib(got)}`;
  const pct = Math.min(100, Math.floor((got / total) * 100));
  return `  downloading: ${pct}% (${(got / (1 << 20)).toFixed(1)} of ${mib(total)})`;
}

/** Parses `apt-cache show --no-all-versions` output (first stanza). */
export function parseAptShow(text: string): AptPackage | undefined {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "" && fields.size > 0) break;
    const m = /^([A-Za-z0-9-]+):\s?(.*)$/.exec(line);
    if (m) fields.set(m[1].toLowerCase(), m[2]);
  }
  const pkg = fields.get("package");
  const version = fields.get("version");
  if (!pkg || !version) return undefined;
  return {
    package: pkg,
    version,
    depends: fields.get("depends") ?? "",
    size: Number(fields.get("size") ?? 0) || 0,
  };
}

/** The versioned `linux-image-<release>` package a metapackage's `Depends:` names. */
export function kernelDependency(depends: string): string | undefined {
  for (const alt of depends.split(/[,|]/)) {
    const name = alt.trim().split(/[\s(]/)[0];
    if (/^linux-image-\d[\w.+-]*$/.test(name)) return name;
  }
  return undefined;
}

async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd: opts.cwd, stdin: "null" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new KernelFetchError(
        `${cmd} is not installed: skiff kernel fetch needs Debian's apt and dpkg (or pass --kernel PATH)`,
      );
    }
    throw e;
  }
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const UPDATE_HINT = "the apt package lists do not know it: run `apt-get update` as root " +
  "(\`skiff setup\` does) and retry";

/** `apt-cache show --no-all-versions PKG`, parsed; throws {@link KernelFetchError} with the apt-get update hint. */
export async function aptShow(pkg: string): Promise<AptPackage> {
  const r = await run("apt-cache", ["show", "--no-all-versions", pkg]);
  const parsed = r.code === 0 ? parseAptShow(r.stdout) : undefined;
  if (!parsed) {
    const why = r.stderr.trim().split("\n").pop() ?? "";
    throw new AptListsError(
      `apt-cache cannot find ${pkg}${why ? ` (${why})` : ""}; ${UPDATE_HINT}`,
    );
  }
  return parsed;
}

/** Resolves the metapackage to the versioned kernel package apt would install now. */
export async function resolveKernelPackage(meta = DEFAULT_KERNEL_PACKAGE): Promise<AptPackage> {
  const m = await aptShow(meta);
  const dep = kernelDependency(m.depends);
  if (!dep) {
    throw new KernelFetchError(
      `${meta} ${m.version} depends on no linux-image-<release> package (Depends: ${m.depends})`,
    );
  }
  return await aptShow(dep);
}

/** Name prefix of a fetch's staging directory in the kernel cache: `.fetch-<pid>-…`. */
const STAGING_PREFIX = ".fetch-";

function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** Downloads `pkg` with `apt-get download` into `dir`, reporting its size as it grows; returns the .deb path. */
async function download(
  pkg: AptPackage,
  dir: string,
  progress: FetchProgress,
  signal?: AbortSignal,
): Promise<string> {
  progress.line(
    `skiff: downloading ${pkg.package} ${pkg.version}${pkg.size ? ` (${mib(pkg.size)})` : ""}`,
  );
  // As root, apt drops to the _apt user for downloads, which cannot write a private temp dir.
  const sandbox = Deno.uid() === 0 ? ["-o", "APT::Sandbox::User=root"] : [];
  const child = new Deno.Command("apt-get", {
    args: [...sandbox, "download", `${pkg.package}=${pkg.version}`],
    cwd: dir,
    signal,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const errText = new Response(child.stderr).text();
  const outText = new Response(child.stdout).text();
  // apt writes nothing while a file arrives when it is not on a terminal: watch the file grow.
  let done = false;
  const report = async () => {
    const got = await debSize(dir);
    if (!done) progress.status(downloadStatus(got, pkg.size));
  };
  const timer = setInterval(() => void report(), 1000);
  let status: Deno.CommandStatus;
  try {
    status = await child.status;
  } finally {
    done = true;
    clearInterval(timer);
  }
  await outText;
  const stderr = (await errText).trim();
  if (!status.success) {
    const last = stderr.split("\n").filter((l) => l.startsWith("E:")).pop() ?? stderr;
    throw new KernelFetchError(`apt-get download ${pkg.package} failed: ${last}`);
  }
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".deb")) {
      const path = join(dir, e.name);
      progress.line(`skiff: downloaded ${e.name} (${mib((await Deno.stat(path)).size)})`);
      return path;
    }
  }
  throw new KernelFetchError(`apt-get download ${pkg.package} produced no .deb in ${dir}`);
}

async function debSize(dir: string): Promise<number> {
  let total = 0;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile) total += (await Deno.stat(join(dir, e.name))).size;
    }
  } catch {
    // directory vanished: nothing to report
  }
  return total;
}

/** Unpacks `deb` into `dest` with `dpkg-deb -X`, counting files for progress. */
async function unpack(
  deb: string,
  dest: string,
  progress: FetchProgress,
  signal?: AbortSignal,
): Promise<void> {
  const list = await run("dpkg-deb", ["-c", deb]);
  if (list.code !== 0) {
    throw new KernelFetchError(`dpkg-deb -c ${deb} failed: ${list.stderr.trim()}`);
  }
  const total = list.stdout.split("\n").filter((l) => l.trim()).length;
  progress.line(`skiff: unpacking ${total} files`);
  const child = new Deno.Command("dpkg-deb", {
    args: ["-X", deb, dest],
    signal,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const errText = new Response(child.stderr).text();
  const dec = new TextDecoder();
  let done = 0;
  let lastPct = -1;
  for await (const chunk of child.stdout) {
    done += dec.decode(chunk, { stream: true }).split("\n").length - 1;
    const pct = Math.min(100, Math.floor((done / Math.max(total, 1)) * 100));
    if (pct !== lastPct) {
      progress.status(`  unpacking: ${pct}% (${done}/${total} files)`);
      lastPct = pct;
    }
  }
  const status = await child.status;
  if (!status.success) {
    throw new KernelFetchError(`dpkg-deb -X ${deb} failed: ${(await errText).trim()}`);
  }
  progress.line(`skiff: unpacked ${done} files`);
}

/**
 * Extracts the ELF vmlinux from a bzImage: the setup header locates the
 * payload (payload_offset/payload_length, boot.rst), which must be an LZ4
 * legacy frame followed by the kernel build's u32 decompressed size.
 */
export function extractVmlinux(bzImage: Uint8Array, name = "bzImage"): Uint8Array {
  const header = parseSetupHeader(bzImage, name);
  const payload = bzImagePayload(bzImage, header);
  if (!isLz4Legacy(payload)) {
    const magic = [...payload.subarray(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join("");
    throw new KernelFetchError(
      `${name}: payload is not LZ4 (starts with ${magic}); only LZ4 kernels can be unpacked ` +
        `here — boot the bzImage itself instead`,
    );
  }
  const size = new DataView(payload.buffer, payload.byteOffset + payload.length - 4, 4)
    .getUint32(0, true);
  const vmlinux = decodeLz4Legacy(payload.subarray(0, payload.length - 4), size);
  if (!isElf(vmlinux)) throw new KernelFetchError(`${name}: the decompressed payload is not ELF`);
  return vmlinux;
}

/** Options of {@link fetchKernel}. */
export interface FetchOptions {
  /** Metapackage to resolve (default {@link DEFAULT_KERNEL_PACKAGE}). */
  metaPackage?: string;
  /** Re-download even when the same package version is cached. */
  force?: boolean;
  /** Cache root (default {@link kernelCacheDir}). */
  cacheDir?: string;
  progress?: FetchProgress;
  /** Stops the download or unpacking; the staging directory is removed. */
  signal?: AbortSignal;
}

/** Result of {@link fetchKernel}. */
export interface FetchResult {
  info: KernelInfo;
  /** True when the kernel was already cached and nothing was downloaded. */
  cached: boolean;
}

/**
 * Fetches the current Debian cloud kernel into the cache (or finds it there)
 * and marks it as the default.
 */
export async function fetchKernel(opts: FetchOptions = {}): Promise<FetchResult> {
  const progress = opts.progress ?? stderrProgress();
  const root = opts.cacheDir ?? kernelCacheDir();
  const meta = opts.metaPackage ?? DEFAULT_KERNEL_PACKAGE;
  const pkg = await resolveKernelPackage(meta);
  const release = pkg.package.replace(/^linux-image-/, "");
  const dir = join(root, release);
  const have = await readCachedKernel(dir);
  if (have && have.packageVersion === pkg.version && !opts.force) {
    await setDefaultKernel(release, root);
    progress.line(
      `skiff: kernel ${release} (${pkg.package} ${pkg.version}) is already cached in ${dir}`,
    );
    return { info: have, cached: true };
  }

  await Deno.mkdir(root, { recursive: true });
  // A fetch killed before its cleanup (SIGKILL) left its staging directory.
  sweepPidDirs(root, STAGING_PREFIX);
  const staging = makePidDir(root, STAGING_PREFIX);
  const signal = opts.signal;
  try {
    const dl = join(staging, "download");
    const tree = join(staging, "tree");
    await Deno.mkdir(dl);
    const deb = await download(pkg, dl, progress, signal);
    signal?.throwIfAborted();
    await unpack(deb, tree, progress, signal);
    signal?.throwIfAborted();

    const bzRel = `boot/vmlinuz-${release}`;
    const modRel = `lib/modules/${release}`;
    if (!(await exists(join(tree, bzRel)))) {
      throw new KernelFetchError(`${pkg.package} has no ${bzRel}`);
    }
    if (!(await exists(join(tree, modRel)))) {
      throw new KernelFetchError(`${pkg.package} has no ${modRel}`);
    }
    const bz = await Deno.readFile(join(tree, bzRel));
    progress.status("  extracting vmlinux…");
    const vmlinux = extractVmlinux(bz, bzRel);
    await Deno.writeFile(join(tree, "vmlinux"), vmlinux);
    progress.line(
      `skiff: extracted vmlinux from the LZ4 payload (${mib(bz.length)} → ${mib(vmlinux.length)})`,
    );

    progress.status("  reading module dependencies…");
    const deps = await buildModulesDep(join(tree, modRel));
    await Deno.writeTextFile(join(tree, modRel, "modules.dep"), deps.format());
    progress.line(`skiff: wrote modules.dep (${deps.entries.size} modules)`);

    const meta: KernelJson = {
      version: release,
      package: pkg.package,
      packageVersion: pkg.version,
      bzImage: bzRel,
      vmlinux: "vmlinux",
      modulesDir: modRel,
      modulesDep: `${modRel}/modules.dep`,
      fetchedAt: new Date().toISOString(),
    };
    await Deno.writeTextFile(join(tree, "kernel.json"), JSON.stringify(meta, null, 2) + "\n");

    // Replace any older copy of the same release; the rename makes the new one appear whole.
    if (await exists(dir)) {
      const old = join(staging, "old");
      await Deno.rename(dir, old);
    }
    try {
      await Deno.rename(tree, dir);
    } catch (e) {
      // Another fetch finished first with the same package: use it.
      const other = await readCachedKernel(dir);
      if (!other || other.packageVersion !== pkg.version) throw e;
    }
    await setDefaultKernel(release, root);
    const info = await readCachedKernel(dir);
    if (!info) throw new KernelFetchError(`${dir}/kernel.json unreadable after fetch`);
    progress.line(`skiff: kernel ${release} cached in ${dir} (default)`);
    return { info, cached: false };
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
  }
}
