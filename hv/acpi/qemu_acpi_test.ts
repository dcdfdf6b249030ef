/**
 * L3q: real Linux executes skiff's AML. The Debian kernel boots under QEMU
 * (`-M microvm,acpi=on`, TCG) with skiff's virtio-mmio device declarations
 * added as an SSDT through Linux's ACPI table upgrade (an uncompressed cpio
 * with `kernel/firmware/acpi/*.aml` in front of the initramfs,
 * Documentation/admin-guide/acpi/initrd_table_override.rst; microvm ignores
 * QEMU's `-acpitable`); a busybox init then reports what Linux
 * made of them: the ACPI namespace node with its _HID and _UID, the
 * Memory32Fixed range claimed in /proc/iomem, the virtio_mmio driver
 * matching the device and probing skiff's window, and the interrupt
 * mapped as an edge-triggered IO-APIC line. (On /dev/kvm here the kernel
 * stops before it loads AML, so this is where the AML runs.)
 */

import { match, ok } from "node:assert/strict";
import { join } from "node:path";
import { hostTest } from "../../tests/requirements.ts";
import { assertKernel, busyboxInitramfs, testKernel } from "../qemu/testing.ts";
import { withTcgClock } from "../qemu/cmdline.ts";
import * as aml from "./aml.ts";
import { sdt, virtioDevicesAml } from "./tables.ts";

const kernel = await testKernel();
const NAME =
  "acpi: Linux under QEMU loads skiff's virtio-mmio AML (namespace, _CRS, driver, edge IRQ)";

/** Unused guest-physical space in microvm (its virtio-mmio transports sit at 0xfeb00000). */
const BASE = 0xd000_0000;
/** An IOAPIC pin microvm leaves free without virtio devices. */
const GSI = 22;

const SCRIPT = `
echo "SKIFF-BEGIN"
for d in /sys/bus/acpi/devices/LNRO0005:*; do
  echo "acpi-dev $(cat $d/path) hid=$(cat $d/hid) uid=$(cat $d/uid 2>/dev/null)"
done
grep -i lnro0005 /proc/iomem | sed 's/^ */iomem /'
for i in /sys/kernel/irq/*; do
  [ "$(cat $i/hwirq 2>/dev/null)" = "${GSI}" ] && echo "irq hwirq=${GSI} chip=$(cat $i/chip_name) type=$(cat $i/type)"
done
dmesg | grep -i "lnro0005\\|ACPI Error\\|ACPI BIOS Error" | sed 's/^/dmesg /'
echo "SKIFF-END"
`;

async function qemuRun(args: string[], deadlineMs: number): Promise<string> {
  const child = new Deno.Command("qemu-system-x86_64", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    const text = dec.decode(out.stdout);
    if (!out.success && !text.includes("SKIFF-END")) {
      throw new Error(
        `qemu ended with ${out.code}${
          out.signal ? ` (${out.signal}: the ${deadlineMs} ms deadline)` : ""
        }` +
          `\n--- stderr ---\n${dec.decode(out.stderr)}\n--- console ---\n${text}`,
      );
    }
    return text;
  } finally {
    clearTimeout(timer);
  }
}

hostTest(NAME, ["kernel", "qemu", "cpio"], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-acpi-qemu-" });
  try {
    const ssdt = sdt(
      "SSDT",
      2,
      "SKIFSSDT",
      aml.scope("\\_SB", virtioDevicesAml([{ base: BASE, gsi: GSI }])),
    );
    const stage = join(dir, "early");
    await Deno.mkdir(join(stage, "kernel/firmware/acpi"), { recursive: true });
    await Deno.writeFile(join(stage, "kernel/firmware/acpi/skiff.aml"), ssdt);
    const busybox = await busyboxInitramfs(dir, kernel, SCRIPT, ["virtio_mmio"]);
    const initrd = join(dir, "initrd");
    const cpio = await new Deno.Command("sh", {
      args: [
        "-c",
        `cd '${stage}' && find kernel | cpio -o -H newc --quiet > '${initrd}' && cat '${busybox}' >> '${initrd}'`,
      ],
    }).output();
    ok(cpio.success, new TextDecoder().decode(cpio.stderr));
    const output = await qemuRun([
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-M",
      "microvm,acpi=on",
      "-accel",
      "tcg",
      "-cpu",
      "max",
      "-m",
      "256M",
      "-serial",
      "stdio",
      "-kernel",
      kernel.bzImage!,
      "-initrd",
      initrd,
      "-append",
      // The host's TSC rate: PIT calibration under TCG fails on a loaded host.
      withTcgClock("console=ttyS0 panic=-1"),
    ], 10 * 60_000); // only catches a hang
    const text = output.replaceAll("\r\n", "\n");
    const report = text.slice(text.indexOf("SKIFF-BEGIN"), text.indexOf("SKIFF-END"));
    const ctx = `\n--- report ---\n${report}\n--- console ---\n${text.slice(-6000)}`;
    ok(report.length > 0, `no report from the guest${ctx}`);
    match(text, /ACPI: Table Upgrade: install \[SSDT- ?SKIFF ?- ?SKIFSSDT\]/, ctx);
    match(text, /ACPI: SSDT 0x[0-9A-F]+ [0-9A-F]+ \(v02 SKIFF {2}SKIFSSDT/, ctx);
    match(report, /acpi-dev \\_SB_\.V000 hid=LNRO0005 uid=0/, ctx);
    match(
      report,
      new RegExp(`iomem ${BASE.toString(16)}-${(BASE + 0x1ff).toString(16)} : LNRO0005:`),
      ctx,
    );
    // The virtio_mmio driver matched the _HID and probed the declared window
    // (nothing answers there, so it reports a wrong magic value).
    match(report, /dmesg .*virtio-mmio LNRO0005:\d+: Wrong magic value 0x[0-9a-f]+/i, ctx);
    match(report, new RegExp(`irq hwirq=${GSI} chip=IO-APIC type=edge`), ctx);
    ok(!/ACPI (BIOS )?Error/.test(report), `ACPI errors${ctx}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
