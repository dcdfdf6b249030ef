import { deepStrictEqual, match, strictEqual, throws } from "node:assert/strict";
import { ConfigError } from "../errors.ts";
import { GUEST_PATH } from "../config.ts";
import { parseNet, parseTimeout, parseVolume, runConfig } from "./run_options.ts";
import { splitCommand } from "../../main.ts";

Deno.test("runConfig: defaults — host / read-only root, cwd shared read-only and used as workdir", () => {
  const { config, workload } = runConfig({ argv: ["uname", "-a"], cwd: "/tmp", hostEnv: {} });
  strictEqual(config.root?.hostPath, "/");
  strictEqual(config.root?.readOnly, true);
  strictEqual(config.root?.stayOnDevice, true);
  deepStrictEqual(config.root?.hide, ["/home", "/root"]);
  deepStrictEqual(config.volumes, [
    { tag: "cwd", hostPath: "/tmp", guestPath: "/tmp", readOnly: true },
  ]);
  strictEqual(config.cpus, 1);
  strictEqual(config.memoryMiB, 512);
  strictEqual(config.hostname, "skiff");
  deepStrictEqual(workload, {
    argv: ["uname", "-a"],
    env: { PATH: GUEST_PATH, HOME: "/" },
    workdir: "/tmp",
  });
});

Deno.test("runConfig: --env, --workdir, --volume, sizes", () => {
  const share = Deno.makeTempDirSync();
  try {
    const { config, workload } = runConfig({
      argv: ["env"],
      cwd: "/",
      hostEnv: { TERM: "xterm", FROM_HOST: "h" },
      env: ["A=1", "B=x=y", "FROM_HOST", "TERM"],
      workdir: "/data",
      volume: [`${share}:/data`, `${share}:/ro:ro`],
      cpus: "2",
      memory: "1024",
    });
    deepStrictEqual(workload.env, {
      PATH: GUEST_PATH,
      HOME: "/",
      TERM: "xterm",
      A: "1",
      B: "x=y",
      FROM_HOST: "h",
    });
    strictEqual(workload.workdir, "/data");
    deepStrictEqual(config.volumes.map((v) => [v.hostPath, v.guestPath, v.readOnly]), [
      [share, "/data", false],
      [share, "/ro", true],
    ]);
    strictEqual(config.cpus, 2);
    strictEqual(config.memoryMiB, 1024);
  } finally {
    Deno.removeSync(share);
  }
});

Deno.test("runConfig: bad input is a ConfigError naming the flag and value", () => {
  const base = { argv: ["true"], cwd: "/", hostEnv: {} };
  const cases: [Partial<Parameters<typeof runConfig>[0]>, RegExp][] = [
    [{ argv: [] }, /no command given/],
    [{ cpus: "0" }, /--cpus 0/],
    [{ cpus: "two" }, /--cpus two/],
    [{ memory: "32" }, /--memory 32: at least 64 MiB/],
    [{ env: ["1X=2"] }, /--env 1X=2/],
    [{ workdir: "rel" }, /--workdir rel: must be absolute/],
    [{ volume: ["/no/such/dir:/x"] }, /host path \/no\/such\/dir does not exist/],
    [{ volume: ["/etc/hostname:/x"] }, /is not a directory/],
    [{ volume: ["/tmp:rel"] }, /must be absolute/],
    [{ volume: ["/tmp"] }, /expected HOST:GUEST/],
    [{ volume: ["/tmp:/"] }, /cannot mount over the guest's root/],
  ];
  for (const [o, re] of cases) {
    throws(() => runConfig({ ...base, ...o }), (e: unknown) => {
      strictEqual(e instanceof ConfigError, true, String(e));
      match((e as Error).message, re);
      return true;
    });
  }
  throws(() => parseTimeout("0"), /--timeout 0/);
  throws(() => parseTimeout("soon"), /--timeout soon/);
  strictEqual(parseTimeout("1.5"), 1.5);
  strictEqual(parseVolume("/tmp:/t:ro", 3, "/").tag, "vol3");
});

Deno.test("splitCommand: options end at -- or at the command", () => {
  const opts = { cpus: { type: "string" }, verbose: { type: "boolean" } } as const;
  deepStrictEqual(splitCommand(["--cpus", "2", "--", "ls", "-l"], opts).command, ["ls", "-l"]);
  deepStrictEqual(splitCommand(["--cpus", "2", "ls", "-l"], opts).command, ["ls", "-l"]);
  deepStrictEqual(splitCommand(["--verbose", "sh", "-c", "x"], opts).command, ["sh", "-c", "x"]);
  deepStrictEqual(splitCommand(["--cpus=2", "ls"], opts).values.cpus, "2");
  deepStrictEqual(splitCommand([], opts).command, []);
  throws(() => splitCommand(["--bogus", "ls"], opts), /bogus/);
});

Deno.test("parseNet: --net, --net=host-loopback, --publish; errors name the value", () => {
  strictEqual(parseNet(undefined, []), null);
  deepStrictEqual(parseNet("on", []), { hostLoopback: false, publish: [] });
  deepStrictEqual(parseNet("host-loopback", ["8080:80", "0.0.0.0:53:53/udp"]), {
    hostLoopback: true,
    publish: [
      { hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" },
      { hostIp: "0.0.0.0", hostPort: 53, guestPort: 53, protocol: "udp" },
    ],
  });
  throws(() => parseNet(undefined, ["80:80"]), /--publish needs --net/);
  throws(() => parseNet("bogus", []), /--net=bogus/);
  throws(
    () => parseNet("on", ["99999:1"]),
    (e: unknown) => e instanceof ConfigError && /99999/.test(String(e)),
  );
});
