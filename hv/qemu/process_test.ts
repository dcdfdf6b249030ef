import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { hostTscKhz, qemuArgs, withTcgClock } from "./cmdline.ts";
import { QemuProcess } from "./process.ts";
import { assertKernel, busyboxInitramfs, PORT_FUNCTION, runGuest, testKernel } from "./testing.ts";

Deno.test("qemuArgs: microvm, shared memfd RAM, ports and fs devices", () => {
  const args = qemuArgs({
    accel: "tcg",
    cpus: 2,
    memoryMiB: 256,
    kernel: "/k",
    initrd: "/i",
    append: "console=ttyS0",
    qmpSocket: "/d/qmp.sock",
    consoleSocket: null,
    ports: [{ id: "p0", name: "skiff.stdout", socketPath: "/d/a,b.sock" }],
    fs: [{ id: "fs0", tag: "root", socketPath: "/d/fs0.sock" }],
  });
  const joined = args.join(" ");
  ok(joined.includes("-M microvm,acpi=on"));
  ok(joined.includes("-accel tcg -cpu max,la57=off,erms=off -smp 2"));
  ok(joined.includes("memory-backend-memfd,id=mem,size=256M,share=on"));
  ok(joined.includes("socket,id=p0,path=/d/a,,b.sock"), "commas in paths are doubled");
  ok(joined.includes("virtserialport,chardev=p0,name=skiff.stdout"));
  ok(joined.includes("vhost-user-fs-device,chardev=fs0,tag=root"));
  deepStrictEqual(args.slice(args.indexOf("-serial"), args.indexOf("-serial") + 2), [
    "-serial",
    "null",
  ]);
});

Deno.test("qemuArgs: a vhost-user vsock device; its chardev id must be unique", () => {
  const spec = {
    accel: "tcg" as const,
    cpus: 1,
    memoryMiB: 128,
    kernel: "/k",
    initrd: "/i",
    append: "",
    qmpSocket: "/q",
    consoleSocket: null,
    ports: [],
    fs: [{ id: "fs0", tag: "root", socketPath: "/d/fs0.sock" }],
  };
  const joined = qemuArgs({ ...spec, vsock: { id: "vsock0", socketPath: "/d/v.sock" } }).join(" ");
  ok(joined.includes("-chardev socket,id=vsock0,path=/d/v.sock"));
  ok(joined.includes("-device vhost-user-vsock-device,chardev=vsock0"));
  ok(!qemuArgs(spec).join(" ").includes("vsock"));
  let threw = false;
  try {
    qemuArgs({ ...spec, vsock: { id: "fs0", socketPath: "/d/v.sock" } });
  } catch (e) {
    threw = e instanceof RangeError;
  }
  ok(threw, "duplicate chardev id");
});

Deno.test("qemuArgs: rejects bad sizes, ids and tags", () => {
  const base = {
    accel: "tcg" as const,
    cpus: 1,
    memoryMiB: 128,
    kernel: "/k",
    initrd: "/i",
    append: "",
    qmpSocket: "/q",
    consoleSocket: null,
    ports: [],
    fs: [],
  };
  let threw = 0;
  for (
    const bad of [
      { ...base, cpus: 0 },
      { ...base, memoryMiB: 10 },
      { ...base, ports: [{ id: "x y", name: "n", socketPath: "/s" }] },
      { ...base, fs: [{ id: "f", tag: "t".repeat(37), socketPath: "/s" }] },
    ]
  ) {
    try {
      qemuArgs(bad);
    } catch (e) {
      ok(e instanceof RangeError);
      threw++;
    }
  }
  strictEqual(threw, 4);
});

const kernel = await testKernel();
const needs = ["qemu", "cpio", "kernel"] as const;

hostTest(
  "QemuProcess: guest writes to a named port, QMP answers, cleanup",
  [...needs],
  async () => {
    assertKernel(kernel);
    const dir = await Deno.makeTempDir({ prefix: "skiff-qtest-" });
    try {
      const initrd = await busyboxInitramfs(
        dir,
        kernel,
        [PORT_FUNCTION, 'echo "hello from $(uname -r)" > "$(port test.out)"'].join("\n"),
        ["virtio_mmio", "virtio_console"],
      );
      const vm = await QemuProcess.start({
        dir,
        accel: "tcg",
        cpus: 1,
        memoryMiB: 128,
        kernel: kernel.bzImage!,
        initrd,
        append: "console=ttyS0 quiet panic=-1",
        portNames: ["test.out"],
        console: true,
        fs: [],
      });
      try {
        ok(vm.version.major >= 7);
        const st = await vm.qmp.status();
        strictEqual(typeof st.running, "boolean");
        const { ports, console: consoleText, status } = await runGuest(vm);
        strictEqual(ports["test.out"], `hello from ${kernel.version}\n`, `console: ${consoleText}`);
        strictEqual(status.code, 0);
      } finally {
        await vm.stop();
      }
      // Listener sockets are removed once QEMU has connected.
      deepStrictEqual(
        [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".sock")),
        [],
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

hostTest("QemuProcess: stop() kills a running guest, QMP quit works", [...needs], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-qtest-" });
  try {
    const initrd = await busyboxInitramfs(dir, kernel, "sleep 1000", []);
    const vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 128,
      kernel: kernel.bzImage!,
      initrd,
      append: "console=ttyS0 quiet panic=-1",
      portNames: [],
      console: false,
      fs: [],
    });
    strictEqual(vm.status, null);
    await vm.qmp.quit();
    const s = await vm.stop();
    strictEqual(s.code, 0);
    let gone = false;
    try {
      Deno.kill(vm.pid, "SIGCONT");
    } catch {
      gone = true;
    }
    ok(gone, "QEMU process is gone");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withTcgClock: host TSC rate and tsc=reliable added unless given", () => {
  strictEqual(hostTscKhz("model name\t: x\ncpu MHz\t\t: 2600.000\n"), 2600000);
  strictEqual(hostTscKhz("no rate here"), null);
  strictEqual(
    withTcgClock("console=ttyS0", 2600000),
    "console=ttyS0 tsc_early_khz=2600000 tsc=reliable",
  );
  strictEqual(
    withTcgClock("tsc_early_khz=1 tsc=unstable", 2600000),
    "tsc_early_khz=1 tsc=unstable",
  );
  strictEqual(withTcgClock("quiet", null), "quiet tsc=reliable");
});
