// L3q: skiff's initramfs and init booted by the Debian kernel under QEMU TCG,
// with the virtio-console ports skiff.stdin/stdout/stderr/status and, where a
// shell is needed, the host's `/` served read-only over vhost-user virtio-fs
// as the guest root.
import { match, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { FuseServer } from "../devices/fuse/server.ts";
import { PassthroughFs } from "../devices/fuse/passthrough.ts";
import { VhostUserVirtioServer } from "../devices/vhost_user/virtio_backend.ts";
import { VirtioFs } from "../devices/virtio/fs/device.ts";
import { QemuProcess } from "../hv/qemu/process.ts";
import { assertKernel, readAll, testKernel } from "../hv/qemu/testing.ts";
import type { KernelInfo } from "../hv/kernel/mod.ts";
import { buildInitramfs, DEFAULT_PORTS, defaultInitConfig, type InitConfig } from "./mod.ts";
import { parseStatusLine } from "./config.ts";
import { GUEST_HANG_MS } from "../tests/waits.ts";

const kernel = await testKernel();
const NEEDS = ["qemu", "kernel"] as const;
/** Bound on one guest run, only to catch a hang (a run takes seconds; more on a busy machine). */
const DEADLINE_MS = GUEST_HANG_MS;

/** QemuProcess adds `tsc_early_khz`/`tsc=reliable` for TCG (hv/qemu/cmdline.ts withTcgClock). */
const APPEND = "console=ttyS0 quiet panic=-1";

interface GuestRun {
  status: string;
  stdout: string;
  stderr: string;
  console: string;
}

/** Boots `config` (serving the host's `/` as tag "root" when `serveRoot`), with a hard deadline. */
async function bootGuest(
  k: KernelInfo,
  config: InitConfig,
  o: {
    serveRoot?: boolean;
    stdin?: string;
    /** Extra host directories served over virtio-fs, by tag (config.shares mounts them). */
    shares?: { tag: string; dir: string; readOnly: boolean }[];
    /** Give the guest a virtio-net NIC whose frames are read and dropped. */
    nic?: boolean;
    /** Ports QEMU offers (default: the config's). */
    hostPorts?: string[];
  } = {},
): Promise<GuestRun> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-initq-" });
  let server: VhostUserVirtioServer | null = null;
  const shareServers: VhostUserVirtioServer[] = [];
  let netListener: Deno.Listener | null = null;
  let netConn: Deno.Conn | null = null;
  let vm: QemuProcess | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let consoleText: Promise<string> = Promise.resolve("");
  try {
    await Deno.writeFile(`${dir}/initrd`, await buildInitramfs({ kernel: k, config }));
    if (o.serveRoot) {
      const fs = new PassthroughFs("/", {
        readOnly: true,
        crossMounts: false,
        hide: ["home", "root"],
      });
      server = new VhostUserVirtioServer(
        `${dir}/fs.sock`,
        new VirtioFs({ tag: "root", server: new FuseServer(fs) }),
        { once: true },
      );
    }
    const fsDevices = o.serveRoot ? [{ id: "fs0", tag: "root", socketPath: `${dir}/fs.sock` }] : [];
    for (const [i, sh] of (o.shares ?? []).entries()) {
      const socketPath = `${dir}/share${i}.sock`;
      const fs = new PassthroughFs(sh.dir, { readOnly: sh.readOnly });
      shareServers.push(
        new VhostUserVirtioServer(
          socketPath,
          new VirtioFs({ tag: sh.tag, server: new FuseServer(fs) }),
          { once: true },
        ),
      );
      fsDevices.push({ id: `share${i}`, tag: sh.tag, socketPath });
    }
    let netSocket: string | null = null;
    if (o.nic) {
      // `-netdev stream` connects to this socket; drain what the guest sends.
      netSocket = `${dir}/net.sock`;
      netListener = Deno.listen({ transport: "unix", path: netSocket });
      netListener.accept().then(async (c) => {
        netConn = c;
        await readAll(c);
      }).catch(() => {});
    }
    const p = config.ports;
    const portNames = o.hostPorts ?? [...new Set([p.stdin, p.stdout, p.stderr, p.status])];
    vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 256,
      kernel: k.bzImage!,
      initrd: `${dir}/initrd`,
      append: APPEND,
      portNames,
      console: true,
      fs: fsDevices,
      netSocket,
    });
    const stdin = vm.ports.get(p.stdin)!;
    consoleText = readAll(vm.console!);
    const work = (async () => {
      if (o.stdin !== undefined) {
        await stdin.write(new TextEncoder().encode(o.stdin));
        // Half-close: the guest reads EOF after the data.
        await (stdin as Deno.UnixConn).closeWrite();
      }
      const read = (name: string) => {
        const c = vm!.ports.get(name);
        return c ? readAll(c) : Promise.resolve("");
      };
      const [stdout, stderr, status] = await Promise.all([
        read(p.stdout),
        p.stderr === p.stdout ? Promise.resolve("") : read(p.stderr),
        read(p.status),
        vm!.exited,
      ]);
      return { stdout, stderr, status, console: await consoleText };
    })();
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const failed = `guest did not finish within ${DEADLINE_MS} ms`;
        // Reject first: stopping the VM ends the port reads, which would resolve `work`.
        reject(new Error(failed));
        vm?.stop(0);
      }, DEADLINE_MS);
    });
    try {
      return await Promise.race([work, deadline]);
    } catch (e) {
      await vm.stop(0);
      throw new Error(`${(e as Error).message}; console:\n${await consoleText}`);
    }
  } finally {
    clearTimeout(timer);
    await vm?.stop();
    await server?.[Symbol.asyncDispose]();
    for (const sv of shareServers) await sv[Symbol.asyncDispose]();
    for (const c of [netConn, netListener]) {
      try {
        c?.close();
      } catch {
        // already closed
      }
    }
    await Deno.remove(dir, { recursive: true });
  }
}

