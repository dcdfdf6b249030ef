import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import type { CpuidEntry } from "../../kvm_ffi/structs.ts";
import { cpuidForVcpu } from "./cpuid.ts";

const base: CpuidEntry[] = [
  { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 1, ecx: 2, edx: 3 },
  {
    function: 1,
    index: 0,
    flags: 0,
    eax: 0x806f8,
    ebx: 0x00010800,
    ecx: 0,
    edx: 0x178bfbff & ~(1 << 28),
  },
  { function: 0xb, index: 0, flags: 1, eax: 0, ebx: 1, ecx: 0x100, edx: 0 },
  { function: 0xb, index: 1, flags: 1, eax: 0, ebx: 1, ecx: 0x201, edx: 0 },
];

Deno.test("cpuid: each vCPU reports its APIC ID and the logical processor count", () => {
  const c = cpuidForVcpu(base, 3, 4);
  strictEqual(c[1].ebx >>> 24, 3);
  strictEqual((c[1].ebx >>> 16) & 0xff, 4);
  strictEqual(c[1].ebx & 0xffff, 0x0800, "CLFLUSH line size kept");
  strictEqual(c[1].edx & (1 << 28), 1 << 28, "HTT with more than one CPU");
  deepStrictEqual([c[2].edx, c[3].edx], [3, 3]);
  deepStrictEqual(c[0], base[0]);
  strictEqual(base[1].ebx, 0x00010800, "input unchanged");
  const one = cpuidForVcpu(base, 0, 1);
  strictEqual(one[1].edx & (1 << 28), 0);
  strictEqual(one[1].ebx >>> 24, 0);
  throws(() => cpuidForVcpu(base, 2, 2), /vCPU 2 of 2/);
});
