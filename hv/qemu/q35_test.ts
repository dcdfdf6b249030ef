// L0: the q35 command line, PCIe placement, hot-plug slots, the machine
// description and the qemu snapshot key (no QEMU started).
import { deepStrictEqual, notStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { machineDescription, pcieLayoutOf, qemuArgs, type QemuLaunchSpec } from "./cmdline.ts";
import { HotplugSlots, NoFreeSlotError, planPcie } from "./slots.ts";
import { shellQuotePath } from "./qmp_types.ts";
import { qemuSnapshotKey, resolveBinary } from "./snapshot_key.ts";
import { QemuRamDir } from "./ram_dir.ts";
import { qemuKernelCmdline } from "./engine.ts";
import type { VmConfig } from "../config.ts";

const config: VmConfig = {
  cpus: 1,
  memoryMiB: 512,
  cmdlineExtra: "",
  root: null,
  volumes: [],
  net: null,
  hostname: "skiff",
  verbose: false,
};

const base: QemuLaunchSpec = {
  accel: "tcg",
  cpus: 1,
  memoryMiB: 512,
  kernel: "/k/vmlinuz",
  initrd: "/i/initrd",
  append: "console=ttyS0",
  qmpSocket: "/run/a/qmp.sock",
  consoleSocket: "/run/a/console.sock",
  ports: [],
  fs: [],
  machine: "q35",
  ramFile: "/dev/shm/skiff-ram-a/ram",
};

/** The value after `flag` in `args` (every occurrence). */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));
}

Deno.test("q35: lean machine, no display, file RAM shared, root ports at fixed addresses", () => {
  const args = qemuArgs(base);
  deepStrictEqual(values(args, "-M"), [
    "q35,sata=off,smbus=off,smm=off,vmport=off,i8042=off,hpet=off",
  ]);
  deepStrictEqual(values(args, "-display"), ["none"]);
  ok(!args.includes("-nographic"));
  deepStrictEqual(values(args, "-object"), [
    "memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/skiff-ram-a/ram,share=on",
  ]);
  deepStrictEqual(values(args, "-device"), [
    "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=0x2",
    "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2,addr=0x3",
    "pcie-root-port,id=rp2,bus=pcie.0,chassis=3,slot=3,addr=0x4",
    "pcie-root-port,id=rp3,bus=pcie.0,chassis=4,slot=4,addr=0x5",
  ]);
  ok(!args.includes("-incoming"));
  ok(!args.some((a) => a.includes("virtio-mmio")), "no microvm globals on q35");
  const append = values(args, "-append")[0];
  ok(append.includes("no_timer_check") && append.includes("tsc=reliable"), append);
  // TCG: 4-level paging (no LA57); KVM: the host's CPU as it is.
  deepStrictEqual(values(args, "-cpu"), ["max,la57=off,erms=off"]);
  deepStrictEqual(values(qemuArgs({ ...base, accel: "kvm" }), "-cpu"), ["host"]);
});

Deno.test("qemuKernelCmdline: console, quiet, panic, no crypto self-tests, then the extra", () => {
  strictEqual(qemuKernelCmdline(config), "console=ttyS0 quiet panic=-1 cryptomgr.notests");
  strictEqual(
    qemuKernelCmdline({ ...config, cmdlineExtra: "loglevel=7" }),
    "console=ttyS0 quiet panic=-1 cryptomgr.notests loglevel=7",
  );
});

Deno.test("q35: serial ports on virtio-serial-pci after the root ports; -incoming defer -S for restores", () => {
  const args = qemuArgs({
    ...base,
    rootPorts: 2,
    ports: [{ id: "p0", name: "skiff.out", socketPath: "/run/a/p0.sock" }],
    incoming: true,
  });
  const devices = values(args, "-device");
  strictEqual(devices.length, 4);
  strictEqual(devices[2], "virtio-serial-pci,id=vser0,bus=pcie.0,addr=0x4,max_ports=2");
  strictEqual(devices[3], "virtserialport,chardev=p0,name=skiff.out");
  deepStrictEqual(args.slice(-3), ["-incoming", "defer", "-S"]);
  deepStrictEqual(pcieLayoutOf({ ...base, rootPorts: 2, ports: [] })?.deviceAddrs, []);
  strictEqual(pcieLayoutOf({ ...base, machine: "microvm" }), null);
});

