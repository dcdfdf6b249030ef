import { deepStrictEqual, strictEqual } from "node:assert/strict";
import {
  connectionsToAbort,
  newestMount,
  parseMountinfo,
  resolvedMountId,
  unmountAction,
} from "./own_mount.ts";

const INFO = [
  "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw",
  "40 22 0:41 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.skiff skiff:/x rw,user_id=0",
  "41 22 0:42 / /mnt rw,relatime - fuse bindfs rw",
  "43 22 0:47 / /mnt rw,nosuid,nodev - fuse.skiff skiff:/y rw,user_id=0",
  "44 22 0:48 / /mnt rw master:3 shared:7 - fuse.skiff skiff:/z rw,user_id=0",
  "garbage",
  "",
].join("\n");

Deno.test("parseMountinfo: ids, device, unescaped mount point, type; skips bad lines", () => {
  const all = parseMountinfo(INFO);
  strictEqual(all.length, 5);
  deepStrictEqual(all[1], {
    id: 40,
    parent: 22,
    dev: "0:41",
    mountpoint: "/tmp/a b",
    fstype: "fuse.skiff",
  });
});

Deno.test("newestMount: the last mount of that type at that path", () => {
  strictEqual(newestMount(INFO, "/mnt", "fuse.skiff")?.id, 44);
  strictEqual(newestMount(INFO, "/mnt", "fuse")?.id, 41);
  strictEqual(newestMount(INFO, "/nowhere", "fuse.skiff"), null);
});

Deno.test("unmountAction: unmounts only when the path leads to our own mount", () => {
  const own = newestMount(INFO, "/mnt", "fuse.skiff")!;
  strictEqual(unmountAction(INFO, own, 44), "unmount");
  // A tmpfs mounted on top: the path leads to it, so ours is left alone (and so is it).
  const covered = `${INFO}\n45 44 0:50 / /mnt rw - tmpfs t rw\n`;
  strictEqual(unmountAction(covered, own, 45), "covered");
  strictEqual(unmountAction(covered, own, null), "covered");
  // No mount id from statx (before Linux 5.8): on top unless a newer mount is at or above it.
  strictEqual(unmountAction(INFO, own, null), "unmount");
  strictEqual(unmountAction(`${INFO}\n46 22 0:51 / /srv rw - tmpfs t rw\n`, own, null), "unmount");
  strictEqual(unmountAction(`${INFO}\n47 22 0:52 / / rw - tmpfs t rw\n`, own, null), "covered");
  // Unmounted by someone else; its id reused by another mount is not ours.
  const gone = INFO.replace(/^44 .*$/m, "");
  strictEqual(unmountAction(gone, own, null), "gone");
  const reused = INFO.replace(/^44 22 0:48 /m, "44 22 0:60 ");
  strictEqual(unmountAction(reused, own, 44), "gone");
});

Deno.test("connectionsToAbort: only our own connection (our device's minor), if listed", () => {
  const own = newestMount(INFO, "/mnt", "fuse.skiff")!; // 0:48
  // Other connections (other processes, other namespaces, detached mounts) are never chosen.
  deepStrictEqual(connectionsToAbort(own, ["41", "42", "47", "48", "480", "4"]), ["48"]);
  deepStrictEqual(connectionsToAbort(own, ["41", "42"]), []);
  deepStrictEqual(connectionsToAbort(null, ["41", "48"]), []);
});

Deno.test("resolvedMountId: the id of the mount a path leads to, as in mountinfo", () => {
  const root = parseMountinfo(Deno.readTextFileSync("/proc/self/mountinfo"))
    .filter((m) => m.mountpoint === "/").at(-1);
  strictEqual(resolvedMountId("/"), root?.id ?? null);
  strictEqual(resolvedMountId("/no/such/path"), null);
});
