// L3q: the mailbox loop as PID 1 of a real Linux guest (the Debian kernel
// under QEMU TCG). QEMU has no skiff mailbox device, so the register page
// and data region are an ivshmem-plain BAR (outside e820, like skiff's
// mailbox region) backed by a file the test maps MAP_SHARED too. The init
// maps it uncached, either through sysfs (`resource2`) or — the production
// path — through /dev/mem at the BAR's physical address with DATA_BASE as
// the data region's /dev/mem offset; it copies payloads into anonymous
// executable memory and runs command records on QEMU virtio-serial ports.
// The host drives it with the real Mailbox API.
import { ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../tests/requirements.ts";
import { assertKernel, testKernel } from "../hv/qemu/testing.ts";
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
import { Mailbox, MAILBOX_MAGIC, MB_IMAGE_SIZE } from "../devices/mailbox/mod.ts";
import { QmpClient } from "../hv/qemu/qmp.ts";
import { compileElf, compilePayload } from "./codegen/mod.ts";
import {
  branch,
  buf,
  checkNeg,
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
import { GUEST_HANG_MS } from "../tests/waits.ts";

const kernel = await testKernel();

const SHM_SIZE = 1 << 20;
const PCI_DEV = "/sys/bus/pci/devices/0000:00:02.0";
/** Bound on one guest run, only to catch a hang (a run takes seconds; more on a busy machine). */
const DEADLINE_MS = GUEST_HANG_MS;

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

type Mode = "sysfs" | "devmem";

/** Test setup before the loop: file systems, console modules, the BAR, our port. */
function guestSetup(modules: string[], mode: Mode) {
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
      args: [str("skiff.stdout"), buf("pp", 256)],
      dst: r,
    },
    branch("eq", r, 0, "port_found"),
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    branch("geu", i, 500, "port_found"),
    { op: "call", routine: "sleep_ms", args: [20] },
    jump("port_again"),
    label("port_found"),
  );
  if (mode === "sysfs") return { setup, regsPath: `${PCI_DEV}/resource2`, regsOffset: 0 };
  // BAR 2's physical address: the third line of `resource` ("0x<start> 0x<end> 0x<flags>").
  const bar = v("bar");
  const p = v("res_p");
  const c = v("res_c");
  const d = v("res_d");
  const nl = v("res_nl");
  const fd = v("mem_fd");
  const m = v("mem_map");
  const t = v("mem_t");
  setup.push(
    {
      op: "call",
      routine: "read_file",
      args: [str(`${PCI_DEV}/resource`), buf("res", 1024), 1023],
      dst: r,
    },
    checkNeg(r, "read BAR resource"),
    { op: "set", dst: p, src: buf("res", 1024) },
    { op: "set", dst: nl, src: 0 },
    label("res_line"),
    branch("geu", nl, 2, "res_hex"),
    { op: "load", dst: c, addr: p, offset: 0, size: 1 },
    branch("eq", c, 0, "res_done"),
    { op: "arith", kind: "add", dst: p, a: p, b: 1 },
    branch("ne", c, 10, "res_line"),
    { op: "arith", kind: "add", dst: nl, a: nl, b: 1 },
    jump("res_line"),
    label("res_hex"),
    { op: "arith", kind: "add", dst: p, a: p, b: 2 },
    { op: "set", dst: bar, src: 0 },
    label("res_digit"),
    { op: "load", dst: c, addr: p, offset: 0, size: 1 },
    branch("ltu", c, 0x30, "res_done"),
    { op: "arith", kind: "sub", dst: d, a: c, b: 0x30 },
    branch("leu", c, 0x39, "res_acc"),
    branch("ltu", c, 0x61, "res_done"),
    branch("gtu", c, 0x66, "res_done"),
    { op: "arith", kind: "sub", dst: d, a: c, b: 0x57 },
    label("res_acc"),
    { op: "arith", kind: "shl", dst: bar, a: bar, b: 4 },
    { op: "arith", kind: "or", dst: bar, a: bar, b: d },
    { op: "arith", kind: "add", dst: p, a: p, b: 1 },
    jump("res_digit"),
    label("res_done"),
    // The host learns the BAR over QMP and only then publishes the register
    // image (magic last): wait for it through a /dev/mem mapping of the page.
    sys(SYS.open, [str("/dev/mem"), O.RDWR | O.SYNC, 0], { step: "open /dev/mem", dst: fd }),
    sys(SYS.mmap, [0, 4096, 3, 1, fd, bar], { step: "map BAR through /dev/mem", dst: m }),
    { op: "set", dst: i, src: 0 },
    label("magic_wait"),
    { op: "load", dst: t, addr: m, offset: 0, size: 4 },
    branch("eq", t, MAILBOX_MAGIC, "magic_seen"),
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    branch("geu", i, 6000, "magic_seen"),
    { op: "call", routine: "sleep_ms", args: [10] },
    jump("magic_wait"),
    label("magic_seen"),
    sys(SYS.munmap, [m, 4096]),
    sys(SYS.close, [fd]),
  );
  return { setup, regsPath: "/dev/mem", regsOffset: bar };
}

function guestInit(modules: string[], mode: Mode): Uint8Array {
  return compileElf(
    mailboxProgram({
      ...guestSetup(modules, mode),
      idleSleepMs: 1,
      ports: "virtio",
      onShutdown: powerOff(),
    }),
  ).bytes;
}

