/**
 * A cheap identity of the guest agent's initramfs, for the snapshot-cache key
 * on the hit path: everything its bytes are made from — the source of the
 * code that generates the init program (`init/**`), the kernel release and
 * each module file's content hash — without compiling the init ELF or
 * gzipping the archive (≈40 ms with the Debian kernel's modules), which a
 * restore does not need. Where the source cannot be read (a bundled or
 * compiled skiff), there is no identity and the engine keys on the built
 * initramfs bytes instead.
 *
 * @module
 */

import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import type { KernelInfo } from "../kernel/mod.ts";
import { AGENT_MODULES } from "../../init/agent/modules.ts";
import { moduleLoadOrder } from "../../init/module_order.ts";
import { canonicalJson, sha256Hex } from "../../snapshot/codec.ts";
import { contentHash } from "../../snapshot/content_hash.ts";
import { webSha256Hex } from "../sha256.ts";

/** Source trees whose code generates the initramfs (relative to the repository root). */
const SOURCES = ["init"];

let sourceHash: Promise<string | null> | undefined;

/** SHA-256 over the init generator's source files (path and text), or null when unreadable. */
export function initSourceHash(): Promise<string | null> {
  sourceHash ??= Promise.resolve().then(async (): Promise<string | null> => {
    // Only from the source tree: a bundle (dist/skiff.js) may be older than the files around it.
    if (
      !import.meta.url.startsWith("file:") ||
      !import.meta.url.endsWith("/hv/engine/init_identity.ts")
    ) {
      return null;
    }
    let root: string;
    try {
      root = fileURLToPath(new URL("../../", import.meta.url));
    } catch {
      return null; // not loaded from files
    }
    // Synchronous reads: ≈35 small files, 2-3 ms here against 5-14 ms for the same
    // walk with an await per file (each a trip through the event loop).
    const files: string[] = [];
    const walk = (path: string) => {
      for (const e of Deno.readDirSync(path)) {
        if (e.name === "testdata") continue;
        const p = join(path, e.name);
        if (e.isDirectory) walk(p);
        else if (e.isFile && p.endsWith(".ts") && !p.endsWith("_test.ts")) files.push(p);
      }
    };
    try {
      for (const s of SOURCES) walk(join(root, s));
      files.sort();
      // WebCrypto's native SHA-256 (the same digest as sha256Hex), all files in one
      // await: ≈1.5 ms here, against ≈6-10 ms for skiff's TypeScript hash while
      // it is not yet compiled, and node:crypto is not loaded on a cache hit.
      const digests = await Promise.all(files.map((f) => webSha256Hex(Deno.readFileSync(f))));
      const parts: string[] = [];
      files.forEach((f, i) => parts.push(relative(root, f), digests[i]));
      return files.length ? await webSha256Hex(parts.join("\n")) : null;
    } catch {
      return null;
    }
  });
  return sourceHash;
}

/**
 * The identity of `agentInitramfs(kernel)`'s output (init/agent): the init
 * generator's source, the kernel release, and each module's content hash in
 * load order — the agent's initramfs has nothing per run in it. Null when
 * the init's source is not readable here.
 */
export async function agentInitramfsIdentity(
  kernel: KernelInfo,
  memoDir?: string,
): Promise<string | null> {
  const source = await initSourceHash();
  if (source === null) return null;
  const order = await moduleLoadOrder(kernel, AGENT_MODULES);
  const modules: [string, string][] = [];
  for (const rel of order) {
    modules.push([rel, await contentHash(join(kernel.modulesDir!, rel), memoDir)]);
  }
  return sha256Hex(
    new TextEncoder().encode(canonicalJson({
      kind: "skiff-agent-initramfs",
      source,
      release: kernel.version,
      modules,
    })),
  );
}