Deno.test("q35 refuses vhost-user and network devices on the command line; microvm refuses root ports", () => {
  throws(
    () => qemuArgs({ ...base, fs: [{ id: "fs0", tag: "root", socketPath: "/s" }] }),
    /q35 takes no virtio-fs, vsock or network device on the command line/,
  );
  throws(() => qemuArgs({ ...base, netSocket: "/n" }), /hot-plug them/);
  throws(() => qemuArgs({ ...base, vsock: { id: "v0", socketPath: "/v" } }), /hot-plug them/);
  throws(
    () => qemuArgs({ ...base, machine: "microvm", rootPorts: 2 }),
    /rootPorts needs machine q35/,
  );
  throws(() => qemuArgs({ ...base, ramFile: "relative/ram" }), /absolute path/);
  throws(() => qemuArgs({ ...base, machine: "pc" as "q35" }), /machine must be/);
  throws(
    () => qemuArgs({ ...base, ports: [{ id: "rp0", name: "x", socketPath: "/s" }] }),
    /bad or duplicate chardev id 'rp0'/,
  );
  throws(() => qemuArgs({ ...base, rootPorts: 40 }), /do not fit the 29 free slots/);
});

Deno.test("microvm stays as it was: memfd RAM, -nographic, virtio-mmio devices", () => {
  const args = qemuArgs({ ...base, machine: undefined, ramFile: undefined });
  deepStrictEqual(values(args, "-M"), ["microvm,acpi=on"]);
  ok(args.includes("-nographic"));
  deepStrictEqual(values(args, "-object"), ["memory-backend-memfd,id=mem,size=512M,share=on"]);
  ok(!values(args, "-append")[0].includes("no_timer_check"));
});

Deno.test("machineDescription: host paths do not matter, the machine does", () => {
  const a = machineDescription(base);
  const b = machineDescription({
    ...base,
    kernel: "/other/vmlinuz",
    initrd: "/other/initrd",
    qmpSocket: "/run/b/qmp.sock",
    consoleSocket: "/run/b/console.sock",
    ramFile: "/dev/shm/skiff-ram-b/ram",
    incoming: true,
  });
  deepStrictEqual(a, b);
  ok(!a.join(" ").includes("/run/"), a.join(" "));
  ok(!a.includes("-incoming"));
  for (
    const other of [
      { ...base, memoryMiB: 1024 },
      { ...base, cpus: 2 },
      { ...base, rootPorts: 3 },
      { ...base, append: "console=ttyS0 quiet" },
      { ...base, append: `${base.append} cryptomgr.notests` },
      { ...base, accel: "kvm" as const },
      { ...base, consoleSocket: null },
      { ...base, ports: [{ id: "p0", name: "x", socketPath: "/s" }] },
      { ...base, ramFile: undefined },
    ]
  ) {
    notStrictEqual(JSON.stringify(machineDescription(other)), JSON.stringify(a));
  }
});

Deno.test("planPcie and HotplugSlots: first free port, release, a clear error when none is free", () => {
  const { rootPorts, deviceAddrs } = planPcie(2, 2);
  deepStrictEqual(rootPorts.map((p) => [p.id, p.addr]), [["rp0", 2], ["rp1", 3]]);
  deepStrictEqual(deviceAddrs, [4, 5]);
  throws(() => planPcie(-1, 0), RangeError);
  const slots = new HotplugSlots(rootPorts);
  strictEqual(slots.take("fs0").id, "rp0");
  strictEqual(slots.take("vsock0").id, "rp1");
  strictEqual(slots.free, 0);
  throws(
    () => slots.take("net0"),
    (e: Error) =>
      e instanceof NoFreeSlotError &&
      e.message === "no free PCIe root port for device 'net0': all 2 hold fs0, vsock0",
  );
  slots.release("rp0");
  strictEqual(slots.take("net0").id, "rp0");
  deepStrictEqual([...slots.used], [["rp1", "vsock0"], ["rp0", "net0"]]);
  throws(() => new HotplugSlots([]).take("x"), /holds? nothing|the machine has none/);
});

