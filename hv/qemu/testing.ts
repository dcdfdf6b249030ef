/**
 * Test helpers for L3q tests (a real Linux guest under QEMU TCG): the cached
 * kernel, and a busybox-static initramfs around a shell script, for tests of
 * the QEMU driver and the vhost-user back-end that must not depend on
 * skiff's own init.
 *
 * @module
 */

import { findKernel, type KernelInfo, kernelModules } from "../kernel/mod.ts";
import type { QemuProcess } from "./process.ts";

/**
 * The cached default kernel, or why there is none. Tests that use it are
 * registered with the `kernel` requirement (tests/requirements.ts), so they
 * are ignored, with that reason printed, when it is missing.
 */
export async function testKernel(): Promise<KernelInfo | string> {
  try {
    const k = await findKernel();
    if (!k.bzImage) return `kernel ${k.version} has no bzImage`;
    return k;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * Narrows {@link testKernel}'s result inside a test registered with the
 * `kernel` requirement. Such a test is ignored without a kernel, so reaching
 * this without one means the test forgot the requirement: it fails, never
 * passes.
 */
export function assertKernel(k: KernelInfo | string): asserts k is KernelInfo {
  if (typeof k === "string") {
    throw new Error(`no guest kernel (${k}): register the test with the "kernel" requirement`);
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

/**
 * A shell function for busybox test scripts: `port NAME` prints the device of
 * the virtio-console port called NAME. Ports register asynchronously after
 * virtio_console loads, so it polls until the port is there — for up to
 * 5 minutes, which only catches a port that never comes (a busy host makes
 * a TCG guest slow) — before giving /dev/null.
 */
export const PORT_FUNCTION = [
  "port() {",
  "  for i in $(seq 3000); do",
  "    for p in /sys/class/virtio-ports/*; do",
  '      [ -e "$p/name" ] && [ "$(cat "$p/name")" = "$1" ] && { echo "/dev/${p##*/}"; return; }',
  "    done",
  "    sleep 0.1",
  "  done",
  "  echo /dev/null",
  "}",
].join("\n");

/** Text read from a connection so far, and a promise for all of it at EOF. */
export interface Collected {
  /** Text so far (grows while reading). */
  readonly text: string;
  /** Resolves at EOF (or a read error) with the whole text. */
  readonly done: Promise<string>;
}

/** Starts reading a connection to its end, keeping the text read so far visible. */
export function collect(conn: Deno.Conn): Collected {
  const state = { text: "", done: Promise.resolve("") };
  state.done = (async () => {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(65536);
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        break;
      }
      if (n === null) break;
      state.text += decoder.decode(buf.subarray(0, n), { stream: true });
    }
    return state.text;
  })();
  return state;
}

/** Reads a connection until EOF. */
export function readAll(conn: Deno.Conn): Promise<string> {
  return collect(conn).done;
}

/** What {@link runGuest} saw. */
export interface GuestOutput {
  /** Text of each named port, to EOF. */
  ports: Record<string, string>;
  /** Serial console text (empty without a console). */
  console: string;
  /** QEMU's exit status. */
  status: Deno.CommandStatus;
}

/**
 * Waits for a test guest to power off, collecting its ports and console, but
 * at most `deadlineMs`: then QEMU is stopped and the call fails with the
 * console text so far, so a hung guest fails its test instead of hanging CI.
 */
export async function runGuest(
  vm: QemuProcess,
  deadlineMs = 10 * 60_000,
): Promise<GuestOutput> {
  const ports = [...vm.ports].map(([name, conn]) => [name, collect(conn)] as const);
  const con = vm.console ? collect(vm.console) : null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"deadline">((r) =>
    timer = setTimeout(() => r("deadline"), deadlineMs)
  );
  try {
    const all = Promise.all([vm.exited, ...ports.map(([, c]) => c.done), con?.done]);
    const first = await Promise.race([all, deadline]);
    if (first === "deadline") {
      await vm.stop(0);
      throw new Error(
        `the guest did not finish within ${deadlineMs} ms; console so far:\n${
          con?.text ?? "(none)"
        }`,
      );
    }
    const [status] = first;
    return {
      ports: Object.fromEntries(ports.map(([name, c]) => [name, c.text])),
      console: con?.text ?? "",
      status,
    };
  } finally {
    clearTimeout(timer);
  }
}
