import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import { agentInitramfsIdentity, initSourceHash } from "./init_identity.ts";
import { findKernel, type KernelInfo } from "../kernel/mod.ts";
import { agentInitramfs } from "../../init/agent/initramfs.ts";

/** The cached Debian kernel (with its modules) when there is one, else a module-less stand-in. */
async function kernel(): Promise<KernelInfo> {
  try {
    return await findKernel();
  } catch {
    return { version: "6.1.0-test", source: "override", vmlinux: "/nonexistent" };
  }
}

Deno.test("agent initramfs identity: stable, changes with the kernel, same identity ⇒ same bytes", async () => {
  const memoDir = await Deno.makeTempDir({ prefix: "skiff-initid-" });
  try {
    const k = await kernel();
    const src = await initSourceHash();
    ok(src !== null && /^[0-9a-f]{64}$/.test(src), "the init's source is readable in a checkout");
    const a = await agentInitramfsIdentity(k, memoDir);
    ok(a !== null && /^[0-9a-f]{64}$/.test(a), String(a));
    // Computed again (module hashes from the memo now): the same.
    strictEqual(await agentInitramfsIdentity(k, memoDir), a);
    // Another kernel release, or the same release without its modules: another identity.
    notStrictEqual(await agentInitramfsIdentity({ ...k, version: `${k.version}-other` }), a);
    if (k.modulesDir) {
      notStrictEqual(await agentInitramfsIdentity({ ...k, modulesDir: undefined }, memoDir), a);
    }
    // What the cache key relies on: the identity stands for the bytes, which are the same each build.
    deepStrictEqual(await agentInitramfs(k), await agentInitramfs(k));
  } finally {
    await Deno.remove(memoDir, { recursive: true });
  }
});