/** Polls QMP `query-pci` until the guest has assigned and enabled ivshmem's BAR 2. */
async function barAddress(socket: string, deadline: number): Promise<number> {
  let conn: Deno.UnixConn | null = null;
  while (!conn) {
    try {
      conn = await Deno.connect({ transport: "unix", path: socket });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const qmp = new QmpClient(conn);
  try {
    await qmp.handshake();
    for (;;) {
      const buses = await qmp.execute("query-pci") as {
        devices: { slot: number; regions: { bar: number; address: number }[] }[];
      }[];
      const dev = buses.flatMap((b) => b.devices).find((d) => d.slot === 2);
      const addr = dev?.regions.find((r) => r.bar === 2)?.address ?? -1;
      // Unassigned or decoding off: QEMU reports PCI_BAR_UNMAPPED (all ones).
      if (addr > 0 && addr < 2 ** 52) return addr;
      if (Date.now() > deadline) throw new Error("ivshmem BAR 2 was never mapped");
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await qmp.close();
  }
}

async function runGuest(mode: Mode): Promise<void> {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-mbqemu-" });
  const shm = join(dir, "shm");
  const fd = open(shm, HO.RDWR | HO.CREAT, 0o600);
  ftruncate(fd, SHM_SIZE);
  const ptr = mmap(SHM_SIZE, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
  close(fd);
  const view = viewAt(ptr, SHM_SIZE);
  let qemu: Deno.ChildProcess | null = null;
  let mb: Mailbox | null = null;
  let console = "";
  const started = Date.now();
  /** The mailbox over the shared file; `base` = the BAR's guest-physical address (0 for sysfs). */
  const makeMailbox = (base: number) => {
    const m = new Mailbox({
      registers: view.subarray(0, MB_IMAGE_SIZE),
      dataBase: base + 4096,
      dataSize: SHM_SIZE - 4096,
      pollMs: 2,
    });
    m.useMemory(new RegionMemory([{ guestAddr: base, size: SHM_SIZE, bytes: view }]));
    return m;
  };
  try {
    if (mode === "sysfs") mb = makeMailbox(0);

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
    await Deno.writeFile(join(root, "init"), guestInit(mods, mode), { mode: 0o755 });
    const initrd = join(dir, "initrd.gz");
    const cpio = await new Deno.Command("sh", {
      args: ["-c", `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${initrd}'`],
    }).output();
    strictEqual(cpio.code, 0, new TextDecoder().decode(cpio.stderr));

    const out = join(dir, "stdout");
    const qmpSocket = join(dir, "qmp.sock");
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
        "-chardev",
        `socket,id=qmp,path=${qmpSocket},server=on,wait=off`,
        "-mon",
        "chardev=qmp,mode=control",
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
    let failure: Error | null = null;
    const exited = qemu.status.then((s) => {
      failure ??= new Error(`QEMU exited with ${s.code}`);
      mb?.fail(failure);
      return s;
    });
    const watchdog = setTimeout(() => {
      failure ??= new Error(`deadline of ${DEADLINE_MS} ms passed`);
      mb?.fail(failure);
      try {
        qemu?.kill("SIGKILL");
      } catch { /* gone */ }
    }, DEADLINE_MS);
    const call = { timeoutMs: DEADLINE_MS };
    let bar = 0;
    try {
      if (mode === "devmem") {
        bar = await Promise.race([
          barAddress(qmpSocket, started + DEADLINE_MS),
          exited.then(() => Promise.reject(failure)),
        ]);
        ok(bar >= 2 ** 32, `BAR 2 at 0x${bar.toString(16)}`);
        if (failure) throw failure;
        mb = makeMailbox(bar);
      }
      await mb!.ready(call);
      strictEqual(
        await mb!.runPayload(compilePayload({ body: seq(exit(42)) }).bytes, 0n, call),
        42n,
      );
      // The payload runs inside the init: getpid() is 1.
      const pid = v("pid");
      const getpid = compilePayload({ body: seq(sys(SYS.getpid, [], { dst: pid }), exit(pid)) });
      strictEqual(await mb!.runPayload(getpid.bytes, 0n, call), 1n);
      const enoent = compilePayload({
        body: seq(sys(SYS.open, [str("/no/such"), O.RDONLY, 0], { step: "open" }), exit(0)),
      });
      strictEqual(await mb!.runPayload(enoent.bytes, 0n, call), -2n);
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
      strictEqual(await mb!.runCommand(record, call), 3);
      await mb!.shutdown(call);
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
      const regs = mb
        ? `state=${mb.registers.state} cmd=${mb.registers.cmdSeq} done=${mb.registers.doneSeq}`
        : "not created";
      throw new Error(
        `${(e as Error).message}\nmailbox: ${regs} bar=0x${bar.toString(16)}\n` +
          `--- console ---\n${console}\n--- qemu stderr ---\n${await stderr}`,
      );
    } finally {
      clearTimeout(watchdog);
      await reading.catch(() => {});
      await stderr;
    }
    ok(console.includes("reboot: Power down"), console);
  } finally {
    mb?.[Symbol.dispose]();
    if (qemu) {
      try {
        qemu.kill("SIGKILL");
      } catch { /* gone */ }
      await qemu.status;
    }
    munmap(ptr, SHM_SIZE);
    await Deno.remove(dir, { recursive: true });
  }
}

hostTest(
  "mailbox loop as PID 1 in a Linux guest (QEMU TCG), BAR mapped through sysfs: payloads and a command record",
  ["qemu", "cpio", "kernel"],
  () => runGuest("sysfs"),
);

hostTest(
  "mailbox loop as PID 1 in a Linux guest (QEMU TCG), through /dev/mem at a physical address outside e820",
  ["qemu", "cpio", "kernel"],
  () => runGuest("devmem"),
);
