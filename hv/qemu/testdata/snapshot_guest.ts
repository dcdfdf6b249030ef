// Test helpers for the qemu snapshot and hot-plug L3q tests and benchmark:
// the q35 launch spec of the test guest, a FUSE server per VM, and the guest
// side of mounting a hot-plugged virtio-fs share.
import { FuseServer } from "../../../devices/fuse/server.ts";
import { PassthroughFs } from "../../../devices/fuse/passthrough.ts";
import { VhostUserVirtioServer } from "../../../devices/vhost_user/virtio_backend.ts";
import { VirtioFs } from "../../../devices/virtio/fs/device.ts";
import type { KernelInfo } from "../../kernel/mod.ts";
import { type PluggedDevice, plugVirtioFs } from "../hotplug.ts";
import type { QemuStartOptions } from "../process.ts";
import type { QemuProcess } from "../process.ts";
import type { ShellConsole } from "../testing.ts";

/** Guest RAM of the test guest (small: the restore copies what the guest touched). */
export const TEST_MEMORY_MIB = 256;

/** The test guest's start options (q35, file RAM at `ramFile`), sockets in `dir`. */
export function testLaunch(
  kernel: KernelInfo,
  initrd: string,
  dir: string,
  ramFile: string,
): QemuStartOptions & { ramFile: string } {
  return {
    dir,
    accel: "tcg",
    cpus: 1,
    memoryMiB: TEST_MEMORY_MIB,
    kernel: kernel.bzImage!,
    initrd,
    append: "console=ttyS0 panic=-1 quiet",
    portNames: [],
    console: true,
    fs: [],
    machine: "q35",
    ramFile,
  };
}

/** skiff's FUSE server for `share` behind a vhost-user socket at `socketPath` (one VM). */
export function serveShare(socketPath: string, share: string): VhostUserVirtioServer {
  return new VhostUserVirtioServer(
    socketPath,
    new VirtioFs({ tag: "share", server: new FuseServer(new PassthroughFs(share)) }),
    { once: true },
  );
}

/**
 * Hot-plugs virtio-fs `tag` served at `socketPath` into `vm`, then (in the
 * guest) mounts it at /mnt/TAG once the tag exists and prints `file`.
 * Resolves to the device and what the guest printed. The guest polls for
 * the tag every 10 ms, at most 3000 times (the device appears within tens of
 * ms; the bound only turns a hang into a failure).
 */
export async function plugMountRead(
  vm: QemuProcess,
  con: ShellConsole,
  o: { id: string; socketPath: string; tag: string; file: string; cont?: boolean },
): Promise<{ device: PluggedDevice; out: string; code: number }> {
  const device = await plugVirtioFs(vm, { id: o.id, socketPath: o.socketPath, tag: o.tag });
  if (o.cont) await vm.qmp.cont();
  const { out, code } = await con.run(
    `mkdir -p /mnt/${o.tag}; i=0; ` +
      `until mount -t virtiofs ${o.tag} /mnt/${o.tag} 2>/dev/null; do ` +
      `i=$((i+1)); [ $i -gt 3000 ] && break; usleep 10000; done; ` +
      `cat /mnt/${o.tag}/${o.file}`,
  );
  return { device, out: out.trim(), code };
}

/** Unmounts /mnt/TAG in the guest and unplugs the device. */
export async function umountUnplug(
  con: ShellConsole,
  device: PluggedDevice,
  tag: string,
): Promise<void> {
  const r = await con.run(`umount /mnt/${tag}`);
  if (r.code !== 0) throw new Error(`umount /mnt/${tag} failed: ${r.out}`);
  await device.unplug();
}

/** Pids of processes whose command line contains `text` (to prove nothing is left running). */
export function processesWith(text: string): number[] {
  const pids: number[] = [];
  for (const ent of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(ent.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${ent.name}/cmdline`);
      if (cmdline.includes(text)) pids.push(Number(ent.name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}