function withCommand(argv: string[], rootTag: string | null = "root"): InitConfig {
  const c = defaultInitConfig(argv);
  c.rootTag = rootTag;
  c.command.env.push("HOME=/");
  return c;
}

hostTest("init under QEMU: commands exiting 0 and 3 on the host root, stdio on named ports", [
  ...NEEDS,
], async () => {
  assertKernel(kernel);
  const ok0 = await bootGuest(
    kernel,
    withCommand([
      "sh",
      "-c",
      'echo "out $(hostname) $(grep -c tsc_early_khz /proc/cmdline)"; echo err >&2; ' +
      "echo w > /etc/skiff-written && cat /etc/skiff-written; [ -e /home ] || echo no-home; " +
      'grep -c " / / .* - overlay " /proc/self/mountinfo',
    ]),
    { serveRoot: true },
  );
  const ctx = `console:\n${ok0.console}\nstdout: ${ok0.stdout}\nstderr: ${ok0.stderr}`;
  strictEqual(ok0.status, "exit 0\n", ctx);
  strictEqual(ok0.stdout, "out skiff 1\nw\nno-home\n1\n", ctx);
  strictEqual(ok0.stderr, "err\n");
  const three = await bootGuest(kernel, withCommand(["sh", "-c", "exit 3"]), { serveRoot: true });
  strictEqual(three.status, "exit 3\n", `console:\n${three.console}`);
  strictEqual(parseStatusLine(three.status).kind, "exited");
});

hostTest("init under QEMU: a command killed by SIGTERM reports signal 15", [...NEEDS], async () => {
  assertKernel(kernel);
  const r = await bootGuest(kernel, withCommand(["sh", "-c", "kill -TERM $$"]), {
    serveRoot: true,
  });
  strictEqual(r.status, "signal 15\n", `console:\n${r.console}`);
});

hostTest("init under QEMU: a missing root share is reported with its errno", [
  ...NEEDS,
], async () => {
  assertKernel(kernel);
  const r = await bootGuest(kernel, withCommand(["true"], "no-such-tag"));
  // virtio_fs_get_tree(): an unknown tag is -EINVAL ("virtio-fs: tag <…> not found").
  strictEqual(r.status, "error mount root: EINVAL\n", `console:\n${r.console}`);
  const st = parseStatusLine(r.status);
  ok(st.kind === "error" && st.step === "mount root");
  strictEqual(r.stdout, "");
});

