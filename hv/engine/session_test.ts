import { deepStrictEqual, strictEqual } from "node:assert/strict";
import type { VmConfig } from "../config.ts";
import { FS_MOUNT, ROOT_DIR, sessionSetup } from "./session.ts";

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

Deno.test("sessionSetup: /etc/hosts (and with --net resolv.conf) go into the root with the SETUP", () => {
  const s = sessionSetup(base, { clockMs: 1 });
  strictEqual(s.filesRoot, ROOT_DIR);
  deepStrictEqual(s.files, [{
    path: "/etc/hosts",
    content: "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n",
    mode: 0o644,
    replace: true,
  }]);
  const net = sessionSetup({ ...base, net: { hostLoopback: false, publish: [] } });
  deepStrictEqual(net.files?.map((f) => [f.path, f.content]), [
    [
      "/etc/hosts",
      "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.42.0.2\tbox\n",
    ],
    ["/etc/resolv.conf", "nameserver 10.42.0.1\n"],
  ]);
  // The files come after the mounts in the agent (AGENT.md): the root is mounted by then.
  strictEqual(s.mounts?.some((m) => m.target === ROOT_DIR && m.fsType === "overlay"), true);
});

Deno.test("sessionSetup: no files on a resume (the upper keeps them) or without a root", () => {
  strictEqual(sessionSetup(base, { resume: true }).files?.length, 0);
  const volumeOnly = sessionSetup({
    ...base,
    root: null,
    volumes: [{ tag: "v0", hostPath: "/tmp", guestPath: "/data", readOnly: false }],
  });
  strictEqual(volumeOnly.files?.length, 0);
  strictEqual(volumeOnly.filesRoot, "");
  strictEqual(volumeOnly.mounts?.[0].target, FS_MOUNT);
});
