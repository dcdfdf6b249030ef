// L3q: the generic vhost-user adapter serving an unchanged in-process
// VirtioDevice — devices/virtio/fs's VirtioFs, the kvm engine's virtio-fs — to
// QEMU's vhost-user-fs-device, with the Debian kernel's virtiofs driver.
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
import { VirtioFs } from "../virtio/fs/device.ts";
import { VhostUserVirtioServer } from "./virtio_backend.ts";

const kernel = await testKernel();

hostTest("vhost-user adapter: devices/virtio's VirtioFs serves QEMU's vhost-user-fs-device", [
  "qemu",
  "kernel",
  "cpio",
], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-vuadapt-" });
  const share = await Deno.makeTempDir({ prefix: "skiff-vuadshare-" });
  try {
    await Deno.writeTextFile(`${share}/hello.txt`, "hello through the adapter\n");
    const initrd = await busyboxInitramfs(
      dir,
      kernel,
      [
        PORT_FUNCTION,
        "mkdir -p /mnt/fs",
        "out=$(port test.out)",
        "{",
        "  mount -t virtiofs share /mnt/fs && echo mounted",
        "  cat /mnt/fs/hello.txt",
        "  seq 1 20000 > /mnt/fs/numbers && echo wrote",
        "  wc -l < /mnt/fs/numbers",
        "  umount /mnt/fs && echo unmounted",
        "} > $out 2>&1",
      ].join("\n"),
      ["virtio_mmio", "virtio_console", "virtiofs"],
    );
    const logs: string[] = [];
    const fs = new VirtioFs({ tag: "share", server: new FuseServer(new PassthroughFs(share)) });
    await using server = new VhostUserVirtioServer(`${dir}/fs.sock`, fs, {
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
        "mounted\nhello through the adapter\nwrote\n20000\nunmounted\n",
        `guest console:\n${con}\nadapter log: ${logs.join("; ")}`,
      );
      const numbers = await Deno.readTextFile(`${share}/numbers`);
      strictEqual(numbers.split("\n").length, 20001);
      ok(fs.requests > 5, `FUSE requests served: ${fs.requests}`);
      strictEqual(server.backend.counts.get("GET_CONFIG") ?? 0, 0, "virtio-fs reads no config");
      ok((server.backend.counts.get("SET_VRING_KICK") ?? 0) >= 2);
    } finally {
      await vm.stop();
    }
    await server.done;
    strictEqual(server.backend.active, false, "disconnect resets the device");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(share, { recursive: true });
  }
});
