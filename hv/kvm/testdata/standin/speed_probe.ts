/**
 * A stand-in "vmlinux" that times what the stand-in kernel's design rests on
 * (hv/kvm/standin_speed_bench.ts runs it): the same loop and the same
 * `rep movsb` at CPL0 and at CPL3, an interrupt-gate round trip from CPL3,
 * port-I/O exits (through the `out` gate at CPL3), MMIO exits and ioeventfd
 * notifications from CPL3, `rdtsc` and `pause` at CPL3, and HLT woken by the local APIC timer.
 * Each section sits between two writes to the marks device
 * (testdata/marks_device.ts at {@link PROBE.MARKS}); then it powers off.
 *
 * @module
 */

import { Assembler, mem } from "../../../../init/asm/mod.ts";
import { LAYOUT } from "../../../boot/layout.ts";
import { segmentsElf } from "./elf.ts";
import { STANDIN } from "./layout.ts";
import { emitBoot, emitOut, emitPowerOff, type Ring, tablesSegment, VEC } from "./ring3.ts";

/** Sizes of the probe's sections, and its marks port. */
export const PROBE = {
  MARKS: 0x80,
  /** Iterations of `dec ecx; jnz` (two instructions each). */
  CPL0_LOOP: 20_000,
  CPL3_LOOP: 200_000_000,
  /** Bytes of one `rep movsb`. */
  CPL0_COPY: 16 * 1024,
  CPL3_COPY: 64 << 20,
  /** `int 0x81` round trips, port exits, MMIO exits, timer-woken HLTs. */
  INTS: 2000,
  PORT_EXITS: 2000,
  MMIO_EXITS: 2000,
  HLTS: 100,
  /** QueueNotify writes (ioeventfd: no exit to user space), `rdtsc`s, `pause`s. */
  NOTIFIES: 2000,
  RDTSCS: 100_000,
  PAUSES: 100_000,
  /** Local APIC timer period (ns): the HLT section should take HLTS × this. */
  TIMER_NS: 1_000_000,
  /** Guest RAM the probe needs (MiB). */
  MEMORY_MIB: 192,
} as const;

/** Mark pairs of each section, in order. */
export const PROBE_SECTIONS = {
  cpl0Loop: [0, 1],
  cpl0Copy: [2, 3],
  cpl0Ports: [4, 5],
  cpl3Loop: [6, 7],
  cpl3CopyCold: [8, 9],
  cpl3CopyWarm: [10, 11],
  cpl3Int: [12, 13],
  cpl3Ports: [14, 15],
  cpl3Mmio: [16, 17],
  cpl3Hlt: [18, 19],
  cpl3Notify: [20, 21],
  cpl3Rdtsc: [22, 23],
  cpl3Pause: [24, 25],
} as const;

/** The probe as an ELF file for skiff's vmlinux loader. */
export function speedProbeElf(): Uint8Array {
  const a = new Assembler();
  let ring: Ring = "kernel";
  const mark = (n: number) => {
    a.mov("al", n);
    a.mov("dx", PROBE.MARKS);
    emitOut(a, ring);
  };
  const loop = (n: number) => {
    const l = a.newLabel("loop");
    a.mov("ecx", n);
    a.label(l);
    a.dec("ecx");
    a.jnz(l);
  };
  const copy = (n: number) => {
    a.mov("esi", STANDIN.HEAP);
    a.mov("edi", STANDIN.HEAP + (64 << 20));
    a.mov("ecx", n);
    a.cld();
    a.repMovsb();
  };
  const times = (n: number, body: () => void) => {
    const l = a.newLabel("times");
    a.mov("r12d", n);
    a.label(l);
    body();
    a.dec("r12d");
    a.jnz(l);
  };
  // Entry at CPL0 (as the boot protocol leaves it): the CPL0 sections, then the boot.
  a.label("probe_entry");
  mark(0);
  loop(PROBE.CPL0_LOOP);
  mark(1);
  mark(2);
  copy(PROBE.CPL0_COPY);
  mark(3);
  mark(4);
  a.mov("dx", PROBE.MARKS + 1);
  times(PROBE.PORT_EXITS, () => emitOut(a, ring));
  mark(5);
  a.jmp("k_entry");
  emitBoot(a, { userEntry: "probe_user", timerTicks: PROBE.TIMER_NS });
  a.label("probe_user");
  ring = "user";
  mark(6);
  loop(PROBE.CPL3_LOOP);
  mark(7);
  mark(8);
  copy(PROBE.CPL3_COPY);
  mark(9);
  mark(10);
  copy(PROBE.CPL3_COPY);
  mark(11);
  mark(12);
  times(PROBE.INTS, () => a.int(VEC.NULL));
  mark(13);
  mark(14);
  a.mov("dx", PROBE.MARKS + 1);
  times(PROBE.PORT_EXITS, () => emitOut(a, ring));
  mark(15);
  mark(16);
  a.mov("ebx", LAYOUT.VIRTIO_MMIO_START);
  times(PROBE.MMIO_EXITS, () => a.mov("eax", mem({ base: "rbx", size: 32 })));
  mark(17);
  mark(18);
  times(PROBE.HLTS, () => a.int(VEC.IDLE));
  mark(19);
  // The builder's first virtio device (the console) has an ioeventfd per queue at QueueNotify.
  mark(20);
  a.mov("ebx", LAYOUT.VIRTIO_MMIO_START + 0x50);
  a.mov("eax", 0);
  times(PROBE.NOTIFIES, () => a.mov(mem({ base: "rbx", size: 32 }), "eax"));
  mark(21);
  mark(22);
  times(PROBE.RDTSCS, () => a.rdtsc());
  mark(23);
  mark(24);
  times(PROBE.PAUSES, () => a.pause());
  mark(25);
  emitPowerOff(a, ring);
  const { bytes, labels } = a.assemble({ origin: STANDIN.CODE });
  return segmentsElf([
    { addr: STANDIN.CODE, bytes, flags: 5 },
    { addr: STANDIN.TABLES, bytes: tablesSegment(labels), flags: 6 },
  ], labels.get("probe_entry")!);
}
