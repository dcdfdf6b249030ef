import { strictEqual } from "node:assert/strict";
import { mountDevice, setMountReadahead } from "./readahead.ts";

const INFO = [
  "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw",
  "40 22 0:41 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.skiff skiff:/x rw,user_id=0",
  "41 22 0:42 / /mnt rw,relatime - fuse bindfs rw",
  "43 22 0:47 / /mnt rw,nosuid,nodev - fuse.skiff skiff:/y rw,user_id=0",
  "44 22 0:48 / /mnt rw master:3 shared:7 - fuse.skiff skiff:/z rw,user_id=0",
  "garbage",
  "",
].join("\n");

Deno.test("mountDevice: unescapes the mount point, matches the type, takes the top mount", () => {
  strictEqual(mountDevice(INFO, "/tmp/a b", "fuse.skiff"), "0:41");
  strictEqual(mountDevice(INFO, "/mnt", "fuse"), "0:42");
  // Two skiff mounts stacked on /mnt (the second with two optional fields): the later one.
  strictEqual(mountDevice(INFO, "/mnt", "fuse.skiff"), "0:48");
  strictEqual(mountDevice(INFO, "/tmp/a\\040b", "fuse.skiff"), null);
  strictEqual(mountDevice(INFO, "/nowhere", "fuse.skiff"), null);
});

Deno.test("setMountReadahead: reports a missing mount or a bad size instead of throwing", () => {
  strictEqual(
    setMountReadahead("/no/such/mount", "fuse.skiff", 1024),
    "no fuse.skiff mount at /no/such/mount in /proc/self/mountinfo",
  );
  strictEqual(setMountReadahead("/", "fuse.skiff", 1.5), "readahead 1.5 KiB is not a whole number");
});
