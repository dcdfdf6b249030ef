import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { agentInitramfsFile, agentInitramfsPath } from "./agent_initramfs_file.ts";
import { agentInitramfsIdentity } from "./init_identity.ts";
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

async function withDirs(fn: (cacheDir: string, scratchDir: string) => Promise<void>) {
  const base = await Deno.makeTempDir({ prefix: "skiff-initrd-file-" });
  try {
    await Deno.mkdir(`${base}/cache`);
    await Deno.mkdir(`${base}/scratch`);
    await fn(`${base}/cache`, `${base}/scratch`);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

Deno.test("agent initramfs file: built once into the cache under its identity, then reused", async () => {
  await withDirs(async (cacheDir, scratchDir) => {
    const k = await kernel();
    const identity = await agentInitramfsIdentity(k, cacheDir);
    ok(identity !== null, "the init's source is readable in a checkout");
    const first = await agentInitramfsFile(k, { cacheDir, scratchDir });
    deepStrictEqual(first, { path: agentInitramfsPath(cacheDir, identity), cached: false });
    deepStrictEqual(await Deno.readFile(first.path), await agentInitramfs(k));
    const second = await agentInitramfsFile(k, { cacheDir, scratchDir, identity });
    deepStrictEqual(second, { path: first.path, cached: true });
    deepStrictEqual([...Deno.readDirSync(scratchDir)], [], "nothing built per run");
    deepStrictEqual([...Deno.readDirSync(`${cacheDir}/initramfs`)].map((e) => e.name), [
      `agent-${identity}.cpio.gz`,
    ]);
    // Another identity (another kernel or init source) is another file.
    const other = await agentInitramfsFile(k, { cacheDir, scratchDir, identity: "0".repeat(64) });
    strictEqual(other.cached, false);
    strictEqual(other.path, agentInitramfsPath(cacheDir, "0".repeat(64)));
  });
});

Deno.test("agent initramfs file: no identity, or a cache it cannot write, builds into the scratch dir", async () => {
  await withDirs(async (cacheDir, scratchDir) => {
    const k = await kernel();
    const bytes = await agentInitramfs(k);
    const none = await agentInitramfsFile(k, { cacheDir, scratchDir, identity: null });
    deepStrictEqual(none, { path: `${scratchDir}/initramfs.cpio.gz`, cached: false });
    deepStrictEqual(await Deno.readFile(none.path), bytes);
    deepStrictEqual([...Deno.readDirSync(cacheDir)], []);
    await Deno.remove(none.path);
    // The cache's initramfs/ is a file: it cannot be written; the run still gets its image.
    await Deno.writeTextFile(`${cacheDir}/initramfs`, "not a directory");
    const blocked = await agentInitramfsFile(k, { cacheDir, scratchDir, identity: "a".repeat(64) });
    deepStrictEqual(blocked, { path: `${scratchDir}/initramfs.cpio.gz`, cached: false });
    deepStrictEqual(await Deno.readFile(blocked.path), bytes);
  });
});

Deno.test("agent initramfs file: old images of other identities and stale temporaries are pruned", async () => {
  await withDirs(async (cacheDir, scratchDir) => {
    const k = await kernel();
    const dir = `${cacheDir}/initramfs`;
    await Deno.mkdir(dir);
    const old = new Date(Date.now() - 3600_000);
    const names: string[] = [];
    for (let i = 1; i <= 5; i++) {
      const name = `agent-${String(i).repeat(64)}.cpio.gz`;
      await Deno.writeTextFile(`${dir}/${name}`, "x");
      // Older as i grows: 1 is the newest of the old ones.
      await Deno.utime(`${dir}/${name}`, old, new Date(old.getTime() - i * 1000));
      names.push(name);
    }
    const recent = `agent-${"f".repeat(64)}.cpio.gz`;
    await Deno.writeTextFile(`${dir}/${recent}`, "x"); // just written: another run may boot it
    const staleTmp = `agent-${"e".repeat(64)}.cpio.gz.123.tmp`;
    await Deno.writeTextFile(`${dir}/${staleTmp}`, "x");
    await Deno.utime(`${dir}/${staleTmp}`, old, old);
    await Deno.writeTextFile(`${dir}/unrelated`, "x");
    const built = await agentInitramfsFile(k, { cacheDir, scratchDir, identity: "d".repeat(64) });
    strictEqual(built.cached, false);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    // Kept: the new image, the recent one, the two newest old ones (4 images by age), unrelated.
    deepStrictEqual(
      left,
      [`agent-${"d".repeat(64)}.cpio.gz`, recent, names[0], names[1], "unrelated"].sort(),
    );
  });
});
