import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import { initSourceHash, mailboxInitramfsIdentity } from "./init_identity.ts";
import { findKernel, type KernelInfo } from "../kernel/mod.ts";
import { defaultInitConfig, type InitConfig } from "../../init/config.ts";
import { mailboxInitramfs } from "../../init/mailbox_mode.ts";

function cfg(argv: string[], over: Partial<InitConfig> = {}): InitConfig {
  return { ...defaultInitConfig(argv), rootTag: "root", ...over };
}

/** The cached Debian kernel (with its modules) when there is one, else a module-less stand-in. */
async function kernel(): Promise<KernelInfo> {
  try {
    return await findKernel();
  } catch {
    return { version: "6.1.0-test", source: "override", vmlinux: "/nonexistent" };
  }
}

Deno.test("mailbox initramfs identity: same for any command, changes with the boot config", async () => {
  const memoDir = await Deno.makeTempDir({ prefix: "skiff-initid-" });
  try {
    const k = await kernel();
    const src = await initSourceHash();
    ok(src !== null && /^[0-9a-f]{64}$/.test(src), "the init's source is readable in a checkout");
    const a = await mailboxInitramfsIdentity(k, cfg(["echo", "a"]), memoDir);
    const b = await mailboxInitramfsIdentity(k, cfg(["sh", "-c", "exit 3"]), memoDir);
    strictEqual(a, b);
    for (
      const other of [
        cfg(["x"], { rootTag: null }),
        cfg(["x"], { hostname: "other" }),
        cfg(["x"], { shares: [{ tag: "vol0", guestPath: "/mnt", readOnly: true }] }),
        cfg(["x"], {
          net: { address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1", dns: "10.42.0.1" },
        }),
      ]
    ) notStrictEqual(await mailboxInitramfsIdentity(k, other, memoDir), a);
    // Same identity ⇒ same bytes (what the cache key relies on).
    deepStrictEqual(
      await mailboxInitramfs(k, cfg(["echo", "a"])),
      await mailboxInitramfs(k, cfg(["sh", "-c", "exit 3"])),
    );
  } finally {
    await Deno.remove(memoDir, { recursive: true });
  }
});
