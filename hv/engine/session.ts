/**
 * What happens in a VM after its init says READY, the same on both engines:
 * a snapshot is captured at READY, so everything that varies per run — the
 * shares (root, current directory, volumes), the network, the host name, the
 * wall clock — is set up afterwards, through the guest agent's SETUP request.
 *
 * Every share is one directory of a single virtio-fs device (tag
 * {@link MUX_TAG}, served by `devices/fuse/mux.ts`), mounted at
 * {@link FS_MOUNT}. The root share becomes the lower layer of an overlay
 * with a tmpfs upper at {@link ROOT_DIR} (commands `chroot` there); each
 * volume is bind-mounted into it (read-only ones remounted read-only).
 *
 * @module
 */

import { ShareMux } from "../../devices/fuse/mux.ts";
import type { FileSystem } from "../../devices/fuse/filesystem.ts";
import { MS } from "../../init/ir/linux.ts";
import type { MountSpec, SetupSpec } from "../../init/agent/wire.ts";
import type { Share, VmConfig } from "../config.ts";
import { shareFileSystem } from "./share_fs.ts";

/** The virtio-fs tag of the one file-system device every VM has. */
export const MUX_TAG = "skiff";
/** Where the guest mounts it. */
export const FS_MOUNT = "/run/skiff/fs";
/** Where the root is assembled (commands chroot here). */
export const ROOT_DIR = "/run/skiff/root";
/** The overlay's layers (its tmpfs upper survives an unmount around a snapshot). */
export const LAYERS_DIR = "/run/skiff/layers";
/** How long the guest waits for the (possibly hot-plugged) file-system device. */
export const FS_WAIT_MS = 30_000;
/** How long the guest waits for the (possibly hot-plugged) NIC. */
export const NET_WAIT_MS = 30_000;

/** Guest-side addresses of the `--net` network: the stack's defaults (devices/net/config.ts). */
export const GUEST_NET = {
  address: "10.42.0.2",
  prefixLength: 24,
  gateway: "10.42.0.1",
  dns: "10.42.0.1",
} as const;

/** The mux entry name of a share: its tag (unique per VM). */
function entryName(share: Share): string {
  return share.tag;
}

/** The shares of `config`, root first. */
export function sharesOf(config: VmConfig): Share[] {
  return [...(config.root ? [config.root] : []), ...config.volumes];
}

/**
 * Builds the share back-ends of `config` and attaches them to `mux`; returns
 * the function that detaches and closes them (after the VM, or before the
 * next session).
 */
export function attachShares(mux: ShareMux, config: VmConfig): () => void {
  const attached: { name: string; fs: FileSystem & { close?(): void } }[] = [];
  try {
    for (const share of sharesOf(config)) {
      const fs = shareFileSystem(share);
      mux.attach(entryName(share), fs);
      attached.push({ name: entryName(share), fs });
    }
  } catch (e) {
    for (const a of attached) mux.detach(a.name);
    for (const a of attached) a.fs.close?.();
    throw e;
  }
  return () => {
    for (const a of attached) mux.detach(a.name);
    for (const a of attached) a.fs.close?.();
  };
}

/** The directory commands chroot into: the assembled root, or "" (the initramfs) without one. */
export function rootDirOf(config: VmConfig): string {
  return config.root ? ROOT_DIR : "";
}

/**
 * The SETUP request that mounts `config`'s shares, sets the host name,
 * network and clock, and writes {@link sessionFiles} — one round trip. The
 * root is an overlay: the root share read-only below a tmpfs upper in
 * {@link LAYERS_DIR} (so /tmp, /run and every other write live in guest RAM),
 * the guest's /dev, /proc and /sys bound in. The files are written into the
 * upper before anything waits for the share device. `resume`:
 * the VM was captured with {@link sessionTeardown} and restored, so the
 * upper it wrote before is still there and is mounted again, not replaced.
 */
