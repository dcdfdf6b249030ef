/**
 * L3: an image pulled into the store and served by {@link LayeredFs} through
 * /dev/fuse with skiff's FUSE server, compared entry by entry with what
 * `umoci unpack` (as root) makes of the same OCI image: names, types, modes
 * with setuid bits, owners, sizes, times, symlink targets, device numbers,
 * hard links, contents — whiteouts and the opaque directory applied. Then
 * real tools (find, diff, cat) on the mount.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { mountDevFuse } from "../devices/fuse/dev_fuse.ts";
import { parseReference } from "./reference.ts";
import { pullImage } from "./pull.ts";
import { ImageStore } from "./store.ts";
import { buildTestImage, imageTest, run, TEST_IMAGE } from "./testing/images.ts";

interface Seen {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number | null;
  mtime: number | null;
  link: string | null;
  rdev: number | null;
  content: string | null;
}

/** Every entry under `root`, by relative path, as lstat (no link followed) sees it. */
function survey(root: string): { entries: Map<string, Seen>; inodes: Map<string, number> } {
  const entries = new Map<string, Seen>();
  const inodes = new Map<string, number>();
  const walk = (rel: string) => {
    const path = rel ? `${root}/${rel}` : root;
    const st = Deno.lstatSync(path);
    const type = st.isFile
      ? "file"
      : st.isDirectory
      ? "dir"
      : st.isSymlink
      ? "symlink"
      : st.isCharDevice
      ? "char"
      : st.isBlockDevice
      ? "block"
      : st.isFifo
      ? "fifo"
      : "other";
    entries.set(rel || "/", {
      type,
      mode: st.mode! & 0o7777,
      uid: st.uid!,
      gid: st.gid!,
      size: st.isFile ? st.size : null,
      // Directory times depend on the order an unpacker writes in: files and links only.
      mtime: st.isFile || st.isSymlink ? Math.floor(st.mtime!.getTime() / 1000) : null,
      link: st.isSymlink ? Deno.readLinkSync(path) : null,
      rdev: st.isCharDevice || st.isBlockDevice ? st.rdev : null,
      content: st.isFile
        ? new TextDecoder("latin1").decode(Deno.readFileSync(path)).slice(0, 64) + `#${st.size}`
        : null,
    });
    inodes.set(rel || "/", Number(st.ino));
    if (st.isDirectory) {
      for (const e of [...Deno.readDirSync(path)].sort((a, b) => (a.name < b.name ? -1 : 1))) {
        walk(rel ? `${rel}/${e.name}` : e.name);
      }
    }
  };
  walk("");
  return { entries, inodes };
}

imageTest("layered FS on /dev/fuse matches umoci unpack of the same image", ["fuse"], async () => {
  const base = await Deno.makeTempDir({ prefix: "skiff-layered-l3-" });
  let mount: Awaited<ReturnType<typeof mountDevFuse>> | null = null;
  try {
    const layout = await buildTestImage(base);
    const store = new ImageStore(`${base}/store`);
    const { record } = await pullImage(parseReference(`oci:${layout}:${TEST_IMAGE.tag}`), {
      store,
      progress: null,
    });
    await run("umoci", ["unpack", "--image", `${layout}:${TEST_IMAGE.tag}`, `${base}/umoci`]);
    await Deno.mkdir(`${base}/mnt`);
    mount = await mountDevFuse({
      hostDir: "image",
      mountpoint: `${base}/mnt`,
      layers: record.layers.map((l) => store.layerDir(l.diffId)),
    });
    const ref = survey(`${base}/umoci/rootfs`);
    const got = survey(`${base}/mnt`);
    deepStrictEqual([...got.entries.keys()], [...ref.entries.keys()], "the same names");
    for (const [path, want] of ref.entries) {
      deepStrictEqual(got.entries.get(path), want, path);
    }
    // Whiteouts applied, the opaque directory hides the lower files; no .wh. names shown.
    ok(!got.entries.has("etc/gone"));
    deepStrictEqual([...got.entries.keys()].filter((p) => p.startsWith("opq/")), ["opq/new"]);
    ok(![...got.entries.keys()].some((p) => p.includes(".wh.")));
    ok(got.entries.has("etc/added"));
    // Setuid kept as metadata; devices and owners from the tar headers.
    strictEqual(got.entries.get("usr/bin/setuid-tool")!.mode, 0o4755);
    deepStrictEqual([got.entries.get("srv/data.txt")!.uid, got.entries.get("home/app")!.gid], [
      1000,
      1000,
    ]);
    strictEqual(got.entries.get("dev/null")!.type, "char");
    // The hard link is one inode on the mount too.
    strictEqual(got.inodes.get("bin/busybox"), got.inodes.get("bin/busybox-hard"));
    // Real tools agree.
    const diff = await new Deno.Command("diff", {
      args: ["-r", "--no-dereference", `${base}/umoci/rootfs`, `${base}/mnt`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    // diff cannot compare FIFOs and devices and says so; anything else is a difference.
    const lines = new TextDecoder().decode(diff.stdout).split("\n").filter((l) =>
      l !== "" && !/^File .* is a (fifo|character special file) while file .* is a \1$/.test(l)
    );
    deepStrictEqual(lines, [], "diff -r");
    strictEqual(
      (await run("find", [`${base}/mnt`])).split("\n").length,
      (await run("find", [`${base}/umoci/rootfs`])).split("\n").length,
    );
    strictEqual(await Deno.readTextFile(`${base}/mnt/etc/os-release`), TEST_IMAGE.osRelease);
    // Read-only.
    let err = "";
    try {
      await Deno.writeTextFile(`${base}/mnt/etc/new`, "x");
    } catch (e) {
      err = (e as Error).message;
    }
    ok(/Read-only file system/.test(err), err);
  } finally {
    await mount?.close();
    await Deno.remove(base, { recursive: true });
  }
});
