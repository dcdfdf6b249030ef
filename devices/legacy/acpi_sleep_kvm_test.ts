/**
 * L1: a guest program on /dev/kvm drives the ACPI sleep registers the way
 * Linux's acpi_hw_extended_sleep does — clear WAK_STS in the status
 * register, then write SLP_TYP|SLP_EN to the control register. S3 is
 * ignored (skiff declares no `_S3`); S5 powers the VM off.
 */

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { Assembler } from "../../init/asm/mod.ts";
import { hostTest } from "../../tests/requirements.ts";
import { codeAddr, testGuest } from "../../hv/testing/guest.ts";
import { LAYOUT } from "../../hv/boot/layout.ts";
import { sleepSpec } from "./acpi_sleep.ts";
import { SLEEP } from "../../hv/acpi/tables.ts";

hostTest(
  "acpi sleep: a guest's S5 write to SLEEP_CONTROL_REG powers the VM off",
  ["kvm"],
  async () => {
    const a = new Assembler();
    a.mov("dx", LAYOUT.SLEEP_PORT + 1);
    a.mov("al", SLEEP.WAK_STS);
    a.out("dx", "al"); // clear WAK_STS
    a.in("al", "dx");
    a.mov("bl", "al"); // status reads back 0
    a.mov("dx", LAYOUT.SLEEP_PORT);
    a.mov("al", SLEEP.SLP_EN | (3 << SLEEP.SLP_TYP_SHIFT));
    a.out("dx", "al"); // S3: ignored
    a.mov("ecx", 0x33); // reached only if the S3 write did not stop the VM
    a.mov("al", SLEEP.SLP_EN | (SLEEP.S5_TYPE << SLEEP.SLP_TYP_SHIFT));
    a.out("dx", "al"); // S5: power off
    a.label("spin");
    a.jmp("spin");
    await using g = testGuest({
      programs: [a.assemble({ origin: codeAddr(0) }).bytes],
      devices: [sleepSpec()],
    });
    await g.vm.start();
    const stop = await g.vm.wait();
    deepStrictEqual([stop.kind, stop.source, stop.code], ["poweroff", "acpi-sleep", 0]);
    const regs = g.vm.vcpus[0].fd.getRegs();
    strictEqual(regs.rbx & 0xffn, 0n);
    strictEqual(regs.rcx, 0x33n);
  },
);
