import { ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { FuseServer } from "../fuse/server.ts";
import { PassthroughFs } from "../fuse/passthrough.ts";
import { QemuProcess } from "../../hv/qemu/process.ts";
import { busyboxInitramfs, readAll, testKernel } from "../../hv/qemu/testing.ts";
import { VhostUserServer } from "./backend.ts";
import { VirtioFsDevice } from "./fs.ts";

const kernel = await testKernel();
if (typeof kernel === "string") console.error(`skiff-test-skip: vhost-user guest tests: ${kernel}`);

hostTest("vhost-user-fs: a Linux guest under QEMU mounts, lists, reads and writes", [
  "qemu",
  "cpio",
], async () => {
  if (typeof kernel === "string") return;
  const dir = await Deno.makeTempDir({ prefix: "skiff-vutest-" });
  const share = await Deno.makeTempDir({ prefix: "skiff-vushare-" });
  try {
    await Deno.writeTextFile(`${share}/hello.txt`, "hello from the host\n");
    await Deno.mkdir(`${share}/sub`);
    const initrd = await busyboxInitramfs(
      dir,
      kernel,
      [
        "mkdir -p /mnt/fs",
        "out=/dev/null",
        'for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = test.out ] && out=/dev/$(basename $p); done',
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
    const device = new VirtioFsDevice(new FuseServer(new PassthroughFs(share)));
    await using server = new VhostUserServer(`${dir}/fs.sock`, device, {
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
      const [out, con] = await Promise.all([
        readAll(vm.ports.get("test.out")!),
        readAll(vm.console!),
        vm.exited,
      ]);
      strictEqual(
        out,
        "mounted\nhello.txt sub \nhello from the host\nwrote\nunmounted\n",
        `guest console:\n${con}\nbackend log: ${logs.join("; ")}`,
      );
      strictEqual(await Deno.readTextFile(`${share}/sub/new.txt`), "written-by-guest\n");
      ok(device.requests > 5, `FUSE requests served: ${device.requests}`);
      ok(server.backend.counts.get("SET_MEM_TABLE")! >= 1);
    } finally {
      await vm.stop();
    }
    await server.done;
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(share, { recursive: true });
  }
});
