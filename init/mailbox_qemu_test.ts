// L3q: the mailbox loop as PID 1 of a real Linux guest (the Debian kernel
// under QEMU TCG). QEMU has no skiff mailbox device, so the register page
// and data region are an ivshmem-plain BAR backed by a file the test maps
// MAP_SHARED too; the init maps the BAR through sysfs (`resource2`, an
// uncached device mapping as /dev/mem gives in skiff's VMM), copies payloads
// into anonymous executable memory, and runs command records on QEMU
// virtio-serial ports. The host drives it with the real Mailbox API.
import { ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../tests/requirements.ts";
import { testKernel } from "../hv/qemu/testing.ts";
import { kernelModules } from "../hv/kernel/mod.ts";
import { RegionMemory } from "../hv/memory.ts";
import {
  close,
  ftruncate,
  MAP,
  mmap,
  munmap,
  O as HO,
  open,
  PROT,
  viewAt,
} from "../kvm_ffi/libc.ts";
import { Mailbox, MB_IMAGE_SIZE } from "../devices/mailbox/mod.ts";
import { compileElf, compilePayload } from "./codegen/mod.ts";
import {
  branch,
  exit,
  jump,
  label,
  loadModule,
  mkdirP,
  mount,
  MS,
  O,
  powerOff,
  seq,
  str,
  SYS,
  sys,
  v,
  writeFile,
} from "./ir/mod.ts";
import { encodeRecord } from "./record.ts";
import { mailboxProgram } from "./mailbox_loop.ts";

const kernel = await testKernel();
if (typeof kernel === "string") console.error(`skiff-test-skip: mailbox QEMU test: ${kernel}`);

const SHM_SIZE = 1 << 20;
const PCI_DEV = "/sys/bus/pci/devices/0000:00:02.0";
const DEADLINE_MS = 120_000;

/**
 * The guest's TSC rate in kHz (TCG runs the guest TSC at the host's rate).
 * On a loaded host the kernel's PIT calibration fails ("Marking TSC
 * unstable") and boot hangs before the APIC timer works — seen here 3 of 7
 * runs under `--parallel`; `tsc_early_khz` skips the calibration (the same
 * fix as init/qemu_boot_test.ts).
 */
function hostTscKhz(): number {
  try {
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(Deno.readTextFileSync("/proc/cpuinfo"));
    if (m) return Math.round(Number(m[1]) * 1000);
  } catch {
    // fall through
  }
  return 2_600_000;
}

function guestInit(modules: string[]): Uint8Array {
  const r = v("port_r");
  const i = v("port_i");
  const setup = seq(
    mkdirP("/proc"),
    mount("proc", "/proc", "proc", MS.NOSUID | MS.NODEV | MS.NOEXEC),
    mkdirP("/sys"),
    mount("sysfs", "/sys", "sysfs", MS.NOSUID | MS.NODEV | MS.NOEXEC),
    mkdirP("/dev"),
    mount("devtmpfs", "/dev", "devtmpfs", MS.NOSUID),
    ...modules.map((m) => loadModule(`/mods/${m}`)),
    // Memory decoding on for the BAR (no driver claims ivshmem).
    writeFile(`${PCI_DEV}/enable`, "1"),
    // virtio-console ports register asynchronously: wait up to 10 s for ours.
    { op: "set", dst: i, src: 0 },
    label("port_again"),
    {
      op: "call",
      routine: "find_port",
      args: [str("skiff.stdout"), { kind: "buf", name: "pp", size: 256 }],
      dst: r,
    },
    branch("eq", r, 0, "port_found"),
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    branch("geu", i, 500, "port_found"),
    { op: "call", routine: "sleep_ms", args: [20] },
    jump("port_again"),
    label("port_found"),
  );
  return compileElf(
    mailboxProgram({
      setup,
      regsPath: `${PCI_DEV}/resource2`,
      regsOffset: 0,
      idleSleepMs: 1,
      ports: "virtio",
      onShutdown: powerOff(),
    }),
  ).bytes;
}

hostTest("mailbox loop as PID 1 in a Linux guest (QEMU TCG): payloads and a command record", [
  "qemu",
  "cpio",
], async () => {
  if (typeof kernel === "string") return;
  const dir = await Deno.makeTempDir({ prefix: "skiff-mbqemu-" });
  const shm = join(dir, "shm");
  const fd = open(shm, HO.RDWR | HO.CREAT, 0o600);
  ftruncate(fd, SHM_SIZE);
  const ptr = mmap(SHM_SIZE, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
  close(fd);
  let qemu: Deno.ChildProcess | null = null;
  let console = "";
  try {
    const view = viewAt(ptr, SHM_SIZE);
    using mb = new Mailbox({
      registers: view.subarray(0, MB_IMAGE_SIZE),
      dataBase: 4096,
      dataSize: SHM_SIZE - 4096,
      pollMs: 2,
    });
    mb.useMemory(new RegionMemory([{ guestAddr: 0, size: SHM_SIZE, bytes: view }]));

    // The initramfs: our init, busybox as /bin/sh, the console modules.
    const root = join(dir, "root");
    for (const d of ["bin", "mods", "dev", "proc", "sys"]) {
      await Deno.mkdir(join(root, d), { recursive: true });
    }
    const order = (await kernelModules(kernel)).loadOrder(["virtio_mmio", "virtio_console"]);
    const mods: string[] = [];
    for (const [n, rel] of order.entries()) {
      mods.push(`${n}.ko`);
      await Deno.copyFile(`${kernel.modulesDir}/${rel}`, join(root, "mods", `${n}.ko`));
    }
    await Deno.copyFile("/bin/busybox", join(root, "bin/busybox"));
    await Deno.symlink("busybox", join(root, "bin/sh"));
    await Deno.symlink("busybox", join(root, "bin/cat"));
    await Deno.writeFile(join(root, "init"), guestInit(mods), { mode: 0o755 });
    const initrd = join(dir, "initrd.gz");
    const cpio = await new Deno.Command("sh", {
      args: ["-c", `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${initrd}'`],
    }).output();
    strictEqual(cpio.code, 0, new TextDecoder().decode(cpio.stderr));

    const out = join(dir, "stdout");
    qemu = new Deno.Command("qemu-system-x86_64", {
      args: [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-M",
        "microvm,acpi=on,pcie=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256M",
        "-kernel",
        kernel.bzImage!,
        "-initrd",
        initrd,
        "-append",
        `console=ttyS0 panic=-1 loglevel=7 tsc_early_khz=${hostTscKhz()}`,
        "-serial",
        "stdio",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-object",
        `memory-backend-file,id=mb,size=${SHM_SIZE},share=on,mem-path=${shm}`,
        "-device",
        "ivshmem-plain,memdev=mb,addr=2",
        "-device",
        "virtio-serial-device,max_ports=4",
        "-chardev",
        "null,id=in",
        "-device",
        "virtserialport,chardev=in,name=skiff.stdin",
        "-chardev",
        `file,id=out,path=${out}`,
        "-device",
        "virtserialport,chardev=out,name=skiff.stdout",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const decoder = new TextDecoder();
    const reading = (async () => {
      for await (const chunk of qemu.stdout) console += decoder.decode(chunk, { stream: true });
    })();
    const stderr = new Response(qemu.stderr).text();
    const exited = qemu.status.then((s) => {
      mb.fail(new Error(`QEMU exited with ${s.code}`));
      return s;
    });
    const watchdog = setTimeout(() => {
      mb.fail(new Error(`deadline of ${DEADLINE_MS} ms passed`));
      try {
        qemu?.kill("SIGKILL");
      } catch { /* gone */ }
    }, DEADLINE_MS);
    const call = { timeoutMs: DEADLINE_MS };
    try {
      await mb.ready(call);
      strictEqual(
        await mb.runPayload(compilePayload({ body: seq(exit(42)) }).bytes, 0n, call),
        42n,
      );
      // The payload runs inside the init: getpid() is 1.
      const pid = v("pid");
      const getpid = compilePayload({ body: seq(sys(SYS.getpid, [], { dst: pid }), exit(pid)) });
      strictEqual(await mb.runPayload(getpid.bytes, 0n, call), 1n);
      const enoent = compilePayload({
        body: seq(sys(SYS.open, [str("/no/such"), O.RDONLY, 0], { step: "open" }), exit(0)),
      });
      strictEqual(await mb.runPayload(enoent.bytes, 0n, call), -2n);
      const record = encodeRecord({
        rootTag: null,
        hostname: "skiff",
        shares: [],
        modules: [],
        ports: {
          stdin: "skiff.stdin",
          stdout: "skiff.stdout",
          stderr: "skiff.stdout",
          status: "skiff.status",
        },
        argv: ["sh", "-c", 'echo "hello from $(cat /proc/1/comm) $FOO"; exit 3'],
        env: ["FOO=bar"],
        cwd: "/",
        path: "/bin",
        net: null,
      });
      strictEqual(await mb.runCommand(record, call), 3);
      await mb.shutdown(call);
      const status = await exited;
      strictEqual(status.code, 0);
      qemu = null;
      strictEqual(await Deno.readTextFile(out), "hello from init bar\n");
    } catch (e) {
      try {
        qemu?.kill("SIGKILL");
      } catch { /* gone */ }
      await exited;
      await reading.catch(() => {});
      throw new Error(
        `${
          (e as Error).message
        }\nmailbox: state=${mb.registers.state} cmd=${mb.registers.cmdSeq} done=${mb.registers.doneSeq}\n--- console ---\n${console}\n--- qemu stderr ---\n${await stderr}`,
      );
    } finally {
      clearTimeout(watchdog);
      await reading.catch(() => {});
      await stderr;
    }
    ok(console.includes("reboot: Power down"), console);
  } finally {
    if (qemu) {
      try {
        qemu.kill("SIGKILL");
      } catch { /* gone */ }
      await qemu.status;
    }
    munmap(ptr, SHM_SIZE);
    await Deno.remove(dir, { recursive: true });
  }
});
