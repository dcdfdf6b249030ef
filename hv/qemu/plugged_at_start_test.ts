import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { machineDescription, qemuArgs, type QemuLaunchSpec } from "./cmdline.ts";
import { devicesAtStart } from "./hotplug.ts";
import { HotplugSlots, NoFreeSlotError, planPcie } from "./slots.ts";

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

const devices = devicesAtStart({
  fs: { id: "fs0", socketPath: "/d/fs0.sock", tag: "skiff" },
  vsock: { id: "vsock0", socketPath: "/d/vsock0.sock" },
  net: {
    id: "nic0",
    backend: { type: "vhost-user", socketPath: "/d/net0.sock" },
    mac: "52:54:00:6b:69:66",
  },
});

Deno.test("devicesAtStart: fs, vsock, NIC in rp0, rp1, rp2 with the hot-plug's properties", () => {
  deepStrictEqual(devices.map((d) => [d.id, d.driver, d.port]), [
    ["fs0", "vhost-user-fs-pci", "rp0"],
    ["vsock0", "vhost-user-vsock-pci", "rp1"],
    ["nic0", "virtio-net-pci", "rp2"],
  ]);
  deepStrictEqual(devices[0].props, { tag: "skiff" });
  deepStrictEqual(devices[2].props, {
    mac: "52:54:00:6b:69:66",
    romfile: "",
    ctrl_vq: false,
    ctrl_rx: false,
    ctrl_vlan: false,
    ctrl_mac_addr: false,
    mq: false,
    vectors: 0,
  });
  // Without shares and network: vsock alone, in the first port.
  deepStrictEqual(
    devicesAtStart({ vsock: { id: "vsock1", socketPath: "/s" } }).map((d) => d.port),
    ["rp0"],
  );
  throws(
    () => devicesAtStart({ fs: { id: "f", socketPath: "/s", tag: "" }, vsock: devices[1] }),
    /1\.\.36 bytes/,
  );
});

Deno.test("q35 + plugged: chardev, netdev and device per root port; not in the machine description", () => {
  const spec = { ...base, plugged: devices };
  const args = qemuArgs(spec);
  deepStrictEqual(values(args, "-chardev").slice(-3), [
    "socket,id=fs0-chr,path=/d/fs0.sock",
    "socket,id=vsock0-chr,path=/d/vsock0.sock",
    "socket,id=nic0-chr,path=/d/net0.sock",
  ]);
  deepStrictEqual(values(args, "-netdev"), ["vhost-user,id=nic0-net,chardev=nic0-chr"]);
  deepStrictEqual(values(args, "-device").slice(-3), [
    "vhost-user-fs-pci,id=fs0,bus=rp0,chardev=fs0-chr,tag=skiff",
    "vhost-user-vsock-pci,id=vsock0,bus=rp1,chardev=vsock0-chr",
    "virtio-net-pci,id=nic0,bus=rp2,netdev=nic0-net,mac=52:54:00:6b:69:66,romfile=," +
    "ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,ctrl_mac_addr=off,mq=off,vectors=0",
  ]);
  // They are unplugged before any capture: a restore's QEMU has none.
  deepStrictEqual(machineDescription(spec), machineDescription(base));
  ok(!machineDescription(spec).some((a) => a.includes("vhost-user")));
});

Deno.test("q35 + plugged: refused on microvm, in a taken or missing port, with a taken id", () => {
  throws(
    () => qemuArgs({ ...base, machine: "microvm", ramFile: undefined, plugged: [devices[1]] }),
    /need machine q35/,
  );
  throws(
    () => qemuArgs({ ...base, plugged: [devices[0], { ...devices[1], port: "rp0" }] }),
    /root port 'rp0' is not there or is taken/,
  );
  throws(
    () => qemuArgs({ ...base, plugged: [{ ...devices[1], port: "rp9" }] }),
    /'rp9' is not there/,
  );
  throws(
    () => qemuArgs({ ...base, plugged: [devices[1], { ...devices[0], id: "vsock0" }] }),
    /duplicate chardev id 'vsock0'/,
  );
});

Deno.test("HotplugSlots.claim: a named port is taken; take() skips it; a taken one is refused", () => {
  const slots = new HotplugSlots(planPcie(3, 0).rootPorts);
  deepStrictEqual(slots.claim("rp1", "vsock0").id, "rp1");
  deepStrictEqual(slots.take("fs1").id, "rp0");
  deepStrictEqual(slots.take("nic1").id, "rp2");
  throws(() => slots.claim("rp1", "x"), NoFreeSlotError);
  throws(() => slots.claim("rp7", "x"), NoFreeSlotError);
  slots.release("rp1");
  deepStrictEqual(slots.claim("rp1", "vsock1").id, "rp1");
});
