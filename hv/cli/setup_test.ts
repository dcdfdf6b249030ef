/**
 * L0: `skiff setup`'s decisions on simulated hosts (no apt, no download):
 * what it runs, what it leaves alone, and the one line without root. Then
 * the real command where everything is in place: it changes nothing.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { QEMU_INSTALL_TEXT, setup, type SetupDeps } from "./setup.ts";
import type { HostProbe } from "../library/select_engine.ts";
import { hostTest } from "../../tests/requirements.ts";
import { AptListsError, type KernelInfo, KernelMissingError } from "../kernel/mod.ts";

interface Fake {
  deps: SetupDeps;
  ran: string[];
  lines: string[];
  fetches: number;
}

/**
 * A host: `kvm` native or emulated (kvm_pvm); `qemu` installed or not (an
 * `apt-get install` of qemu-system-x86 that succeeds installs it); `sudo`
 * on PATH or not; a cached kernel or not; apt lists present or not.
 */
function fake(o: {
  kvm: "native" | "emulated" | "none";
  qemu: boolean;
  uid: number;
  sudo: boolean;
  kernel: boolean;
  aptLists?: boolean;
  failInstall?: boolean;
}): Fake {
  let qemu = o.qemu;
  let kernel = o.kernel;
  let lists = o.aptLists ?? true;
  const f: Fake = { ran: [], lines: [], fetches: 0, deps: undefined! };
  const host: HostProbe = {
    exists: (p) =>
      (p === "/dev/kvm" && o.kvm !== "none") ||
      (p === "/sys/module/kvm_pvm" && o.kvm === "emulated"),
    kvmOpens: () => o.kvm !== "none",
    which: (n) =>
      n === "qemu-system-x86_64" && qemu
        ? "/usr/bin/qemu-system-x86_64"
        : n === "sudo" && o.sudo
        ? "/usr/bin/sudo"
        : null,
  };
  f.deps = {
    host,
    uid: o.uid,
    findKernel: () =>
      kernel
        ? Promise.resolve({ version: "6.1.0-test", source: "cache" } as KernelInfo)
        : Promise.reject(new KernelMissingError()),
    fetchKernel: () => {
      f.fetches++;
      if (!lists) return Promise.reject(new AptListsError("apt-cache cannot find linux-image"));
      kernel = true;
      return Promise.resolve();
    },
    run: (argv) => {
      f.ran.push(argv.join(" "));
      const cmd = argv.filter((a) => a !== "sudo");
      if (cmd[1] === "update") lists = true;
      if (cmd[1] === "install") {
        if (o.failInstall) return Promise.resolve(100);
        qemu = true;
      }
      return Promise.resolve(0);
    },
    log: (l) => f.lines.push(l),
  };
  return f;
}

Deno.test("setup: everything in place: nothing is run or fetched", async () => {
  for (const kvm of ["native", "emulated"] as const) {
    const f = fake({ kvm, qemu: kvm === "emulated", uid: 1000, sudo: false, kernel: true });
    strictEqual(await setup(f.deps), 0);
    deepStrictEqual(f.ran, []);
    strictEqual(f.fetches, 0);
    match(f.lines.at(-1)!, /ready/);
  }
  // Native KVM needs no QEMU, even when QEMU is absent.
  const f = fake({ kvm: "native", qemu: false, uid: 1000, sudo: false, kernel: true });
  strictEqual(await setup(f.deps), 0);
  deepStrictEqual(f.ran, []);
});

Deno.test("setup: emulated /dev/kvm and no QEMU: installs it (root: apt-get; else sudo)", async () => {
  const root = fake({ kvm: "emulated", qemu: false, uid: 0, sudo: false, kernel: false });
  strictEqual(await setup(root.deps), 0);
  deepStrictEqual(root.ran, [
    "apt-get update",
    "apt-get install -y --no-install-recommends qemu-system-x86",
  ]);
  strictEqual(root.fetches, 1);
  // Run again: nothing more.
  strictEqual(await setup(root.deps), 0);
  strictEqual(root.ran.length, 2);
  strictEqual(root.fetches, 1);

  const user = fake({ kvm: "none", qemu: false, uid: 1000, sudo: true, kernel: true });
  strictEqual(await setup(user.deps), 0);
  deepStrictEqual(user.ran, [
    "sudo apt-get update",
    "sudo apt-get install -y --no-install-recommends qemu-system-x86",
  ]);
});

Deno.test("setup: no root and no sudo: the kernel is fetched, then one line with the command", async () => {
  const f = fake({ kvm: "emulated", qemu: false, uid: 1000, sudo: false, kernel: false });
  strictEqual(await setup(f.deps), 125);
  deepStrictEqual(f.ran, []);
  strictEqual(f.fetches, 1);
  const last = f.lines.at(-1)!;
  strictEqual(last.includes("\n"), false, "one line");
  ok(last.includes(`run \`${QEMU_INSTALL_TEXT}\` as root`), last);
  match(last, /kvm_pvm/);
});

Deno.test("setup: apt lists missing: apt-get update once, then the kernel fetch again", async () => {
  const f = fake({
    kvm: "emulated",
    qemu: true,
    uid: 0,
    sudo: false,
    kernel: false,
    aptLists: false,
  });
  strictEqual(await setup(f.deps), 0);
  deepStrictEqual(f.ran, ["apt-get update"]);
  strictEqual(f.fetches, 2);
  // Without a way to update, the fetch error (with its hint) goes to the caller.
  const g = fake({
    kvm: "emulated",
    qemu: true,
    uid: 1000,
    sudo: false,
    kernel: false,
    aptLists: false,
  });
  await rejects(setup(g.deps), AptListsError);
});

Deno.test("setup: a failed apt-get install is an error naming the command and its code", async () => {
  const f = fake({
    kvm: "emulated",
    qemu: false,
    uid: 0,
    sudo: false,
    kernel: true,
    failInstall: true,
  });
  await rejects(
    setup(f.deps),
    /apt-get install -y --no-install-recommends qemu-system-x86 failed \(exit 100\)/,
  );
});

hostTest("skiff setup here (kernel cached, QEMU installed): runs nothing, exit 0", [
  "kernel",
  "qemu",
], async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../main.ts", import.meta.url).pathname, "setup"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(r.stderr);
  strictEqual(r.code, 0, err);
  strictEqual(new TextDecoder().decode(r.stdout), "", "progress goes to stderr");
  match(err, /kernel \S+ is cached/);
  match(err, /ready/);
  ok(!/installing|apt-get|downloading/.test(err), err);
});
