/**
 * Test helpers for L3q tests (a real Linux guest under QEMU TCG): the cached
 * kernel, and a busybox-static initramfs around a shell script, for tests of
 * the QEMU driver and the vhost-user back-end that must not depend on
 * skiff's own init.
 *
 * @module
 */

import { findKernel, kernelCacheDir, type KernelInfo, kernelModules } from "../kernel/mod.ts";
import { type CpioEntry, gzip, writeCpio } from "../../init/cpio.ts";
import type { QemuProcess } from "./process.ts";

/**
 * Makes `cacheHome` a private `XDG_CACHE_HOME` for a skiff process: snapshot
 * and image caches of its own, with this user's kernel cache linked in so
 * that nothing is downloaded.
 */
export async function linkKernelCache(cacheHome: string): Promise<void> {
  await Deno.mkdir(`${cacheHome}/skiff`, { recursive: true });
  await Deno.symlink(kernelCacheDir(), `${cacheHome}/skiff/kernels`);
}

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

/** Modules the hot-plug test guest loads: virtio over PCI, virtio-fs, virtio-serial, vsock, net. */
export const HOTPLUG_TEST_MODULES = [
  "virtio_pci",
  "virtio_console",
  "virtiofs",
  "vmw_vsock_virtio_transport",
  "virtio_net",
];

/** busybox applets the test guest links (the rest are reachable as `busybox NAME`). */
const APPLETS = [
  "sh",
  "cat",
  "echo",
  "ls",
  "mkdir",
  "mount",
  "umount",
  "insmod",
  "setsid",
  "stty",
  "usleep",
  "sleep",
  "md5sum",
  "poweroff",
  "sync",
  "test",
  "[",
  "printf",
  "head",
  "date",
  "uptime",
];

/** The test guest's `/init`: what it prints before the shell starts, for the host to wait on. */
export const TEST_READY_LINE = "SKIFF-TEST-READY";

/**
 * A gzip'd newc initramfs built here (init/cpio.ts) for L3q tests of the q35
 * machine, snapshots and hot-plug: `/bin/busybox` (the host's static
 * busybox) with applet links, the kernel modules of `modules` and their
 * dependencies in `modules.dep` order, and an `/init` that mounts /proc,
 * /sys and /dev, loads the modules, and runs a shell on ttyS0 without echo
 * or prompt for {@link ShellConsole} to drive; the shell prints
 * {@link TEST_READY_LINE} first.
 */
export async function hotplugTestInitramfs(
  kernel: KernelInfo,
  modules: readonly string[] = HOTPLUG_TEST_MODULES,
): Promise<Uint8Array> {
  const order = modules.length ? (await kernelModules(kernel)).loadOrder(modules) : [];
  const entries: CpioEntry[] = [
    { kind: "dir", path: "dev" },
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    ...["bin", "proc", "sys", "mnt", "tmp", "m"].map((path) => ({ kind: "dir" as const, path })),
    { kind: "file", path: "bin/busybox", data: await Deno.readFile("/bin/busybox"), mode: 0o755 },
    ...APPLETS.map((a) => ({ kind: "symlink" as const, path: `bin/${a}`, target: "busybox" })),
  ];
  for (const [i, rel] of order.entries()) {
    const data = await Deno.readFile(`${kernel.modulesDir}/${rel}`);
    entries.push({ kind: "file", path: `m/${String(i).padStart(2, "0")}.ko`, data });
  }
  const init = [
    "#!/bin/sh",
    "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
    'for m in /m/*.ko; do insmod "$m" || echo "insmod $m failed"; done',
    // No echo and no prompt: the console carries only what commands print.
    // An interactive ash reads the tty byte by byte (raw mode for its line
    // editing); a shell reading the tty in canonical mode (`cat | sh`) saw
    // each line only when the next one arrived here. The shell prints the
    // ready line itself (ENV is sourced before it reads), so nothing the
    // host sends after it is lost.
    "stty -echo -onlcr </dev/ttyS0",
    "export PS1= PS2= ENV=/etc/ready.sh",
    "exec setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'",
  ].join("\n") + "\n";
  const enc = new TextEncoder();
  entries.push(
    { kind: "file", path: "init", data: enc.encode(init), mode: 0o755 },
    { kind: "dir", path: "etc" },
    { kind: "file", path: "etc/ready.sh", data: enc.encode(`echo ${TEST_READY_LINE}\n`) },
  );
  return await gzip(writeCpio(entries));
}

/** Overall bound of one {@link ShellConsole} wait: only catches hangs (TCG on a loaded host is slow). */
const SHELL_WAIT_MS = 180_000;

/**
 * Drives the test guest's shell on its serial console: {@link run} sends a
 * command followed by a marker carrying its exit status and waits for the
 * marker. Waits end on a condition (the text arriving, the connection
 * closing) with an overall bound that only catches hangs.
 */
export class ShellConsole {
  #conn: Deno.Conn;
  #text = "";
  #closed = false;
  #waiters = new Set<() => void>();
  #seq = 0;
  readonly #reader: Promise<void>;

  /** Starts reading `conn` (the console connection of a QemuProcess). */
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#reader = (async () => {
      const decoder = new TextDecoder();
      const buf = new Uint8Array(65536);
      for (;;) {
        let n: number | null;
        try {
          n = await conn.read(buf);
        } catch {
          n = null;
        }
        if (n === null) break;
        this.#text += decoder.decode(buf.subarray(0, n), { stream: true });
        for (const w of this.#waiters) w();
      }
      this.#closed = true;
      for (const w of this.#waiters) w();
    })();
  }

  /** Everything the console printed so far. */
  get text(): string {
    return this.#text;
  }

  /** Resolves once the console has closed (QEMU exited). */
  get closed(): Promise<void> {
    return this.#reader;
  }

  /**
   * Waits until `pattern` matches the console text from offset `from` on;
   * resolves to the match. Fails when the console closes first or after
   * `timeoutMs`, with the console's tail in the message.
   */
  waitFor(pattern: RegExp, from = 0, timeoutMs = SHELL_WAIT_MS): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = pattern.exec(this.#text.slice(from));
        if (m) {
          done();
          resolve(m);
        } else if (this.#closed) {
          done();
          reject(new Error(`console closed before ${pattern}; tail:\n${this.#text.slice(-2000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(`no ${pattern} within ${timeoutMs} ms; tail:\n${this.#text.slice(-2000)}`),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** Runs `command` in the guest shell; resolves to its output and exit status. */
  async run(command: string, timeoutMs = SHELL_WAIT_MS): Promise<{ out: string; code: number }> {
    const tag = `@@${++this.#seq}-${Math.random().toString(36).slice(2, 8)}`;
    const from = this.#text.length;
    // printf builds the marker from two arguments, so the command line itself never contains it.
    const line = `${command}\nprintf '\\n%s=%d\\n' '${tag}' $?\n`;
    const bytes = new TextEncoder().encode(line);
    for (let off = 0; off < bytes.length;) off += await this.#conn.write(bytes.subarray(off));
    const m = await this.waitFor(new RegExp(`\\n${tag}=(\\d+)\\n`), from, timeoutMs);
    const out = this.#text.slice(from, from + m.index);
    return { out, code: Number(m[1]) };
  }
}
