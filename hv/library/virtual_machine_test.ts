/** The library's option checks (before any boot) and its promise contract: no VM needed. */
import { deepStrictEqual, rejects, strictEqual } from "node:assert/strict";
import { checkOptions, VirtualMachine, type VirtualMachineOptions } from "./virtual_machine.ts";
import type { BootOptions, Engine, RunningVm } from "../engine/types.ts";
import type { VmConfig } from "../config.ts";
import { ConfigError } from "../errors.ts";

/** An engine that records its boots and hands out `vm` (or fails if none). */
function fakeEngine(vm?: Partial<RunningVm>) {
  const boots: { config: VmConfig; options?: BootOptions }[] = [];
  const engine: Engine = {
    name: "qemu",
    boot(config, options) {
      boots.push({ config, options });
      if (!vm) return Promise.reject(new Error("the fake engine booted"));
      return Promise.resolve({ engine: "qemu", config, ...vm } as RunningVm);
    },
    restore() {
      return Promise.reject(new Error("the fake engine restored"));
    },
  };
  return { engine, boots };
}

/** Boots with `options` on a fake engine: must be refused with exactly `message`, before any boot. */
async function refused(options: unknown, message: string | RegExp) {
  const { engine, boots } = fakeEngine();
  await rejects(
    VirtualMachine.boot({ ...(options as VirtualMachineOptions), engineInstance: engine }),
    (e: unknown) => {
      strictEqual(e instanceof ConfigError, true, `${e}`);
      const m = (e as Error).message;
      if (typeof message === "string") strictEqual(m, message);
      else strictEqual(message.test(m), true, m);
      strictEqual(m.includes("\n"), false, "one line");
      return true;
    },
  );
  strictEqual(boots.length, 0, "nothing booted");
}

Deno.test("boot: cpus outside 1..255 or not a whole number is a ConfigError before boot", async () => {
  for (
    const [v, shown] of [[0, "0"], [-1, "-1"], [1.5, "1.5"], [NaN, "NaN"], [1000, "1000"], [
      "2",
      '"2"',
    ]]
  ) {
    await refused({ cpus: v }, `cpus: expected a whole number from 1 to 255, got ${shown}`);
  }
  deepStrictEqual(checkOptions({ cpus: 1 }).volumes, []);
  checkOptions({ cpus: 255 });
});

Deno.test("boot: memoryMiB outside 64..65536 or fractional is a ConfigError before boot", async () => {
  for (const [v, shown] of [[1e9, "1000000000"], [256.5, "256.5"], [63, "63"], [0, "0"]]) {
    await refused(
      { memoryMiB: v },
      `memoryMiB: expected a whole number from 64 to 65536, got ${shown}`,
    );
  }
  checkOptions({ memoryMiB: 64 });
  checkOptions({ memoryMiB: 65536 });
});

Deno.test("boot: a bad hostname is a ConfigError before boot", async () => {
  await refused({ hostname: "" }, "hostname '': expected 1 to 64 bytes");
  await refused(
    { hostname: "x".repeat(65) },
    /^hostname 'x+': expected 1 to 64 bytes \(it has 65\)$/,
  );
  await refused(
    { hostname: "a\0b" },
    'hostname "a\\u0000b": control characters and whitespace are not allowed',
  );
  await refused(
    { hostname: "a\nb" },
    'hostname "a\\nb": control characters and whitespace are not allowed',
  );
  await refused({ hostname: 7 }, "hostname: expected a string, got number");
  checkOptions({ hostname: "box-1.example" });
});

Deno.test("boot: empty kernel or modules, and non-array volumes, are ConfigErrors", async () => {
  await refused({ kernel: "" }, 'kernel: expected a non-empty path, got ""');
  await refused({ modules: "" }, 'modules: expected a non-empty path, got ""');
  await refused({ cmdlineExtra: 1 }, "cmdlineExtra: expected a string, got 1");
  await refused(
    { volumes: "x" },
    'volumes: expected an array of { hostPath, guestPath }, got "x"',
  );
  await refused({ volumes: [null] }, "volumes[0]: expected { hostPath, guestPath }, got null");
  await refused(
    { volumes: [{ hostPath: "/tmp" }] },
    "volumes[0]: guestPath: expected a non-empty path, got undefined",
  );
  await refused(
    { volumes: [{ hostPath: "/tmp", guestPath: "/x", readOnly: "yes" }] },
    'volumes[0]: readOnly: expected a boolean, got "yes"',
  );
  await refused(
    { volumes: [{ hostPath: "/no/such", guestPath: "/x" }] },
    "volumes[0] /no/such:/x: host path /no/such does not exist",
  );
});

