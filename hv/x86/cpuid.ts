/**
 * Per-vCPU CPUID. `KVM_GET_SUPPORTED_CPUID` describes one CPU with APIC
 * ID 0; each vCPU of an SMP guest must report its own initial APIC ID and
 * the package's logical processor count, or Linux sees every CPU as CPU 0's
 * sibling (as Firecracker's `cpuid` normalisation does). Intel SDM Vol. 2A,
 * CPUID: leaf 01H EBX[31:24] initial APIC ID, EBX[23:16] maximum addressable
 * logical processor IDs, EDX[28] HTT; leaves 0BH and 1FH EDX: x2APIC ID.
 *
 * @module
 */

import type { CpuidEntry } from "../../kvm_ffi/structs.ts";

/** EDX bit 28 of leaf 1: more than one logical processor per package. */
const HTT = 1 << 28;

/** `entries` as vCPU `id` of `count` should report them (a new array; the input is unchanged). */
export function cpuidForVcpu(
  entries: readonly CpuidEntry[],
  id: number,
  count: number,
): CpuidEntry[] {
  if (!Number.isInteger(id) || id < 0 || id > 254 || !Number.isInteger(count) || id >= count) {
    throw new RangeError(`cpuid: vCPU ${id} of ${count} (xAPIC IDs 0–254)`);
  }
  return entries.map((e) => {
    if (e.function === 1) {
      const logical = Math.min(count, 255);
      const ebx = (e.ebx & 0x0000ffff) | (logical << 16) | (id << 24);
      const edx = count > 1 ? e.edx | HTT : e.edx & ~HTT;
      return { ...e, ebx: ebx >>> 0, edx: edx >>> 0 };
    }
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: id };
    return { ...e };
  });
}