Deno.test("shellQuotePath: single-quoted, quotes and newlines refused", () => {
  strictEqual(shellQuotePath("/tmp/a b/state"), "'/tmp/a b/state'");
  throws(() => shellQuotePath("/tmp/it's"), RangeError);
  throws(() => shellQuotePath("/tmp/a\nb"), RangeError);
});

Deno.test("qemuSnapshotKey: engine, machine and QEMU binary are in the key; paths are not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-qkey-" });
  try {
    const kernel = join(dir, "vmlinuz");
    Deno.writeTextFileSync(kernel, "kernel bytes");
    // A stand-in "QEMU binary": only its content is hashed.
    const qemu = join(dir, "qemu");
    Deno.writeTextFileSync(qemu, "qemu v1");
    Deno.chmodSync(qemu, 0o755);
    const input = {
      kernelPath: kernel,
      initramfs: new Uint8Array([1, 2, 3]),
      config,
      launch: base,
      binary: qemu,
      memoDir: dir,
    };
    const k1 = await qemuSnapshotKey(input);
    strictEqual(k1.parts.engine, "qemu");
    strictEqual(k1.source.engine, "qemu");
    ok(String(k1.source.qemu).startsWith(`${qemu}@`));
    const samePaths = await qemuSnapshotKey({
      ...input,
      launch: {
        ...base,
        qmpSocket: "/elsewhere/q",
        ramFile: "/dev/shm/x/ram",
        kernel: "/x",
        incoming: true,
      },
    });
    strictEqual(samePaths.key, k1.key);
    notStrictEqual(
      (await qemuSnapshotKey({ ...input, launch: { ...base, memoryMiB: 256 } })).key,
      k1.key,
    );
    notStrictEqual(
      (await qemuSnapshotKey({ ...input, launch: { ...base, rootPorts: 6 } })).key,
      k1.key,
    );
    const share = { hostPath: dir, tag: "vol0", guestPath: "/data", readOnly: false };
    strictEqual(
      (await qemuSnapshotKey({ ...input, config: { ...config, volumes: [share] } })).key,
      k1.key,
      "volumes are hot-plugged: not in the key",
    );
    notStrictEqual(
      (await qemuSnapshotKey({ ...input, config: { ...config, hostname: "other" } })).key,
      k1.key,
    );
    Deno.writeTextFileSync(qemu, "qemu v2");
    notStrictEqual((await qemuSnapshotKey(input)).key, k1.key, "another QEMU build is another key");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveBinary: PATH lookup, paths as given, a clear error when missing", () => {
  ok(resolveBinary("sh").endsWith("/sh"));
  strictEqual(resolveBinary("/x/y"), "/x/y");
  throws(() => resolveBinary("no-such-binary-skiff"), /no-such-binary-skiff is not on PATH/);
});

Deno.test("QemuRamDir: private, removed on dispose; sweep removes only dirs of dead processes", () => {
  const root = Deno.makeTempDirSync({ prefix: "skiff-ramroot-" });
  try {
    let path: string;
    {
      using ram = QemuRamDir.create(root);
      path = ram.dir;
      strictEqual((Deno.statSync(ram.dir).mode ?? 0) & 0o777, 0o700);
      strictEqual(ram.ramFile, join(ram.dir, "ram"));
      ok(ram.dir.startsWith(join(root, `skiff-ram-${Deno.pid}n`)), ram.dir); // <pid>n<pid namespace>-
    }
    throws(() => Deno.statSync(path), Deno.errors.NotFound);
    const live = QemuRamDir.create(root);
    // A pid above the kernel's maximum (4194304) never runs.
    const dead = join(root, "skiff-ram-4194305-abc");
    Deno.mkdirSync(dead);
    Deno.writeTextFileSync(join(dead, "ram"), "x");
    const other = join(root, "not-skiff");
    Deno.mkdirSync(other);
    deepStrictEqual(QemuRamDir.sweep(root), [dead]);
    ok(Deno.statSync(live.dir).isDirectory);
    ok(Deno.statSync(other).isDirectory);
    live.remove();
    throws(() => QemuRamDir.create(join(root, "missing")), /cannot create a RAM directory in/);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
