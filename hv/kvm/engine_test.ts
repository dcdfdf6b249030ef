/**
 * L1: how a kvm-engine boot ends when the guest never reaches its agent's
 * READY, and the machine the engine builds, on /dev/kvm with a tiny
 * stand-in "vmlinux" (an ELF whose code follows the 64-bit boot protocol:
 * RSI = boot_params). The stand-in prints the command line it finds through
 * boot_params.cmd_line_ptr on the UART, then powers off through the ACPI
 * sleep register, hits an instruction the emulator lacks, or spins. This
 * proves the build path (findKernel on --kernel, ELF loading, boot_params,
 * cmdline, ACPI, the agent's devices, UART) and every way a boot fails, in
 * well under a second each; `skiff boot --console-log` runs on the same
 * kernels. The agent path past READY is agent_kvm_test.ts (the stand-in
 * agent); the real kernel is tests/linux_boot_test.ts.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { Assembler, mem } from "../../init/asm/mod.ts";
import { hostTest } from "../../tests/requirements.ts";
import { hangBound, until } from "../../tests/waits.ts";
import { ConfigError, VmError, VmExitError, VmTimeoutError } from "../errors.ts";
import { type VmConfig } from "../config.ts";
import { buildKvmMachine, isEmulatedKvm, KvmEngine } from "./mod.ts";
import { SnapshotCache } from "../../snapshot/cache.ts";
import { FuseServer } from "../../devices/fuse/server.ts";
import { ShareMux } from "../../devices/fuse/mux.ts";
import { bootWithConsoleLog } from "./console_boot.ts";
import { LAYOUT } from "../boot/layout.ts";
import { buildDsdt, SLEEP } from "../acpi/tables.ts";
import { BP, readE820 } from "../boot/params.ts";
import { STANDIN_LOAD, standInElf } from "./testdata/elf.ts";

const COM1 = 0x3f8;

type Ending = "poweroff" | "emulation" | "spin";

/** The stand-in kernel's code, assembled for {@link STANDIN_LOAD}. */
function program(ending: Ending): Uint8Array {
  const a = new Assembler();
  const loop = a.newLabel("next"), wait = a.newLabel("wait"), done = a.newLabel("done");
  a.mov("esi", mem({ base: "rsi", disp: 0x228, size: 32 })); // boot_params.cmd_line_ptr
  a.label(loop);
  a.mov("bl", mem({ base: "rsi", size: 8 }));
  a.test("bl", "bl");
  a.je(done);
  a.label(wait);
  a.mov("dx", COM1 + 5);
  a.in("al", "dx");
  a.test("al", 0x20);
  a.je(wait);
  a.mov("dx", COM1);
  a.mov("al", "bl");
  a.out("dx", "al");
  a.inc("rsi");
  a.jmp(loop);
  a.label(done);
  a.mov("dx", COM1);
  a.mov("al", 0x0a);
  a.out("dx", "al");
  if (ending === "poweroff") {
    a.mov("dx", LAYOUT.SLEEP_PORT);
    a.mov("al", SLEEP.SLP_EN | (SLEEP.S5_TYPE << SLEEP.SLP_TYP_SHIFT));
    a.out("dx", "al");
  } else if (ending === "emulation") {
    a.mov("eax", 0x6000);
    a.emit([0x48, 0x0f, 0xc7, 0x08]); // cmpxchg16b [rax]: the emulator lacks it
    a.ud2(); // on hardware: #UD with no IDT → triple fault, never a hang
  }
  a.label("spin");
  a.jmp("spin");
  return a.assemble({ origin: STANDIN_LOAD }).bytes;
}