Deno.test("boot: a volume over /proc, /sys or /dev is refused", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    for (const g of ["/proc", "/sys/", "/dev", "/x/../proc"]) {
      const r = g.startsWith("/sys") ? "/sys" : g.startsWith("/dev") ? "/dev" : "/proc";
      await refused(
        { volumes: [{ hostPath: dir, guestPath: g }] },
        `volumes[0] ${dir}:${g}: cannot mount over the guest's ${r}`,
      );
    }
    const ok = checkOptions({
      volumes: [{ hostPath: dir, guestPath: "/process" }, { hostPath: dir, guestPath: "/dev/shm" }],
    });
    deepStrictEqual(ok.volumes.map((s) => [s.tag, s.guestPath, s.readOnly]), [
      ["vol0", "/process", false],
      ["vol1", "/dev/shm", false],
    ]);
  } finally {
    Deno.removeSync(dir);
  }
});

Deno.test("boot: net.publish rules are checked, naming the rule; hostIp and protocol default", async () => {
  const rule = (r: Record<string, unknown>) => ({ net: { publish: [{ guestPort: 80, ...r }] } });
  const cases: [Record<string, unknown>, string][] = [
    [{ hostPort: -1 }, "host port -1: expected a whole number from 0 to 65535"],
    [{ hostPort: 70000 }, "host port 70000: expected a whole number from 0 to 65535"],
    [{ hostPort: 1.5 }, "host port 1.5: expected a whole number from 0 to 65535"],
    [{ hostPort: "80" }, 'host port "80": expected a whole number from 0 to 65535'],
    [{ hostPort: 8080, guestPort: 0 }, "guest port 0: expected a whole number from 1 to 65535"],
    [
      { hostPort: 8080, guestPort: 99999 },
      "guest port 99999: expected a whole number from 1 to 65535",
    ],
    [{ hostPort: 8080, protocol: "sctp" }, 'protocol "sctp": expected "tcp" or "udp"'],
    [{ hostPort: 8080, hostIp: "localhost" }, 'host address "localhost" is not an IPv4 address'],
    [{ hostPort: 8080, hostIp: "" }, 'host address "" is not an IPv4 address'],
  ];
  for (const [r, why] of cases) await refused(rule(r), `net.publish[0]: ${why}`);
  await refused({ net: { publish: [null] } }, "net.publish[0]: expected a rule object, got null");
  await refused(
    { net: { publish: "8080:80" } },
    'net.publish: expected an array of rules, got "8080:80"',
  );
  await refused({ net: "on" }, 'net: expected a boolean or { hostLoopback, publish }, got "on"');
  deepStrictEqual(
    checkOptions({
      net: {
        publish: [{ hostPort: 0, guestPort: 80 }, {
          hostIp: "0.0.0.0",
          hostPort: 65535,
          guestPort: 53,
          protocol: "udp",
        }],
      },
    }).net,
    {
      hostLoopback: false,
      publish: [
        { hostIp: "127.0.0.1", hostPort: 0, guestPort: 80, protocol: "tcp" },
        { hostIp: "0.0.0.0", hostPort: 65535, guestPort: 53, protocol: "udp" },
      ],
    },
  );
  deepStrictEqual(checkOptions({ net: true }).net, { hostLoopback: false, publish: [] });
  strictEqual(checkOptions({ net: false }).net, null);
});

Deno.test("boot: onNotice reaches the engine as `notice`", async () => {
  const { engine, boots } = fakeEngine({ stop: () => Promise.resolve() });
  const lines: string[] = [];
  const onNotice = (l: string) => lines.push(l);
  await using _vm = await VirtualMachine.boot({ engineInstance: engine, onNotice });
  strictEqual(boots.length, 1);
  strictEqual(boots[0].options?.notice, onNotice);
});

Deno.test("spawn: bad arguments reject the promise instead of throwing", async () => {
  const { engine } = fakeEngine({
    stop: () => Promise.resolve(),
    spawn: () => Promise.reject(new Error("the fake VM spawned")),
  });
  await using vm = await VirtualMachine.boot({ engineInstance: engine });
  let p: Promise<unknown> | undefined;
  p = vm.spawn([]); // must not throw here
  await rejects(p, /^SkiffError: no command given$/);
  p = vm.spawn(["true"], { user: "nobody" });
  await rejects(p, (e: unknown) => e instanceof ConfigError && /needs an image/.test(`${e}`));
});
