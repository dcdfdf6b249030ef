/**
 * Checks every struct layout, ioctl number and constant in `kvm_sys.ts`
 * against the system headers: a C program generated here prints the values
 * gcc computes from `<linux/kvm.h>`, and each must match.
 */

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { io, ioc, ior, iow, iowr } from "./ioc.ts";
import {
  ALL_LAYOUTS,
  KVM,
  KVM_CAP,
  KVM_EXIT,
  KVM_INTERNAL_ERROR,
  KVM_IOEVENTFD_FLAG,
  KVM_IRQCHIP,
  KVM_IRQFD_FLAG,
  KVM_MP_STATE,
  KVM_SYSTEM_EVENT,
} from "./kvm_sys.ts";

Deno.test("ioc encodes like asm-generic/ioctl.h", () => {
  // KVM_RUN = _IO(0xAE, 0x80) = 0xAE80; KVM_GET_REGS = _IOR(0xAE, 0x81, 144) = 0x8090AE81.
  strictEqual(io(0xae, 0x80), 0xae80n);
  strictEqual(ior(0xae, 0x81, 144), 0x8090ae81n);
  strictEqual(iow(0xae, 0x82, 144), 0x4090ae82n);
  strictEqual(iowr(0xae, 0x02, 4), 0xc004ae02n);
  let threw = false;
  try {
    ioc(0, 0xae, 0x100, 0);
  } catch (e) {
    threw = e instanceof RangeError && /nr 256/.test(e.message);
  }
  strictEqual(threw, true);
});

function cProgram(): { source: string; expected: Map<string, bigint> } {
  const lines: string[] = [];
  const expected = new Map<string, bigint>();
  const emit = (key: string, expr: string, value: number | bigint) => {
    lines.push(`  printf("%s %llu\\n", "${key}", (unsigned long long)(${expr}));`);
    expected.set(key, BigInt(value));
  };
  for (const l of ALL_LAYOUTS) {
    emit(`sizeof.${l.name}`, `sizeof(struct ${l.name})`, l.size);
    for (const [field, off] of Object.entries(l.fields)) {
      emit(`offsetof.${l.name}.${field}`, `offsetof(struct ${l.name}, ${field})`, off);
    }
  }
  for (const [name, value] of Object.entries(KVM)) emit(name, name, value);
  const groups: [string, Record<string, number>][] = [
    ["KVM_EXIT_", KVM_EXIT],
    ["KVM_CAP_", KVM_CAP],
    ["KVM_INTERNAL_ERROR_", KVM_INTERNAL_ERROR],
    ["KVM_SYSTEM_EVENT_", KVM_SYSTEM_EVENT],
    ["KVM_MP_STATE_", KVM_MP_STATE],
    ["KVM_IRQCHIP_", KVM_IRQCHIP],
    ["KVM_IRQFD_FLAG_", KVM_IRQFD_FLAG],
  ];
  for (const [prefix, table] of groups) {
    for (const [k, v] of Object.entries(table)) emit(prefix + k, prefix + k, v);
  }
  // The ioeventfd flags are enum bit numbers in the header.
  emit(
    "KVM_IOEVENTFD_FLAG_DATAMATCH",
    "KVM_IOEVENTFD_FLAG_DATAMATCH",
    KVM_IOEVENTFD_FLAG.DATAMATCH,
  );
  emit("KVM_IOEVENTFD_FLAG_PIO", "KVM_IOEVENTFD_FLAG_PIO", KVM_IOEVENTFD_FLAG.PIO);
  emit("KVM_IOEVENTFD_FLAG_DEASSIGN", "KVM_IOEVENTFD_FLAG_DEASSIGN", KVM_IOEVENTFD_FLAG.DEASSIGN);
  const source = [
    "#include <stdio.h>",
    "#include <stddef.h>",
    "#include <linux/kvm.h>",
    "int main(void) {",
    ...lines,
    "  return 0;",
    "}",
    "",
  ].join("\n");
  return { source, expected };
}

hostTest("kvm_sys layouts, ioctl numbers and constants match <linux/kvm.h>", ["gcc"], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-layout-" });
  try {
    const { source, expected } = cProgram();
    await Deno.writeTextFile(`${dir}/layout.c`, source);
    const cc = await new Deno.Command("gcc", {
      args: ["-O0", "-w", "-o", `${dir}/layout`, `${dir}/layout.c`],
    }).output();
    if (!cc.success) throw new Error(`gcc failed:\n${new TextDecoder().decode(cc.stderr)}`);
    const run = await new Deno.Command(`${dir}/layout`).output();
    strictEqual(run.success, true);
    const actual = new Map<string, bigint>();
    for (const line of new TextDecoder().decode(run.stdout).trim().split("\n")) {
      const [k, v] = line.split(" ");
      actual.set(k, BigInt(v));
    }
    const mismatches: string[] = [];
    for (const [k, v] of expected) {
      if (actual.get(k) !== v) mismatches.push(`${k}: skiff ${v}, header ${actual.get(k)}`);
    }
    deepStrictEqual(mismatches, []);
    strictEqual(actual.size, expected.size);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