export function sessionSetup(
  config: VmConfig,
  o: { clockMs?: number; resume?: boolean } = {},
): SetupSpec {
  const mounts: MountSpec[] = [];
  const root = rootDirOf(config);
  const lower = `${LAYERS_DIR}/lower`, rw = `${LAYERS_DIR}/rw`;
  // The files go straight into the overlay's fresh upper, before the overlay
  // and the share device it needs: they are written while the hot-plugged
  // device is still being probed, and no copy-up of their directories goes
  // through FUSE. A resumed VM's upper has them already (and whatever the
  // user changed since).
  const files = config.root && !o.resume
    ? sessionFiles(config).map((f) => ({
      ...f,
      path: `${rw}/upper${f.path}`,
      mode: 0o644,
      replace: true,
    }))
    : [];
  if (config.root && !o.resume) {
    mounts.push(
      { source: "tmpfs", target: rw, fsType: "tmpfs", data: "mode=0755" },
      { target: `${rw}/upper`, mkdirOnly: true },
      { target: `${rw}/work`, mkdirOnly: true },
      // The files' directories; in the merged root they show the lower's
      // entries too (an upper directory without the opaque xattr merges),
      // with the upper's attributes (root, 0755, made now) where a copy-up
      // would have kept the lower's.
      ...[...new Set(files.map((f) => f.path.slice(0, f.path.lastIndexOf("/"))))]
        .map((target) => ({ target, mkdirOnly: true })),
    );
  }
  const filesAfterMount = mounts.length;
  if (config.root || config.volumes.length > 0) {
    mounts.push({ source: MUX_TAG, target: FS_MOUNT, fsType: "virtiofs", waitMs: FS_WAIT_MS });
  }
  if (config.root) {
    mounts.push(
      { source: `${FS_MOUNT}/${entryName(config.root)}`, target: lower, flags: MS.BIND },
      {
        source: "overlay",
        target: ROOT_DIR,
        fsType: "overlay",
        data: `lowerdir=${lower},upperdir=${rw}/upper,workdir=${rw}/work`,
      },
      ...["/dev", "/proc", "/sys"].map((p) => ({
        source: p,
        target: `${ROOT_DIR}${p}`,
        flags: MS.BIND | MS.REC,
      })),
    );
  }
  for (const v of config.volumes) {
    const target = `${root}${v.guestPath}`;
    mounts.push({ source: `${FS_MOUNT}/${entryName(v)}`, target, flags: MS.BIND });
    if (v.readOnly) {
      // A bind mount takes MS_RDONLY only on a remount (mount(2)).
      mounts.push({ target, flags: MS.BIND | MS.REMOUNT | MS.RDONLY });
    }
  }
  return {
    mounts,
    files,
    filesAfterMount,
    hostname: config.hostname,
    net: config.net
      ? {
        interface: "eth0",
        address: GUEST_NET.address,
        prefixLength: GUEST_NET.prefixLength,
        gateway: GUEST_NET.gateway,
        waitMs: NET_WAIT_MS,
      }
      : null,
    clockMs: o.clockMs ?? Date.now(),
  };
}

/**
 * The SETUP request that lets go of the session's file systems before a
 * running VM is captured (its file-system device is unplugged then): the
 * root and everything mounted in it, the lower layer, the share device —
 * lazily, as `umount -l`. The overlay's upper (guest RAM) stays for
 * {@link sessionSetup}'s `resume`.
 */
export function sessionTeardown(): SetupSpec {
  return {
    mounts: [ROOT_DIR, `${LAYERS_DIR}/lower`, FS_MOUNT].map((target) => ({ target, umount: true })),
  };
}

/**
 * Files {@link sessionSetup} writes into the root (mode 0644, a symlink there
 * replaced): `/etc/hosts` (the host name resolves) and, with the network,
 * `/etc/resolv.conf` (the stack's DNS). Nothing without a root share: the
 * initramfs has no /etc to speak of.
 */
export function sessionFiles(config: VmConfig): { path: string; content: string }[] {
  if (!config.root) return [];
  const address = config.net ? GUEST_NET.address : "127.0.1.1";
  const files = [{
    path: "/etc/hosts",
    content: `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n` +
      `${address}\t${config.hostname}\n`,
  }];
  if (config.net) {
    files.push({ path: "/etc/resolv.conf", content: `nameserver ${GUEST_NET.dns}\n` });
  }
  return files;
}