hostTest("init under QEMU: no root (initramfs only): a missing command exits 127", [
  ...NEEDS,
], async () => {
  assertKernel(kernel);
  const c = withCommand(["sh", "-c", "true"], null);
  c.ports = { ...DEFAULT_PORTS };
  const r = await bootGuest(kernel, c);
  strictEqual(r.status, "exit 127\n", `console:\n${r.console}`);
  match(r.stderr, /skiff: sh: command not found/);
});

hostTest(
  "init under QEMU: shares (ro and rw) mounted in the overlay, stdin to EOF, one port for stdout+stderr",
  [
    ...NEEDS,
  ],
  async () => {
    assertKernel(kernel);
    const ro = await Deno.makeTempDir({ prefix: "skiff-initq-ro-" });
    const rw = await Deno.makeTempDir({ prefix: "skiff-initq-rw-" });
    try {
      await Deno.writeTextFile(`${ro}/in.txt`, "from the ro share\n");
      const c = withCommand([
        "sh",
        "-c",
        [
          "cat /data/in.txt",
          "touch /data/x 2>/dev/null || echo ro-refused",
          "tr a-z A-Z > /out/deep/stdin.txt",
          "grep -E ' /(data|out/deep) ' /proc/self/mounts | cut -d' ' -f2,3,4 | cut -d, -f1",
          "echo to-stderr >&2",
        ].join("\n"),
      ]);
      c.shares = [
        { tag: "data", guestPath: "/data", readOnly: true },
        // /out/deep does not exist on the host's / : made in the writable overlay.
        { tag: "out", guestPath: "/out/deep", readOnly: false },
      ];
      c.ports = { ...DEFAULT_PORTS, stderr: DEFAULT_PORTS.stdout };
      const r = await bootGuest(kernel, c, {
        serveRoot: true,
        stdin: "piped in\n",
        shares: [{ tag: "data", dir: ro, readOnly: true }, {
          tag: "out",
          dir: rw,
          readOnly: false,
        }],
      });
      const ctx = `console:\n${r.console}\nstdout: ${r.stdout}`;
      strictEqual(r.status, "exit 0\n", ctx);
      strictEqual(
        r.stdout,
        "from the ro share\nro-refused\n/data virtiofs ro\n/out/deep virtiofs rw\nto-stderr\n",
        ctx,
      );
      strictEqual(await Deno.readTextFile(`${rw}/stdin.txt`), "PIPED IN\n");
    } finally {
      await Deno.remove(ro, { recursive: true });
      await Deno.remove(rw, { recursive: true });
    }
  },
);

hostTest("init under QEMU: static network on eth0 (address, route, resolv.conf, hosts), hostname", [
  ...NEEDS,
], async () => {
  assertKernel(kernel);
  const c = withCommand([
    "sh",
    "-c",
    "hostname; ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f2,4; ip route show default; " +
    "cat /etc/resolv.conf; grep box /etc/hosts",
  ]);
  c.hostname = "box";
  c.net = { address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1", dns: "10.42.0.1" };
  const r = await bootGuest(kernel, c, { serveRoot: true, nic: true });
  const ctx = `console:\n${r.console}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  strictEqual(r.status, "exit 0\n", ctx);
  strictEqual(
    r.stdout,
    "box\neth0 10.42.0.2/24\ndefault via 10.42.0.1 dev eth0 \nnameserver 10.42.0.1\n10.42.0.2\tbox\n",
    ctx,
  );
});

hostTest("init under QEMU: a port that never appears is reported after the bounded wait", [
  ...NEEDS,
], async () => {
  assertKernel(kernel);
  const c = withCommand(["true"], null);
  c.ports = { ...DEFAULT_PORTS, stdout: "skiff.not-offered" };
  const p = DEFAULT_PORTS;
  const r = await bootGuest(kernel, c, { hostPorts: [p.stdin, p.stderr, p.status] });
  strictEqual(r.status, "error find port stdout: ENOENT\n", `console:\n${r.console}`);
  match(r.console, /skiff-init: error find port stdout: ENOENT/);
});
