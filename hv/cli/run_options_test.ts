import { deepStrictEqual, match, strictEqual, throws } from "node:assert/strict";
import { ConfigError } from "../errors.ts";
import { GUEST_PATH } from "../config.ts";
import {
  flagNumber,
  MAX_TIMEOUT_S,
  parseMemory,
  parseNet,
  parseTimeout,
  parseVolume,
  parseVolumes,
  runConfig,
} from "./run_options.ts";
import { commandHelpAsked, main, parseFlags, splitCommand } from "../../main.ts";

/** Runs main(args) with console.log/error captured. */
async function captured(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const code = await main(args);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

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
    [{ memory: "32" }, /^--memory 32: expected a whole number of MiB from 128 to 65536$/],
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

Deno.test("CLI: a negative number is the option's value, and its range error is one line", async () => {
  const str = { cpus: { type: "string" }, verbose: { type: "boolean" } } as const;
  strictEqual(parseFlags(["--cpus", "-1"], str).values.cpus, "-1");
  strictEqual(parseFlags(["--cpus", "-.5"], str).values.cpus, "-.5");
  // After --, nothing is joined (fuse takes positionals there).
  deepStrictEqual(
    parseFlags(["--", "--cpus", "-1"], str, true).positionals,
    ["--cpus", "-1"],
  );
  const cases: [string[], string][] = [
    [
      ["run", "--cpus", "-1", "--", "true"],
      "skiff run: --cpus -1: expected a whole number from 1 to 255",
    ],
    [
      ["run", "--cpus=-1", "--", "true"],
      "skiff run: --cpus -1: expected a whole number from 1 to 255",
    ],
    [
      ["run", "--memory", "-5", "--", "true"],
      "skiff run: --memory -5: expected a whole number of MiB from 128 to 65536",
    ],
    [
      ["run", "--timeout", "-1", "--", "true"],
      `skiff run: --timeout -1: expected a positive number of seconds up to ${MAX_TIMEOUT_S} (about 24.8 days)`,
    ],
    [
      ["boot", "--memory", "-5"],
      "skiff boot: --memory -5: expected a whole number of MiB from 128 to 65536",
    ],
    [
      ["boot", "--console-log", "/dev/null", "--timeout", "-1"],
      `skiff boot: --timeout -1: expected a positive number of seconds up to ${MAX_TIMEOUT_S} (about 24.8 days)`,
    ],
    [
      ["boot", "--console-log", "/dev/null", "--timeout", "5", "--cpus", "-2"],
      "skiff boot: --cpus -2: expected a whole number from 1 to 255",
    ],
    [
      ["net", "tap", "--netns", "x", "--mtu", "-5"],
      "skiff net: --mtu -5: expected a whole number from 576 to 65535",
    ],
  ];
  for (const [args, line] of cases) {
    const r = await captured(args);
    deepStrictEqual([r.code, r.err], [125, line], args.join(" "));
  }
});

Deno.test("CLI: parseArgs errors are one line with balanced quotes", async () => {
  const fuse = await captured(["fuse", "mount", "A", "B", "--bogus"]);
  strictEqual(fuse.code, 125);
  strictEqual(fuse.err, "skiff fuse: unknown option '--bogus' (see skiff fuse --help)");
  const run = await captured(["run", "--bogus", "--", "true"]);
  strictEqual(run.err, "skiff run: unknown option '--bogus' (see skiff run --help)");
  const dash = await captured(["run", "--hostname", "-x", "--", "true"]);
  strictEqual(
    dash.err,
    "skiff run: --hostname needs a value (one that starts with '-' is written --hostname=-VALUE)" +
      " (see skiff run --help)",
  );
  for (const r of [fuse, run, dash]) strictEqual(r.err.includes("\n"), false, r.err);
});

Deno.test("parseTimeout: at most setTimeout's limit (2147483 s), named in the error", () => {
  strictEqual(MAX_TIMEOUT_S, 2147483);
  strictEqual(parseTimeout("2147483"), 2147483);
  for (const bad of ["2147484", "2147483.5", "1e9", "0", "-1"]) {
    throws(
      () => parseTimeout(bad),
      (e: unknown) =>
        e instanceof ConfigError &&
        (e as Error).message ===
          `--timeout ${bad}: expected a positive number of seconds up to 2147483 (about 24.8 days)`,
    );
  }
});

Deno.test("parseMemory: 128 to 65536 MiB with one message below, 64 with --kernel", () => {
  strictEqual(parseMemory("128"), 128);
  strictEqual(parseMemory("65536"), 65536);
  strictEqual(parseMemory(undefined), undefined);
  for (const bad of ["0", "1", "16", "64", "127", "65537", "1.5", "-5"]) {
    throws(
      () => parseMemory(bad),
      (e: unknown) =>
        e instanceof ConfigError &&
        (e as Error).message ===
          `--memory ${bad}: expected a whole number of MiB from 128 to 65536`,
    );
  }
  // A kernel of one's own (the kvm tests' stand-in kernels) keeps the engines' 64 MiB floor.
  strictEqual(parseMemory("64", true), 64);
  throws(() => parseMemory("63", true), /--memory 63: .* from 64 to 65536 \(with --kernel\)$/);
  const base = { argv: ["true"], cwd: "/", hostEnv: {} };
  strictEqual(runConfig({ ...base, memory: "128" }).config.memoryMiB, 128);
  strictEqual(runConfig({ ...base, memory: "64", kernel: "/k" }).config.memoryMiB, 64);
  throws(() => runConfig({ ...base, memory: "64" }), /from 128 to 65536$/);
});

Deno.test("CLI: -h is --help for each command, but not after the guest command", async () => {
  strictEqual(commandHelpAsked("run", ["-h"]), true);
  strictEqual(commandHelpAsked("run", ["--memory", "256", "-h"]), true);
  strictEqual(commandHelpAsked("run", ["--", "ls", "-h"]), false);
  strictEqual(commandHelpAsked("run", ["ls", "-h"]), false);
  strictEqual(commandHelpAsked("initramfs", ["build", "--out", "x", "--", "ls", "-h"]), false);
  for (const args of [["run", "-h"], ["boot", "-h"], ["fuse", "-h"], ["image", "pull", "-h"]]) {
    const r = await captured(args);
    strictEqual(r.code, 0, r.err);
    match(r.out, new RegExp(`^Usage: skiff ${args[0]} `));
  }
});

Deno.test("CLI: run --help and boot --help name every option they take", async () => {
  const run = (await captured(["run", "--help"])).out;
  for (
    const s of ["--snapshot ", "--no-snapshot", "--net[=on|host-loopback]", ":ro|:rw", "2147483"]
  ) {
    strictEqual(run.includes(s), true, s);
  }
  match(run, /--memory MiB +guest RAM, 128 to 65536/);
  const boot = (await captured(["boot", "--help"])).out;
  for (const s of ["--verbose", "--kernel", "--modules", "--cmdline-extra", ":ro|:rw", "2147483"]) {
    strictEqual(boot.includes(s), true, s);
  }
  match(boot, /--memory 128 to 65536 MiB/);
});

Deno.test("CLI: an empty path or name is a usage error before anything starts", async () => {
  const cases: [string[], string][] = [
    [["run", "--kernel", "", "--", "true"], "--kernel '': expected PATH"],
    [["run", "--modules", "", "--", "true"], "--modules '': expected DIR"],
    [["run", "--workdir", "", "--", "true"], "--workdir '': expected DIR"],
    [["run", "--user", "", "--", "true"], "--user '': expected NAME|UID[:GROUP|GID]"],
    [["run", "--image=", "--", "true"], "--image '': expected REF"],
    [["boot", "--kernel", ""], "--kernel '': expected PATH"],
    [["boot", "--console-log", "", "--timeout", "1"], "--console-log '': expected FILE"],
    [["initramfs", "build", "--out", "/nonexistent/x", "--cwd", ""], "--cwd '': expected DIR"],
    [
      ["initramfs", "build", "--out", "/nonexistent/x", "--root-tag="],
      "--root-tag '': expected TAG",
    ],
  ];
  for (const [args, what] of cases) {
    const r = await captured(args);
    const cmd = args[0];
    deepStrictEqual(
      [r.code, r.err],
      [125, `skiff ${cmd}: ${what}, not an empty value (see skiff ${cmd} --help)`],
      args.join(" "),
    );
  }
});

Deno.test("CLI: --hostname is checked before boot with the guest's rule (1 to 64 bytes)", async () => {
  const base = { argv: ["true"], cwd: "/", hostEnv: {} };
  strictEqual(runConfig({ ...base }).config.hostname, "skiff");
  strictEqual(runConfig({ ...base, hostname: "h".repeat(64) }).config.hostname, "h".repeat(64));
  throws(
    () => runConfig({ ...base, hostname: "" }),
    /^ConfigError: --hostname '': expected 1 to 64 bytes$/,
  );
  // Bytes, not characters: 22 three-byte characters are 66 bytes.
  throws(
    () => runConfig({ ...base, hostname: "€".repeat(22) }),
    /expected 1 to 64 bytes \(it has 66\)$/,
  );
  const run = await captured(["run", "--hostname", "", "--", "true"]);
  deepStrictEqual([run.code, run.err], [125, "skiff run: --hostname '': expected 1 to 64 bytes"]);
  const initramfs = await captured([
    "initramfs",
    "build",
    "--out",
    "/nonexistent/x",
    "--hostname=",
  ]);
  deepStrictEqual(
    [initramfs.code, initramfs.err],
    [125, "skiff initramfs: --hostname '': expected 1 to 64 bytes"],
  );
});

Deno.test("parseVolumes: two volumes at one guest path are refused, naming both", () => {
  const dir = Deno.makeTempDirSync({ prefix: "skiff-volumes-test-" });
  try {
    for (
      const [a, b] of [[`${dir}:/x`, "/tmp:/x"], [`${dir}:/x`, `${dir}:/x`], [
        "/tmp:/x",
        `${dir}:/x/:ro`,
      ]]
    ) {
      throws(
        () => parseVolumes([`${dir}:/y`, a, b], "/"),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message === `--volume ${a} and --volume ${b}: both mount at /x`,
      );
    }
    // Nested guest paths are distinct mount points.
    deepStrictEqual(parseVolumes([`${dir}:/x`, "/tmp:/x/y"], "/").map((v) => v.guestPath), [
      "/x",
      "/x/y",
    ]);
    throws(
      () => runConfig({ argv: ["true"], cwd: "/", hostEnv: {}, volume: ["/tmp:/x", `${dir}:/x`] }),
      /both mount at \/x$/,
    );
  } finally {
    Deno.removeSync(dir);
  }
});
