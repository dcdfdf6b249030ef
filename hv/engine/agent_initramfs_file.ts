/**
 * The agent's initramfs as a file, kept in skiff's cache under its identity
 * (hv/engine/init_identity.ts: the init's source, the kernel release and each
 * module's content hash — everything the bytes are made from). Building it
 * compiles the init ELF, reads the modules and gzips ≈0.45 MiB: ≈0.14 s of
 * every cold boot here, for bytes that are the same on every run. With the
 * file cached, a cold boot hands QEMU its path and builds nothing.
 *
 * The file is written atomically (hv/atomic_file.ts), so a reader sees a
 * whole file or none. Where there is no identity (a bundled skiff, whose
 * init source is not readable) or the cache cannot be written, the image is
 * built into the caller's directory as before.
 *
 * @module
 */

import { dirname, join } from "node:path";
import type { KernelInfo } from "../kernel/mod.ts";
import { skiffCacheDir } from "../../snapshot/cache.ts";
import { writeFileAtomic } from "../atomic_file.ts";
import { agentInitramfsIdentity } from "./init_identity.ts";

/** Agent images kept in all, this one included (a few checkouts or kernels side by side). */
const KEEP = 4;
/** A file younger than this is never pruned: another run may be about to boot from it. */
const PRUNE_AGE_MS = 10 * 60_000;

/** Options of {@link agentInitramfsFile}. */
export interface AgentInitramfsFileOptions {
  /** skiff's cache directory (the file goes into its `initramfs/`); default: the user's. */
  cacheDir?: string;
  /** Where to build the image when it cannot be cached (a per-run directory). */
  scratchDir: string;
  /** The identity when the caller computed it already (null: none); default: computed here. */
  identity?: string | null;
}

/** What {@link agentInitramfsFile} returns. */
export interface AgentInitramfsFile {
  /** The initramfs to boot. */
  path: string;
  /** Whether it was already in the cache (nothing built). */
  cached: boolean;
}

/** The cache path of the agent initramfs of `identity`. */
export function agentInitramfsPath(cacheDir: string, identity: string): string {
  return join(cacheDir, "initramfs", `agent-${identity}.cpio.gz`);
}

/**
 * A file holding `agentInitramfs(kernel)`: the cached one for its identity,
 * else built (and cached when possible).
 */
export async function agentInitramfsFile(
  kernel: KernelInfo,
  o: AgentInitramfsFileOptions,
): Promise<AgentInitramfsFile> {
  let cacheDir: string | null = o.cacheDir ?? null;
  try {
    cacheDir ??= skiffCacheDir();
  } catch {
    // no HOME: build per run
  }
  const identity = o.identity !== undefined
    ? o.identity
    : await agentInitramfsIdentity(kernel, cacheDir ?? undefined);
  if (identity !== null && !/^[0-9a-f]{64}$/.test(identity)) {
    throw new Error(`bad initramfs identity '${identity}'`);
  }
  const path = identity === null || cacheDir === null
    ? null
    : agentInitramfsPath(cacheDir, identity);
  if (path) {
    try {
      const st = await Deno.stat(path);
      if (st.isFile && st.size > 0) return { path, cached: true };
    } catch {
      // not cached yet
    }
  }
  // The builder (IR, code generator, assembler) is loaded only to build one.
  const { agentInitramfs } = await import("../../init/agent/initramfs.ts");
  const bytes = await agentInitramfs(kernel);
  if (path) {
    try {
      await writeFileAtomic(path, bytes, { mode: 0o644 });
      await prune(dirname(path), path).catch(() => {});
      return { path, cached: false };
    } catch {
      // a read-only cache: build per run
    }
  }
  const scratch = join(o.scratchDir, "initramfs.cpio.gz");
  await Deno.writeFile(scratch, bytes);
  return { path: scratch, cached: false };
}

/**
 * Removes agent images of other identities beyond the newest {@link KEEP}, and
 * temporary files a killed run left, when older than {@link PRUNE_AGE_MS}.
 */
async function prune(dir: string, keep: string): Promise<void> {
  const files: { path: string; mtime: number; tmp: boolean }[] = [];
  for await (const e of Deno.readDir(dir)) {
    const tmp = /^agent-[0-9a-f]{64}\.cpio\.gz\.\d+\.tmp$/.test(e.name);
    if (!e.isFile || !(tmp || /^agent-[0-9a-f]{64}\.cpio\.gz$/.test(e.name))) continue;
    const path = join(dir, e.name);
    if (path === keep) continue;
    const st = await Deno.stat(path).catch(() => null);
    if (st) files.push({ path, mtime: st.mtime?.getTime() ?? 0, tmp });
  }
  files.sort((a, b) => b.mtime - a.mtime);
  const images = files.filter((f) => !f.tmp);
  const old = [...images.slice(KEEP - 1), ...files.filter((f) => f.tmp)];
  const now = Date.now();
  for (const f of old) {
    if (now - f.mtime > PRUNE_AGE_MS) await Deno.remove(f.path).catch(() => {});
  }
}
