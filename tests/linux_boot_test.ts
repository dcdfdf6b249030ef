/**
 * L2: the Debian kernel on /dev/kvm through skiff's own boot path (ELF
 * vmlinux, boot_params, e820, command line, ACPI tables, serial console).
 * Asserts from the console log that Linux took what skiff gave it: the
 * command line, the e820 map entry by entry, each ACPI table at the address
 * and length skiff placed it, and the CPUs from the MADT. Where /dev/kvm
 * emulates guest code (kvm_pvm) the kernel then stops on an instruction the
 * emulator lacks, and the run must end with the one-line `emulated` message
 * (≈30–70 s here). Run alone: `./skiff deno test -A tests/linux_boot_test.ts`.
 */

import { match, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "./requirements.ts";
import { bootWithConsoleLog, type ConsoleBootResult } from "../hv/kvm/console_boot.ts";
import { E820 } from "../hv/boot/layout.ts";

const hex = (n: number, width = 16) => n.toString(16).padStart(width, "0");

/** Bound on the boot, only to catch a hang (seconds). */
const BOUND_S = 900;

const NAME = "linux boot on /dev/kvm: Linux prints skiff's cmdline, e820 map, ACPI tables and CPUs";

async function bootTest(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-boot-" });
  const logPath = join(dir, "console.log");
  const progress: string[] = [];
  // The boot ends by itself (the emulator stops it, or the kernel panics and reboots) in
  // ≈30–50 s alone and a few times that on a busy machine (guest code is emulated on the
  // CPU time it gets). The VM's own timeout only catches a hang; the signal is a second line.
  const signal = AbortSignal.timeout(BOUND_S * 1000 + 15_000);
  let r: ConsoleBootResult | undefined;
  let log = "";
  try {
    const boot = bootWithConsoleLog({
      consoleLog: logPath,
      timeoutSeconds: BOUND_S,
      cpus: 2,
      memoryMiB: 256,
      cmdlineExtra: "skiff.test=linux_boot",
      terminal: null,
      progress: (l) => progress.push(l),
      signal,
    });
    // Last line of defence should stopping the VM itself hang: fail with the log so far.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(async () => {
        const sofar = await Deno.readTextFile(logPath).catch(() => "");
        reject(
          new Error(`the boot did not end within ${BOUND_S + 30} s\n--- console ---\n${sofar}`),
        );
      }, BOUND_S * 1000 + 30_000);
    });
    try {
      r = await Promise.race([boot, hung]);
    } finally {
      clearTimeout(timer);
    }
    // The serial console ends lines with CR LF.
    log = (await Deno.readTextFile(logPath)).replaceAll("\r\n", "\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const ctx = () =>
    `\n--- skiff ---\n${progress.join("\n")}\n${r?.message}\n--- console ---\n${log}`;
  ok(r.end !== "timeout" && r.end !== "aborted", `the boot did not end by itself: ${ctx()}`);

  // The command line, verbatim.
  ok(r.cmdline.includes("skiff.test=linux_boot"));
  ok(log.includes(`Command line: ${r.cmdline}\n`), `no 'Command line: ${r.cmdline}'${ctx()}`);
  // Every e820 entry skiff put, in Linux's format ([mem first-last] type).
  for (const e of r.e820) {
    const type = e.type === E820.RAM ? "usable" : e.type === E820.RESERVED ? "reserved" : "";
    const line = `BIOS-e820: [mem 0x${hex(e.addr)}-0x${hex(e.addr + e.size - 1)}] ${type}`;
    ok(log.includes(line), `missing '${line}'${ctx()}`);
  }
  strictEqual(
    [...log.matchAll(/BIOS-e820: /g)].length,
    r.e820.length,
    `Linux printed e820 entries skiff did not give${ctx()}`,
  );
  // Each table at skiff's address with skiff's length.
  for (const t of r.acpiTables) {
    const sig = t.signature === "RSD PTR " ? "RSDP" : t.signature;
    const re = new RegExp(
      `ACPI: ${sig} 0x${hex(t.addr).toUpperCase()} ${
        hex(t.bytes.length, 6).toUpperCase()
      } \\(v0\\d SKIFF `,
    );
    match(log, re, `no ${re}${ctx()}`);
  }
  // The CPUs and the IOAPIC from the MADT.
  strictEqual(r.cpus, 2);
  match(log, /ACPI: Using ACPI \(MADT\) for SMP configuration information/, ctx());
  match(log, /smpboot: Allowing 2 CPUs, 0 hotplug CPUs/, ctx());
  match(log, /IOAPIC\[0\]: apic_id 0, version \d+, address 0xfec00000, GSI 0-23/, ctx());

  if (r.emulated) {
    strictEqual(r.end, "guest-error", ctx());
    strictEqual(r.exitCode, 125);
    match(r.message, /emulated/);
    match(r.message, /KVM_EXIT_INTERNAL_ERROR/);
    match(r.message, /RIP 0x[0-9a-f]+/);
    match(r.message, /instruction bytes( [0-9a-f]{2})+/);
    ok(!r.message.includes("\n"), "the stop message is one line");
    ok(progress.some((l) => l.includes("guest code is emulated on this host")), ctx());
    ok(r.cmdline.includes("noxsave clearcpuid=cx16"));
  } else {
    // With hardware virtualization the kernel boots on; without a root file
    // system it panics and (panic=-1) reboots, which ends the VM.
    ok(r.end === "reset" || r.end === "poweroff", ctx());
  }
}

hostTest(NAME, ["kvm", "kernel"], bootTest);
