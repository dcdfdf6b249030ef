/**
 * Test helpers for L3q tests (a real Linux guest under QEMU TCG): the cached
 * kernel, and a busybox-static initramfs around a shell script, for tests of
 * the QEMU driver and the vhost-user back-end that must not depend on
 * skiff's own init.
 *
 * @module
 */

import { findKernel, type KernelInfo, kernelModules } from "../kernel/mod.ts";

/** The cached default kernel, or a reason why there is none (tests then skip). */
export async function testKernel(): Promise<KernelInfo | string> {
  try {
    const k = await findKernel();
    if (!k.bzImage) return `kernel ${k.version} has no bzImage`;
    return k;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Modules a busybox test guest loads for virtio-serial ports and virtio-fs. */
export const TEST_MODULES = ["virtio_mmio", "virtio_console", "virtiofs", "overlay"];

/**
 * Builds a gzip'd newc initramfs in `dir` whose `/init` is a busybox shell
 * running `script` after mounting /proc, /sys, /dev and loading
 * {@link TEST_MODULES}; it powers off at the end. Returns its path.
 */
export async function busyboxInitramfs(
  dir: string,
  kernel: KernelInfo,
  script: string,
  modules: readonly string[] = TEST_MODULES,
): Promise<string> {
  const root = await Deno.makeTempDir({ dir, prefix: "bbroot-" });
  for (const d of ["bin", "dev", "proc", "sys", "mnt", "mods"]) await Deno.mkdir(`${root}/${d}`);
  await Deno.copyFile("/bin/busybox", `${root}/bin/busybox`);
  const order = modules.length ? (await kernelModules(kernel)).loadOrder(modules) : [];
  const names: string[] = [];
  for (const [i, rel] of order.entries()) {
    const name = `${String(i).padStart(2, "0")}.ko`;
    await Deno.copyFile(`${kernel.modulesDir}/${rel}`, `${root}/mods/${name}`);
    names.push(name);
  }
  await Deno.writeTextFile(
    `${root}/init`,
    [
      "#!/bin/busybox sh",
      "/bin/busybox --install -s /bin",
      "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
      ...names.map((n) => `insmod /mods/${n}`),
      script,
      "sync",
      "poweroff -f",
    ].join("\n") + "\n",
    { mode: 0o755 },
  );
  const out = `${dir}/initramfs.cpio.gz`;
  const p = await new Deno.Command("sh", {
    args: ["-c", `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${out}'`],
  }).output();
  if (!p.success) throw new Error(`cpio failed: ${new TextDecoder().decode(p.stderr)}`);
  await Deno.remove(root, { recursive: true });
  return out;
}

/** Reads a connection until EOF. */
export async function readAll(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    let n: number | null;
    try {
      n = await conn.read(buf);
    } catch {
      break;
    }
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
}
