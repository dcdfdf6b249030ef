import { doesNotThrow, throws } from "node:assert/strict";
import { join } from "node:path";
import { checkWorkdir } from "./workdir_check.ts";
import { defaultRootShare, type Share } from "../config.ts";
import { ConfigError } from "../errors.ts";

Deno.test("checkWorkdir: host directories, volumes, hidden paths, files and missing ones", async () => {
  const host = await Deno.makeTempDir({ prefix: "skiff-workdir-test-" });
  try {
    Deno.mkdirSync(join(host, "sub"));
    Deno.writeTextFileSync(join(host, "file"), "");
    const root = defaultRootShare();
    const vol: Share = { tag: "vol0", hostPath: host, guestPath: "/work", readOnly: false };
    const ok = (w: string) => doesNotThrow(() => checkWorkdir(w, root, [vol]), w);
    const bad = (w: string, why: RegExp) =>
      throws(
        () => checkWorkdir(w, root, [vol]),
        (e) => e instanceof ConfigError && why.test(e.message),
        w,
      );
    ok("/");
    ok("/etc");
    ok("/work");
    ok("/work/sub");
    ok(host); // the host path itself is visible through the root too
    bad(
      "/work/missing",
      /^--workdir \/work\/missing: no such directory \(.*\/missing on the host, in a shared volume\)$/,
    );
    bad("/work/file", /no such directory/);
    bad(
      "/no/such/dir",
      /^--workdir \/no\/such\/dir: no such directory \(the guest's root is the host's \/\)$/,
    );
    bad("/etc/passwd", /no such directory/);
    bad("/home", /^--workdir \/home: \/home is not shared into the guest/);
    bad("/root/x", /\/root is not shared into the guest/);
    // A volume's guest path written with a trailing slash is the same mount point.
    const slash: Share = { ...vol, guestPath: "/work/" };
    doesNotThrow(() => checkWorkdir("/work/sub", root, [slash]));
    doesNotThrow(() => checkWorkdir("/work", root, [slash]));
    throws(() => checkWorkdir("/work/missing/", root, [slash]), /in a shared volume/);
    // A volume may bring back a hidden path.
    const home: Share = { tag: "vol1", hostPath: host, guestPath: "/home/me", readOnly: true };
    doesNotThrow(() => checkWorkdir("/home/me/sub", root, [home]));
  } finally {
    await Deno.remove(host, { recursive: true });
  }
});
