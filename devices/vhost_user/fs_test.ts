import { ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { FuseServer } from "../fuse/server.ts";
import { PassthroughFs } from "../fuse/passthrough.ts";
import { QemuProcess } from "../../hv/qemu/process.ts";
import {
  assertKernel,
  busyboxInitramfs,
  PORT_FUNCTION,
  runGuest,
  testKernel,
} from "../../hv/qemu/testing.ts";
import { VhostUserVirtioServer } from "./virtio_backend.ts";
import { VirtioFs } from "../virtio/fs/device.ts";
import { HANG_MS, until } from "../../tests/waits.ts";

const kernel = await testKernel();

hostTest("vhost-user-fs: a Linux guest under QEMU mounts, lists, reads and writes", [
  "kernel",
  "qemu",
  "cpio",
], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-vutest-" });
  const share = await Deno.makeTempDir({ prefix: "skiff-vushare-" });
  try {
    await Deno.writeTextFile(`${share}/hello.txt`, "hello from the host\n");
    await Deno.mkdir(`${share}/sub`);
    const initrd = await busyboxInitramfs(
      dir,
      kernel,
      [
        PORT_FUNCTION,
        "mkdir -p /mnt/fs",
        "out=$(port test.out)",
        "{",
        "  mount -t virtiofs share /mnt/fs && echo mounted",
        "  ls /mnt/fs | tr '\\n' ' '; echo",
        "  cat /mnt/fs/hello.txt",
        "  echo written-by-guest > /mnt/fs/sub/new.txt && echo wrote",
        "  umount /mnt/fs && echo unmounted",
        "} > $out 2>&1",
      ].join("\n"),
      ["virtio_mmio", "virtio_console", "virtiofs"],
    );
    const logs: string[] = [];
    const device = new VirtioFs({ tag: "share", server: new FuseServer(new PassthroughFs(share)) });
    await using server = new VhostUserVirtioServer(`${dir}/fs.sock`, device, {
      once: true,
      log: (m) => logs.push(m),
    });
    const vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 128,
      kernel: kernel.bzImage!,
      initrd,
      append: "console=ttyS0 quiet panic=-1",
      portNames: ["test.out"],
      console: true,
      fs: [{ id: "fs0", tag: "share", socketPath: `${dir}/fs.sock` }],
    });
    try {
      const { ports, console: con } = await runGuest(vm);
      strictEqual(
        ports["test.out"],
        "mounted\nhello.txt sub \nhello from the host\nwrote\nunmounted\n",
        `guest console:\n${con}\nbackend log: ${logs.join("; ")}`,
      );
      strictEqual(await Deno.readTextFile(`${share}/sub/new.txt`), "written-by-guest\n");
      ok(device.requests > 5, `FUSE requests served: ${device.requests}`);
      ok(server.backend.counts.get("SET_MEM_TABLE")! >= 1);
    } finally {
      await vm.stop();
    }
    // The back-end ends on its own once QEMU has gone (`once`); bounded wait.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stuck = new Promise<string>((r) => timer = setTimeout(() => r("stuck"), HANG_MS));
    const ended = await Promise.race([server.done.then(() => "ended"), stuck]);
    clearTimeout(timer);
    strictEqual(ended, "ended", "vhost-user server did not end after QEMU exited");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(share, { recursive: true });
  }
});

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

hostTest("skiff virtiofsd: QEMU's guest mounts the share read-only; the CLI exits 0 after", [
  "kernel",
  "qemu",
  "cpio",
], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-vdtest-" });
  const share = await Deno.makeTempDir({ prefix: "skiff-vdshare-" });
  const socketPath = `${dir}/vfsd.sock`;
  try {
    await Deno.writeTextFile(`${share}/hello.txt`, "hi from virtiofsd\n");
    const daemon = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "virtiofsd",
        "--socket-path",
        socketPath,
        "--shared-dir",
        share,
        "--ro",
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const daemonOut = daemon.output();
    await until(() => {
      try {
        Deno.lstatSync(socketPath);
        return true;
      } catch {
        return false;
      }
    }, `skiff virtiofsd's socket ${socketPath}`);
    const initrd = await busyboxInitramfs(
      dir,
      kernel,
      [
        PORT_FUNCTION,
        "mkdir -p /mnt/fs",
        "out=$(port test.out)",
        "{ mount -t virtiofs share /mnt/fs && cat /mnt/fs/hello.txt; touch /mnt/fs/x; } > $out 2>&1",
      ].join("\n"),
      ["virtio_mmio", "virtio_console", "virtiofs"],
    );
    const vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 128,
      kernel: kernel.bzImage!,
      initrd,
      append: "console=ttyS0 quiet panic=-1",
      portNames: ["test.out"],
      console: true,
      fs: [{ id: "fs0", tag: "share", socketPath }],
    });
    try {
      const { ports, console: con } = await runGuest(vm);
      const out = ports["test.out"];
      strictEqual(out.startsWith("hi from virtiofsd\n"), true, `${out}\nconsole:\n${con}`);
      strictEqual(/Read-only file system/.test(out), true, out);
    } finally {
      await vm.stop();
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<null>((r) =>
      timer = setTimeout(() => {
        daemon.kill("SIGKILL");
        r(null);
      }, HANG_MS)
    );
    const result = await Promise.race([daemonOut, killed]);
    clearTimeout(timer);
    const r = result ?? await daemonOut;
    strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
    let socketLeft = true;
    try {
      await Deno.lstat(socketPath);
    } catch {
      socketLeft = false;
    }
    strictEqual(socketLeft, false, "the socket is removed on exit");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(share, { recursive: true });
  }
});

Deno.test("skiff virtiofsd: a missing shared dir is one line and exit 125", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "virtiofsd",
      "--socket-path",
      "/tmp/x.sock",
      "--shared-dir",
      "/no/such",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  strictEqual(r.code, 125);
  strictEqual(
    new TextDecoder().decode(r.stderr),
    "skiff virtiofsd: --shared-dir /no/such does not exist\n",
  );
});
