/**
 * The per-user kernel cache and {@link findKernel}, which every command that
 * boots a guest calls to learn which kernel and modules to use.
 *
 * Layout (`${XDG_CACHE_HOME:-~/.cache}/skiff/kernels/`):
 *
 * ```
 * default                      name of the default kernel directory
 * <release>/kernel.json        what is cached (paths relative to the directory)
 * <release>/boot/vmlinuz-<release>         the bzImage from the package
 * <release>/vmlinux                         the ELF kernel extracted from it
 * <release>/lib/modules/<release>/         modules, with a generated modules.dep
 * ```
 *
 * @module
 */

import { basename, isAbsolute, join, resolve } from "node:path";
import { SkiffError } from "../errors.ts";
import { isElf } from "../boot/elf.ts";
import { isBzImage } from "../boot/setup_header.ts";
import { buildModulesDep, ModulesDep } from "./modules.ts";

/** Format of a kernel image file. */
export type KernelFormat = "bzimage" | "elf";

/** A kernel skiff can boot, and where its modules are. All paths are absolute. */
export interface KernelInfo {
  /** Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`; for overrides, best effort. */
  version: string;
  /** "cache" for the cached default, "override" when `--kernel` or `--modules` chose it. */
  source: "cache" | "override";
  /** The compressed bzImage, when there is one. */
  bzImage?: string;
  /** The ELF `vmlinux`, when there is one (preferred where guest code is emulated). */
  vmlinux?: string;
  /** Modules directory (`…/lib/modules/<release>`), when known. */
  modulesDir?: string;
  /** `modules.dep` inside `modulesDir`, when it exists. */
  modulesDep?: string;
  /** Debian package name and version, for cached kernels. */
  package?: string;
  packageVersion?: string;
  /** The cache directory of a cached kernel. */
  dir?: string;
}

/** The kernel metadata file written into each cached kernel's directory. */
export interface KernelJson {
  version: string;
  package: string;
  packageVersion: string;
  /** Paths relative to the kernel's cache directory. */
  bzImage: string;
  vmlinux: string;
  modulesDir: string;
  modulesDep: string;
  /** ISO time of the fetch. */
  fetchedAt: string;
}

/** No kernel is cached (or the chosen one is missing); the message says what to run. */
export class KernelMissingError extends SkiffError {
  constructor(detail = "no kernel is cached") {
    super(`${detail}; run \`skiff setup\` or \`skiff kernel fetch\` (or pass --kernel PATH)`);
  }
}

/** A `--kernel`/`--modules` path that is not usable; says which path and why. */
export class KernelFileError extends SkiffError {}

/** `${XDG_CACHE_HOME:-$HOME/.cache}/skiff/kernels`. */
export function kernelCacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const base = xdg && isAbsolute(xdg) ? xdg : join(Deno.env.get("HOME") ?? "/tmp", ".cache");
  return join(base, "skiff", "kernels");
}

/** Whether `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Reads `<dir>/kernel.json` into a {@link KernelInfo}, or undefined when absent or invalid. */
export async function readCachedKernel(dir: string): Promise<KernelInfo | undefined> {
  let meta: KernelJson;
  try {
    meta = JSON.parse(await Deno.readTextFile(join(dir, "kernel.json")));
  } catch {
    return undefined;
  }
  if (typeof meta?.version !== "string" || typeof meta.vmlinux !== "string") return undefined;
  return {
    version: meta.version,
    source: "cache",
    bzImage: join(dir, meta.bzImage),
    vmlinux: join(dir, meta.vmlinux),
    modulesDir: join(dir, meta.modulesDir),
    modulesDep: join(dir, meta.modulesDep),
    package: meta.package,
    packageVersion: meta.packageVersion,
    dir,
  };
}

/** Every cached kernel (valid `kernel.json`), sorted by directory name. */
export async function listCachedKernels(root = kernelCacheDir()): Promise<KernelInfo[]> {
  const out: KernelInfo[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      if (!e.isDirectory || e.name.startsWith(".")) continue;
      const info = await readCachedKernel(join(root, e.name));
      if (info) out.push(info);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => (a.dir! < b.dir! ? -1 : 1));
}

/** The default cached kernel, or undefined. */
export async function defaultCachedKernel(
  root = kernelCacheDir(),
): Promise<KernelInfo | undefined> {
  let name: string;
  try {
    name = (await Deno.readTextFile(join(root, "default"))).trim();
  } catch {
    return undefined;
  }
  if (name === "" || name.includes("/") || name.startsWith(".")) return undefined;
  return await readCachedKernel(join(root, name));
}

/** Marks the cached kernel in `<root>/<name>` as the default (atomic replace). */
export async function setDefaultKernel(name: string, root = kernelCacheDir()): Promise<void> {
  const tmp = join(root, `.default.${Deno.pid}`);
  await Deno.writeTextFile(tmp, name + "\n");
  await Deno.rename(tmp, join(root, "default"));
}

/** Reads the first bytes of a file (enough to tell bzImage from ELF). */
async function head(path: string, n = 0x1000): Promise<Uint8Array> {
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await f.read(buf.subarray(got));
    if (r === null) break;
    got += r;
  }
  return buf.subarray(0, got);
}

