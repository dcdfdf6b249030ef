import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import {
  bootImage,
  bzImageRelease,
  defaultCachedKernel,
  findKernel,
  KernelFileError,
  KernelMissingError,
  listCachedKernels,
  setDefaultKernel,
} from "./cache.ts";
import { makeBzImage, makeElf } from "./testdata.ts";

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function fakeCached(root: string, release: string) {
  const dir = join(root, release);
  await Deno.mkdir(join(dir, "boot"), { recursive: true });
  await Deno.mkdir(join(dir, "lib/modules", release), { recursive: true });
  await Deno.writeFile(join(dir, "boot", `vmlinuz-${release}`), makeBzImage(new Uint8Array(16)));
  await Deno.writeFile(join(dir, "vmlinux"), makeElf({}, 2));
  await Deno.writeTextFile(join(dir, "lib/modules", release, "modules.dep"), "");
  await Deno.writeTextFile(
    join(dir, "kernel.json"),
    JSON.stringify({
      version: release,
      package: `linux-image-${release}`,
      packageVersion: "1.0-1",
      bzImage: `boot/vmlinuz-${release}`,
      vmlinux: "vmlinux",
      modulesDir: `lib/modules/${release}`,
      modulesDep: `lib/modules/${release}/modules.dep`,
      fetchedAt: "2026-01-01T00:00:00Z",
    }),
  );
  return dir;
}

Deno.test("findKernel: empty cache throws KernelMissingError telling to run skiff kernel fetch", async () => {
  await withDir(async (root) => {
    await rejects(findKernel({ cacheDir: root }), (e: Error) => {
      ok(e instanceof KernelMissingError);
      ok(e.message.includes("skiff kernel fetch"), e.message);
      return true;
    });
  });
});

Deno.test("findKernel: the default cached kernel, with absolute paths", async () => {
  await withDir(async (root) => {
    const dir = await fakeCached(root, "6.1.0-9-cloud-amd64");
    await fakeCached(root, "6.1.0-8-cloud-amd64");
    strictEqual((await listCachedKernels(root)).length, 2);
    strictEqual(await defaultCachedKernel(root), undefined);
    await setDefaultKernel("6.1.0-9-cloud-amd64", root);
    const k = await findKernel({ cacheDir: root });
    strictEqual(k.version, "6.1.0-9-cloud-amd64");
    strictEqual(k.source, "cache");
    strictEqual(k.vmlinux, join(dir, "vmlinux"));
    strictEqual(k.modulesDep, join(dir, "lib/modules/6.1.0-9-cloud-amd64/modules.dep"));
    deepStrictEqual(bootImage(k), { path: join(dir, "vmlinux"), format: "elf" });
    deepStrictEqual(bootImage(k, "bzimage").format, "bzimage");
    // A cached file gone missing is reported, not booted.
    await Deno.remove(join(dir, "vmlinux"));
    await rejects(
      findKernel({ cacheDir: root }),
      /vmlinux is missing; run `skiff setup` or `skiff kernel fetch`/,
    );
  });
});

Deno.test("findKernel: --kernel detects bzImage vs ELF; --modules overrides", async () => {
  await withDir(async (root) => {
    const bz = join(root, "bz");
    await Deno.writeFile(bz, makeBzImage(new Uint8Array(8), { release: "6.9.1-custom" }));
    const elf = join(root, "vmlinux");
    await Deno.writeFile(elf, makeElf({}, 2));
    const junk = join(root, "junk");
    await Deno.writeTextFile(junk, "hello");
    const k1 = await findKernel({ kernel: bz, cacheDir: root });
    strictEqual(k1.bzImage, bz);
    strictEqual(k1.vmlinux, undefined);
    strictEqual(k1.version, "6.9.1-custom");
    strictEqual(k1.modulesDir, undefined);
    const mods = join(root, "mods");
    await Deno.mkdir(mods);
    const k2 = await findKernel({ kernel: elf, modules: mods, cacheDir: root });
    strictEqual(k2.vmlinux, elf);
    strictEqual(k2.modulesDir, mods);
    strictEqual(k2.modulesDep, undefined);
    strictEqual(k2.source, "override");
    await rejects(findKernel({ kernel: junk }), KernelFileError);
    await rejects(findKernel({ kernel: join(root, "absent") }), KernelFileError);
    await rejects(findKernel({ kernel: elf, modules: junk }), /not a directory/);
  });
});

Deno.test("bzImageRelease reads the kernel_version string", () => {
  strictEqual(
    bzImageRelease(makeBzImage(new Uint8Array(4), { release: "6.1.0-56-cloud-amd64" })),
    "6.1.0-56-cloud-amd64",
  );
  strictEqual(bzImageRelease(makeBzImage(new Uint8Array(4))), undefined);
});

Deno.test("findKernel: --kernel naming a cached kernel's file (any link to it) brings its modules", async () => {
  await withDir(async (root) => {
    const dir = await fakeCached(root, "6.1.0-9-cloud-amd64");
    const link = join(root, "my-vmlinuz");
    await Deno.symlink(join(dir, "boot/vmlinuz-6.1.0-9-cloud-amd64"), link);
    for (const kernel of [join(dir, "vmlinux"), link]) {
      const k = await findKernel({ kernel, cacheDir: root });
      strictEqual(k.source, "cache");
      strictEqual(k.version, "6.1.0-9-cloud-amd64");
      strictEqual(k.modulesDir, join(dir, "lib/modules/6.1.0-9-cloud-amd64"));
      // Only the image named is booted.
      deepStrictEqual(
        [k.vmlinux, k.bzImage],
        kernel === link
          ? [undefined, join(dir, "boot/vmlinuz-6.1.0-9-cloud-amd64")]
          : [join(dir, "vmlinux"), undefined],
      );
    }
    // With --modules the user's choice stands.
    const mods = join(root, "mods");
    await Deno.mkdir(mods);
    const k = await findKernel({ kernel: link, modules: mods, cacheDir: root });
    strictEqual(k.source, "override");
    strictEqual(k.modulesDir, mods);
  });
});
