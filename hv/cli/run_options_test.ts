import { deepStrictEqual, match, strictEqual, throws } from "node:assert/strict";
import { ConfigError } from "../errors.ts";
import { GUEST_PATH } from "../config.ts";
import { flagNumber, parseNet, parseTimeout, parseVolume, runConfig } from "./run_options.ts";
import { commandHelpAsked, main, splitCommand } from "../../main.ts";

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
  // --net alone never takes the next argument as its value.
  const net = { ...opts, net: { type: "string" } } as const;
  const r = splitCommand(["--net", "curl", "-s", "x"], net, { net: "on" });
  deepStrictEqual([r.values.net, r.command], ["on", ["curl", "-s", "x"]]);
  deepStrictEqual(splitCommand(["--", "--help"], opts).command, ["--help"]);
});

Deno.test("CLI: arguments after the command word belong to the command", async () => {
  // run's own --help, wherever among run's options.
  strictEqual(commandHelpAsked("run", ["--help"]), true);
  strictEqual(commandHelpAsked("run", ["--memory", "256", "--help"]), true);
  strictEqual(commandHelpAsked("run", ["--net", "--help"]), true);
  // --help after the command (or after --) is the command's.
  strictEqual(commandHelpAsked("run", ["ls", "--help"]), false);
  strictEqual(commandHelpAsked("run", ["--", "ls", "--help"]), false);
  strictEqual(commandHelpAsked("run", ["--memory", "256", "ls", "-l", "--help"]), false);
  strictEqual(commandHelpAsked("initramfs", ["build", "--out", "x", "--", "ls", "--help"]), false);
  strictEqual(commandHelpAsked("initramfs", ["build", "--help"]), true);
  strictEqual(commandHelpAsked("kernel", ["fetch", "--help"]), true);
  strictEqual(commandHelpAsked("setup", ["--help"]), true);
  const split = splitCommand(["--memory", "256", "ls", "-l", "--help"], {
    memory: { type: "string" },
  });
  deepStrictEqual([split.values.memory, split.command], ["256", ["ls", "-l", "--help"]]);

  // Through main(): run's help is printed; a command's --help reaches the command
  // (here it fails on --memory before anything boots, proving run parsed it).
  const out: string[] = [];
  const err: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    strictEqual(await main(["run", "--help"]), 0);
    strictEqual(await main(["run", "--memory", "32", "ls", "--help"]), 125);
  } finally {
    console.log = log;
    console.error = error;
  }
  match(out.join("\n"), /^Usage: skiff run /);
  strictEqual(out.length, 1, "help printed once");
  match(err.join("\n"), /--memory 32/);
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

Deno.test("flagNumber: the one numeric flag parser — whole or fractional, in range, named", () => {
  strictEqual(flagNumber("--cpus", undefined, { min: 1, max: 4 }), undefined);
  strictEqual(flagNumber("--cpus", "4", { min: 1, max: 4 }), 4);
  strictEqual(flagNumber("--timeout", "0.5", { min: 0.001, max: Infinity, fraction: true }), 0.5);
  for (const bad of ["0", "5", "1.5", "-1", "1e2", "", " 2", "0x2"]) {
    throws(
      () => flagNumber("--cpus", bad, { min: 1, max: 4 }),
      (e: unknown) =>
        e instanceof ConfigError &&
        (e as Error).message === `--cpus ${bad}: expected a whole number from 1 to 4`,
    );
  }
  throws(
    () => flagNumber("--timeout", "soon", { min: 0.001, max: Infinity, fraction: true }),
    /--timeout soon: expected a positive number$/,
  );
});
