/**
 * Text for `skiff kernel info`: what is cached and which kernel is the default.
 *
 * @module
 */

import {
  defaultCachedKernel,
  kernelCacheDir,
  type KernelInfo,
  listCachedKernels,
} from "./cache.ts";

async function size(path: string | undefined): Promise<string> {
  if (!path) return "";
  try {
    return ` (${((await Deno.stat(path)).size / (1 << 20)).toFixed(1)} MiB)`;
  } catch {
    return " (MISSING)";
  }
}

/** One kernel described in a few indented lines. */
export async function describeKernel(info: KernelInfo, isDefault = false): Promise<string[]> {
  const lines = [`${info.version}${isDefault ? " (default)" : ""}`];
  if (info.package) lines.push(`  package:     ${info.package} ${info.packageVersion ?? ""}`);
  if (info.bzImage) lines.push(`  bzImage:     ${info.bzImage}${await size(info.bzImage)}`);
  if (info.vmlinux) lines.push(`  vmlinux:     ${info.vmlinux}${await size(info.vmlinux)}`);
  if (info.modulesDir) lines.push(`  modules:     ${info.modulesDir}`);
  if (info.modulesDep) {
    lines.push(`  modules.dep: ${info.modulesDep}${await size(info.modulesDep)}`);
  }
  return lines;
}

/**
 * The cache listing: every cached kernel, the default marked. Resolves to
 * null when nothing is cached.
 */
export async function kernelInfoText(root = kernelCacheDir()): Promise<string | null> {
  const all = await listCachedKernels(root);
  if (all.length === 0) return null;
  const def = await defaultCachedKernel(root);
  const out = [`kernel cache: ${root}`];
  for (const k of all) out.push(...await describeKernel(k, k.dir === def?.dir));
  return out.join("\n");
}
