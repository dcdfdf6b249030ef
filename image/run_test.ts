import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { imageCommand, type PreparedImage, resolveUser } from "./run.ts";

const PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
const GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nmore:x:2001:app\n";

function img(d: Partial<PreparedImage["defaults"]> = {}): PreparedImage {
  return {
    name: "test/img",
    manifestDigest: `sha256:${"0".repeat(64)}`,
    layers: [],
    storeRoot: "/",
    defaults: { Entrypoint: null, Cmd: ["/bin/sh"], Env: [], WorkingDir: "", User: "", ...d },
    passwd: PASSWD,
    group: GROUP,
  };
}

Deno.test("image run: user NAME, UID, NAME:GROUP, UID:GID; groups from /etc/group", () => {
  deepStrictEqual(resolveUser("app", PASSWD, GROUP), {
    uid: 1000,
    gid: 1000,
    groups: [1000, 2000, 2001],
    home: "/home/app",
  });
  deepStrictEqual(resolveUser("1000", PASSWD, GROUP).groups, [1000, 2000, 2001]);
  deepStrictEqual(resolveUser("app:extra", PASSWD, GROUP).gid, 2000);
  deepStrictEqual(resolveUser("4242:77", PASSWD, GROUP), {
    uid: 4242,
    gid: 77,
    groups: [77],
    home: "/",
  });
  deepStrictEqual(resolveUser("", PASSWD, GROUP), { uid: 0, gid: 0, groups: [0], home: "/root" });
  throws(
    () => resolveUser("nobody", PASSWD, GROUP, "img"),
    /user 'nobody' is not in img's \/etc\/passwd/,
  );
  throws(() => resolveUser("app:nogroup", PASSWD, GROUP), /group 'nogroup' is not in/);
  throws(() => resolveUser(":1", PASSWD, GROUP), /empty user/);
});

Deno.test("image run: Entrypoint + Cmd, Env with PATH/HOME defaults, WorkingDir, User", () => {
  const c = imageCommand(
    img({
      Entrypoint: ["/bin/ep"],
      Cmd: ["def"],
      Env: ["A=1", "B=x=y"],
      WorkingDir: "/srv",
      User: "app",
    }),
    { argv: [] },
  );
  deepStrictEqual(c.argv, ["/bin/ep", "def"]);
  deepStrictEqual(c.env, {
    A: "1",
    B: "x=y",
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: "/home/app",
  });
  strictEqual(c.workdir, "/srv");
  deepStrictEqual(c.user, { uid: 1000, gid: 1000, groups: [1000, 2000, 2001] });
  const o = imageCommand(img({ Entrypoint: ["/bin/ep"], User: "app" }), {
    argv: ["mine"],
    workdir: "/tmp",
    user: "0:0",
  });
  deepStrictEqual([o.argv, o.workdir, o.user], [["/bin/ep", "mine"], "/tmp", {
    uid: 0,
    gid: 0,
    groups: [0],
  }]);
  // Root by default: the init's own credentials (no setuid dance).
  strictEqual(imageCommand(img(), { argv: [] }).user, null);
  throws(
    () => imageCommand(img({ Cmd: null }), { argv: [] }),
    /has no Entrypoint or Cmd: give a command/,
  );
});
