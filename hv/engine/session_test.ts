import { deepStrictEqual, strictEqual } from "node:assert/strict";
import type { VmConfig } from "../config.ts";
import { FS_MOUNT, LAYERS_DIR, ROOT_DIR, sessionSetup } from "./session.ts";

const base: VmConfig = {
  cpus: 1,
  memoryMiB: 512,
  cmdlineExtra: "",
  root: { tag: "root", hostPath: "/", guestPath: "/", readOnly: true },
  volumes: [],
  net: null,
  hostname: "box",
  verbose: false,
};

const UPPER = `${LAYERS_DIR}/rw/upper`;

Deno.test("sessionSetup: /etc/hosts (and with --net resolv.conf) go into the overlay's upper with the SETUP", () => {
  const s = sessionSetup(base, { clockMs: 1 });
  strictEqual(s.filesRoot, undefined);
  deepStrictEqual(s.files, [{
    path: `${UPPER}/etc/hosts`,
    content: "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n",
    mode: 0o644,
    replace: true,
  }]);
  const net = sessionSetup({ ...base, net: { hostLoopback: false, publish: [] } });
  deepStrictEqual(net.files?.map((f) => [f.path, f.content]), [
    [
      `${UPPER}/etc/hosts`,
      "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.42.0.2\tbox\n",
    ],
    [`${UPPER}/etc/resolv.conf`, "nameserver 10.42.0.1\n"],
  ]);
  // Written once the upper and its /etc exist, before the wait for the share
  // device and before the overlay is mounted over the upper.
  const targets = s.mounts!.map((m) => m.target);
  const at = s.filesAfterMount!;
  strictEqual(targets.indexOf(`${UPPER}/etc`) < at, true);
  strictEqual(targets.indexOf(FS_MOUNT), at);
  strictEqual(targets.indexOf(ROOT_DIR) > at, true);
  strictEqual(s.mounts![at].waitMs! > 0, true);
});

Deno.test("sessionSetup: no files on a resume (the upper keeps them) or without a root", () => {
  strictEqual(sessionSetup(base, { resume: true }).files?.length, 0);
  const volumeOnly = sessionSetup({
    ...base,
    root: null,
    volumes: [{ tag: "v0", hostPath: "/tmp", guestPath: "/data", readOnly: false }],
  });
  strictEqual(volumeOnly.files?.length, 0);
  strictEqual(volumeOnly.mounts?.[0].target, FS_MOUNT);
});