async function withKernel(ending: Ending, fn: (path: string, dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-kvm-engine-" });
  try {
    const path = join(dir, "vmlinux");
    await Deno.writeFile(path, standInElf(program(ending)));
    await fn(path, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function config(kernel: string): VmConfig {
  return {
    kernel,
    cpus: 1,
    memoryMiB: 64,
    cmdlineExtra: "skiff.l1=yes",
    root: null,
    volumes: [],
    net: null,
    hostname: "h1",
    verbose: false,
  };
}

hostTest("kvm engine boot: the guest's stop on an unemulated instruction is one 'emulated' line", [
  "kvm",
], async () => {
  await withKernel("emulation", async (kernel, dir) => {
    // With the snapshot cache (the default) and without it (--no-snapshot).
    const cacheDir = join(dir, "cache", "snapshots");
    for (const snapshot of [true, false]) {
      let log = "";
      const notes: string[] = [];
      const warnings: string[] = [];
      const engine = new KvmEngine({
        cache: new SnapshotCache(cacheDir, { warn: (l) => warnings.push(l) }),
        onWarning: (l) => warnings.push(l),
        onKernelLog: (b) => (log += new TextDecoder().decode(b)),
        onNote: (l) => notes.push(l),
      });
      await rejects(
        hangBound(engine.boot(config(kernel), { snapshot }), () => `boot hung: ${log}`),
        (e) => {
          ok(e instanceof VmExitError, `snapshot ${snapshot}: ${e}`);
          ok(!e.message.includes("\n"));
          if (isEmulatedKvm()) {
            match(e.message, /^guest stopped: guest code is emulated on this host \(kvm_pvm\)/);
            ok(!e.message.includes("emulated", e.message.indexOf("emulated") + 1), e.message);
            match(e.message, /KVM_EXIT_INTERNAL_ERROR/);
            match(e.message, /RIP 0x1[0-9a-f]{6}/);
            match(e.message, /instruction bytes 48 0f c7 08/);
          } else {
            match(e.message, /triple fault/);
          }
          return true;
        },
      );
      // The stand-in printed the command line skiff put behind boot_params.
      match(log, /^console=ttyS0 .*skiff\.l1=yes\n/);
      strictEqual(log.includes("noxsave clearcpuid=cx16"), isEmulatedKvm());
      strictEqual(notes.length, isEmulatedKvm() ? 1 : 0);
      if (notes.length) match(notes[0], /^skiff: guest code is emulated on this host/);
      deepStrictEqual(warnings, []);
    }
    // A boot that never reached READY leaves nothing in the cache.
    deepStrictEqual(new SnapshotCache(cacheDir).list(), []);
  });
});

hostTest(
  "kvm engine boot: a guest power-off before READY is one VmError line",
  ["kvm"],
  async () => {
    await withKernel("poweroff", async (kernel, dir) => {
      const cacheDir = join(dir, "c");
      await rejects(
        hangBound(
          new KvmEngine({ onNote: null, cache: new SnapshotCache(cacheDir) }).boot(config(kernel)),
          () => "boot hung",
        ),
        (e) =>
          e instanceof VmError && !(e instanceof VmExitError) && !e.message.includes("\n") &&
          /^the guest stopped \(poweroff\) before its init was ready/.test(e.message),
      );
      deepStrictEqual(new SnapshotCache(cacheDir).list(), []);
    });
  },
);

hostTest("kvm engine boot: aborting stops a spinning guest and rejects with the reason", [
  "kvm",
], async () => {
  await withKernel("spin", async (kernel, dir) => {
    let log = "";
    const cacheDir = join(dir, "c");
    const engine = new KvmEngine({
      onNote: null,
      cache: new SnapshotCache(cacheDir),
      onKernelLog: (b) => (log += new TextDecoder().decode(b)),
    });
    const abort = new AbortController();
    const booting = engine.boot(config(kernel), { signal: abort.signal });
    booting.catch(() => {});
    // The abort comes while the guest spins: after the line it prints before spinning.
    await until(() => log.endsWith("\n"), "the stand-in's command line on the console");
    const reason = new VmTimeoutError(0.5);
    abort.abort(reason);
    await rejects(hangBound(booting, () => "the aborted boot hung"), (e) => e === reason);
    deepStrictEqual(new SnapshotCache(cacheDir).list(), []);
  });
});

hostTest("console boot: poweroff, timeout (124) and the console log file", ["kvm"], async () => {
  await withKernel("poweroff", async (kernel, dir) => {
    const lines: string[] = [];
    let out = "";
    const r = await bootWithConsoleLog({
      consoleLog: join(dir, "log"),
      timeoutSeconds: 30,
      kernel,
      memoryMiB: 64,
      cmdlineExtra: "x=1",
      terminal: (b) => (out += new TextDecoder().decode(b)),
      progress: (l) => lines.push(l),
    });
    strictEqual(r.end, "poweroff");
    strictEqual(r.exitCode, 0);
    const log = await Deno.readTextFile(join(dir, "log"));
    strictEqual(log, `${r.cmdline}\n`);
    strictEqual(out, log);
    ok(lines.some((l) => l.startsWith("skiff: loading kernel")));
  });
  await withKernel("spin", async (kernel, dir) => {
    const r = await bootWithConsoleLog({
      consoleLog: join(dir, "log"),
      timeoutSeconds: 0.5,
      kernel,
      memoryMiB: 64,
      terminal: null,
      progress: () => {},
    });
    strictEqual(r.end, "timeout");
    strictEqual(r.exitCode, 124);
    match(r.message, /^timed out after 0\.5 s; the VM was stopped$/);
  });
  await rejects(
    bootWithConsoleLog({ consoleLog: "/nonexistent/x", timeoutSeconds: 0, terminal: null }),
    /--timeout 0/,
  );
});

hostTest(
  "kvm machine: the DSDT in guest memory declares exactly its virtio slots; MADT its vCPUs",
  [
    "kvm",
  ],
  async () => {
    await withKernel("spin", async (kernel) => {
      // The agent's machine: vsock, the share mux's virtio-fs, the NIC.
      const backends = { fs: () => new FuseServer(new ShareMux()), net: () => null };
      {
        await using m = await buildKvmMachine(config(kernel), { agent: true, backends });
        deepStrictEqual(
          m.virtio.map((v) => [v.name, v.base, v.gsi]),
          [
            ["virtio-vsock", 0xc000_0000, 5],
            ["virtio-fs", 0xc000_1000, 6],
            ["virtio-net", 0xc000_2000, 7],
          ],
        );
        ok(m.vsock && m.net);
        const dsdt = m.acpi.tables.find((t) => t.signature === "DSDT")!;
        deepStrictEqual(
          m.memory.slice(dsdt.addr, dsdt.bytes.length),
          buildDsdt(m.virtio.map((v) => ({ base: v.base, gsi: v.gsi }))),
        );
        strictEqual(m.vm.vcpus.length, 1);
        // boot_params points at the tables and the command line.
        const bp = m.memory.slice(LAYOUT.ZERO_PAGE, 4096);
        const dv = new DataView(bp.buffer, bp.byteOffset, 4096);
        strictEqual(dv.getBigUint64(BP.ACPI_RSDP_ADDR, true), BigInt(m.acpi.rsdpAddr));
        strictEqual(dv.getUint32(BP.CMD_LINE_PTR, true), LAYOUT.CMDLINE_START);
        deepStrictEqual(readE820(bp), m.e820);
      }
      // A virtio-fs device without its FUSE server is refused, naming the device.
      await rejects(
        buildKvmMachine(config(kernel), { agent: true }),
        /virtio-fs: this run has no share tagged/,
      );
      {
        // An initramfs lands page-aligned at the top of low RAM; boot_params says where.
        const initrd = new Uint8Array(3 << 20).fill(0x5a);
        await using m = await buildKvmMachine(config(kernel), { initrd });
        const at = m.initrd!;
        strictEqual(at.size, initrd.length);
        strictEqual(at.addr % 4096, 0);
        ok(at.addr + at.size <= 64 << 20 && at.addr + at.size > (64 << 20) - 8192);
        strictEqual(m.memory.readU8(at.addr + at.size - 1), 0x5a);
        const dv = new DataView(m.memory.slice(LAYOUT.ZERO_PAGE, 4096).slice().buffer);
        strictEqual(dv.getUint32(BP.RAMDISK_IMAGE, true), at.addr);
        strictEqual(dv.getUint32(BP.RAMDISK_SIZE, true), at.size);
        await rejects(
          buildKvmMachine(config(kernel), { initrd: new Uint8Array(80 << 20) }),
          (e) => e instanceof ConfigError && /initrd of \d+ bytes does not fit/.test(e.message),
        );
      }
      {
        // Without the agent's devices: the plain virtio console (`skiff boot --console-log`).
        await using m = await buildKvmMachine({ ...config(kernel), cpus: 3 });
        strictEqual(m.vm.vcpus.length, 3);
        deepStrictEqual(m.virtio.map((v) => v.name), ["virtio-console"]);
        const madt = m.acpi.tables.find((t) => t.signature === "APIC")!.bytes;
        strictEqual(madt.length, 44 + 3 * 8 + 12);
      }
    });
  },
);
