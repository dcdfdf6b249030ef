// A second Deno process for the qemu snapshot L3q test: restores the entry
// given as argument in its own QEMU, hot-plugs virtio-fs for SHARE, mounts it
// and prints the guest's marker file and the shared file, then stops
// everything. Usage: restore_child.ts ENTRY SHARE INITRD
import { restoreQemu } from "../persist.ts";
import { QemuRamDir } from "../ram_dir.ts";
import { ShellConsole, testKernel } from "../testing.ts";
import { plugMountRead, serveShare, testLaunch } from "./snapshot_guest.ts";

const [entry, share, initrd] = Deno.args;
const kernel = await testKernel();
if (typeof kernel === "string") throw new Error(kernel);
const dir = await Deno.makeTempDir({ prefix: "skiff-qchild-" });
using ram = QemuRamDir.create();
try {
  await using server = serveShare(`${dir}/fs.sock`, share);
  const vm = await restoreQemu(entry, testLaunch(kernel, initrd, dir, ram.ramFile));
  try {
    const con = new ShellConsole(vm.console!);
    const r = await plugMountRead(vm, con, {
      id: "fs0",
      socketPath: `${dir}/fs.sock`,
      tag: "child",
      file: "hello",
      cont: true,
    });
    const mark = await con.run("cat /tmp/mark");
    console.log(JSON.stringify({ hello: r.out, mark: mark.out.trim(), pid: vm.pid }));
  } finally {
    await vm.stop();
  }
  void server;
} finally {
  await Deno.remove(dir, { recursive: true });
}