/** Detects whether `path` is a bzImage or an ELF kernel; throws {@link KernelFileError} otherwise. */
export async function detectKernelFormat(path: string): Promise<KernelFormat> {
  let bytes: Uint8Array;
  try {
    bytes = await head(path);
  } catch (e) {
    throw new KernelFileError(`cannot read kernel ${path}: ${(e as Error).message}`);
  }
  if (isElf(bytes)) return "elf";
  if (isBzImage(bytes)) return "bzimage";
  throw new KernelFileError(`${path} is neither a bzImage (no "HdrS" header) nor an ELF vmlinux`);
}

/** The release string a bzImage carries (`kernel_version` field, boot.rst), or undefined. */
export function bzImageRelease(bytes: Uint8Array): string | undefined {
  if (bytes.length < 0x210) return undefined;
  const off = 0x200 + (bytes[0x20e] | (bytes[0x20f] << 8));
  if (off <= 0x200 || off >= bytes.length) return undefined;
  let end = off;
  while (end < bytes.length && bytes[end] !== 0 && bytes[end] !== 0x20) end++;
  const s = new TextDecoder().decode(bytes.subarray(off, end));
  return /^[0-9][\w.+~-]*$/.test(s) ? s : undefined;
}

/**
 * The cached kernel whose vmlinux or bzImage `path` is (the same file), with
 * that image only (the one the user named is the one booted), or undefined.
 */
async function cachedKernelOf(path: string, root?: string): Promise<KernelInfo | undefined> {
  const real = (p: string) => Deno.realPath(p).catch(() => null);
  const want = await real(path);
  if (!want) return undefined;
  for (const k of await listCachedKernels(root).catch(() => [])) {
    if (k.vmlinux && (await real(k.vmlinux)) === want) {
      const { bzImage: _, ...elf } = k;
      return elf;
    }
    if (k.bzImage && (await real(k.bzImage)) === want) {
      const { vmlinux: _, ...bz } = k;
      return bz;
    }
  }
  return undefined;
}

/**
 * The kernel to boot: the default cached kernel, or the `kernel` path
 * (bzImage or ELF vmlinux, detected) and/or `modules` directory given by the
 * user; a `kernel` that is a cached kernel's own file, without `modules`, is
 * that cached kernel with its modules. Throws {@link KernelMissingError} when
 * nothing is cached and no kernel was given, and {@link KernelFileError} for
 * unusable override paths.
 */
export async function findKernel(
  opts: { kernel?: string; modules?: string; cacheDir?: string } = {},
): Promise<KernelInfo> {
  let info: KernelInfo;
  if (opts.kernel && !opts.modules) {
    // A cached kernel's own file (e.g. its boot/vmlinuz) comes with its modules.
    const own = await cachedKernelOf(resolve(opts.kernel), opts.cacheDir);
    if (own) return own;
  }
  if (opts.kernel) {
    const path = resolve(opts.kernel);
    const format = await detectKernelFormat(path);
    const release = format === "bzimage" ? bzImageRelease(await head(path, 0x8000)) : undefined;
    info = {
      version: release ?? (opts.modules ? basename(resolve(opts.modules)) : basename(path)),
      source: "override",
      ...(format === "bzimage" ? { bzImage: path } : { vmlinux: path }),
    };
  } else {
    const cached = await defaultCachedKernel(opts.cacheDir);
    if (!cached) throw new KernelMissingError();
    for (const p of [cached.vmlinux!, cached.bzImage!]) {
      if (!(await exists(p))) {
        throw new KernelMissingError(`the cached kernel file ${p} is missing`);
      }
    }
    info = cached;
  }
  if (opts.modules) {
    const dir = resolve(opts.modules);
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(dir);
    } catch (e) {
      throw new KernelFileError(`cannot use modules directory ${dir}: ${(e as Error).message}`);
    }
    if (!st.isDirectory) throw new KernelFileError(`modules path ${dir} is not a directory`);
    const dep = join(dir, "modules.dep");
    info = { ...info, source: "override", modulesDir: dir };
    if (await exists(dep)) info.modulesDep = dep;
    else delete info.modulesDep;
  } else if (opts.kernel) {
    // A custom kernel with the cached modules would load mismatched modules.
    delete info.modulesDir;
  }
  return info;
}

/**
 * The module dependency map of `info`: its `modules.dep`, or one built from
 * the modules' `.modinfo` when the directory has none. Throws when the kernel
 * has no modules directory.
 */
export async function kernelModules(info: KernelInfo): Promise<ModulesDep> {
  if (info.modulesDep) return await ModulesDep.read(info.modulesDep);
  if (!info.modulesDir) {
    throw new KernelFileError(
      `kernel ${info.version} has no modules directory (pass --modules DIR)`,
    );
  }
  return await buildModulesDep(info.modulesDir);
}

/** The image path to boot from `info`: the ELF vmlinux if preferred and present, else the bzImage. */
export function bootImage(info: KernelInfo, prefer: KernelFormat = "elf"): {
  path: string;
  format: KernelFormat;
} {
  if (prefer === "elf" && info.vmlinux) return { path: info.vmlinux, format: "elf" };
  if (info.bzImage) return { path: info.bzImage, format: "bzimage" };
  if (info.vmlinux) return { path: info.vmlinux, format: "elf" };
  throw new KernelMissingError(`kernel ${info.version} has no image`);
}

/** Directory name of a cached kernel (its release), from its `kernel.json` path. */
export function cacheEntryName(info: KernelInfo): string | undefined {
  return info.dir ? basename(info.dir) : undefined;
}
