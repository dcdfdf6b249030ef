/**
 * Guest programs and the machine for the SMP virtio L1 tests
 * (mmio_smp_kvm_test.ts, smp_run.ts): N vCPUs started directly in long
 * mode, one {@link SmpTestDevice} behind the shared virtio-mmio transport
 * (register half in every vCPU Worker, device on the main thread,
 * notifications through ioeventfds), a doorbell the guest rings to talk to
 * the test, and a debug-exit port.
 *
 * - {@link smpPrograms}: vCPU 0 is a minimal driver (reset, features,
 *   one queue per vCPU, DRIVER_OK) and routes the device's interrupt to
 *   every vCPU (IOAPIC logical destination, flat model). Then every vCPU
 *   reads the device's registers and config, and submits `rounds`
 *   requests on its own queue, sleeping in `hlt` until its reply arrives.
 *   With `barrierAt`, each vCPU rings the doorbell after that many rounds
 *   and waits for the host's GO word (a quiet point to snapshot); with
 *   `marks`, vCPU 0 writes ports 0x81/0x82 around its rounds (a timer).
 * - {@link resetPrograms}: two vCPUs; vCPU 1 keeps notifying its queue
 *   while vCPU 0 resets the device, fills the old used ring with markers,
 *   rings the doorbell (the test then runs the device's held completion,
 *   which must be refused), checks the markers, re-initialises the device,
 *   and vCPU 1 then gets its requests served.
 *
 * Each vCPU writes its result word (0x600d, or 0xE0 + the failed check).
 *
 * @module
 */

import { Assembler, mem } from "../../../init/asm/mod.ts";
import type { VcpuFd } from "../../../kvm_ffi/kvm.ts";
import { KVM_MP_STATE } from "../../../kvm_ffi/kvm_sys.ts";
import type { RegionMemory } from "../../../hv/memory.ts";
import { setupLongMode, X86_BOOT } from "../../../hv/x86/long_mode.ts";
import { MMIO, MMIO_MAGIC } from "../mmio_regs.ts";
import { SMP_CONFIG_MAGIC, SMP_DEVICE_ID, SMP_QUEUE_SIZE, SMP_REPLY_ADD } from "./smp_device.ts";

/** Guest layout. */
export const L = {
  RAM: 8 << 20,
  BASE: 0xd000_0000,
  DOORBELL: 0xd010_0000,
  GSI: 20,
  VECTOR: 0x30,
  IDT: 0x390000,
  ISR: 0x391000,
  FLAGS: 0x380000,
  code: (i: number) => 0x200000 + i * 0x1000,
  stack: (i: number) => 0x2f0000 - i * 0x8000,
  ring: (q: number) => ({
    desc: 0x300000 + q * 0x1000,
    avail: 0x300000 + q * 0x1000 + 0x200,
    used: 0x300000 + q * 0x1000 + 0x400,
  }),
  req: (q: number) => 0x340000 + q * 0x100,
  resp: (q: number) => 0x340000 + q * 0x100 + 0x40,
} as const;

/** Words in the flags page. */
export const F = {
  READY: L.FLAGS,
  GO: L.FLAGS + 0x04,
  RESET_DONE: L.FLAGS + 0x08,
  HOST_FLUSHED: L.FLAGS + 0x0c,
  READY2: L.FLAGS + 0x10,
  HELD: L.FLAGS + 0x14,
  done: (i: number) => L.FLAGS + 0x40 + 4 * i,
  result: (i: number) => L.FLAGS + 0x80 + 4 * i,
  progress: (i: number) => L.FLAGS + 0xc0 + 4 * i,
} as const;

/** A vCPU's result word when every check passed. */
export const OK = 0x600d;
/** The debug-exit code vCPU 0 ends the run with. */
export const EXIT_CODE = 0x55;

const USED_BYTES = 4 + 8 * SMP_QUEUE_SIZE + 2;
/** vCPU 0 resets the device once vCPU 1 has notified this many times. */
export const RESET_AFTER_NOTIFIES = 16;
const AVAIL_BYTES = 4 + 2 * SMP_QUEUE_SIZE + 2;

const abs = (addr: number, size: 8 | 16 | 32 | 64 = 32) => mem({ disp: addr, size });
const reg = (off: number) => mem({ base: "rbx", disp: off, size: 32 });

function waitNonZero(a: Assembler, addr: number): void {
  const l = a.newLabel("wait");
  a.label(l);
  a.pause();
  a.mov("eax", abs(addr));
  a.test("eax", "eax");
  a.je(l);
}

/** LAPIC on, flat logical destination model, logical ID bit `i`. */
function lapic(a: Assembler, i: number): void {
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xf0), 0x1ff); // SVR: enabled, spurious vector 0xff
  a.mov(reg(0xe0), -1); // DFR: flat model
  a.mov(reg(0xd0), (1 << i) << 24); // LDR
}

/** The §3.1.1 sequence for `queues` queues (vCPU 0); jumps to `fail(n)` on a refused step. */
function driverInit(a: Assembler, queues: number, fail: (n: number) => string): void {
  a.mov("ebx", L.BASE);
  a.mov(reg(MMIO.STATUS), 0);
  a.mov(reg(MMIO.STATUS), 1);
  a.mov(reg(MMIO.STATUS), 3);
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 0);
  a.mov(reg(MMIO.DRIVER_FEATURES), 0);
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 1);
  a.mov(reg(MMIO.DRIVER_FEATURES), 1); // VIRTIO_F_VERSION_1
  a.mov(reg(MMIO.STATUS), 11);
  a.mov("eax", reg(MMIO.STATUS));
  a.test("eax", 8);
  a.je(fail(4));
  for (let q = 0; q < queues; q++) {
    const r = L.ring(q);
    a.mov(reg(MMIO.QUEUE_SEL), q);
    a.mov(reg(MMIO.QUEUE_NUM), SMP_QUEUE_SIZE);
    a.mov(reg(MMIO.QUEUE_DESC_LOW), r.desc);
    a.mov(reg(MMIO.QUEUE_DESC_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DRIVER_LOW), r.avail);
    a.mov(reg(MMIO.QUEUE_DRIVER_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DEVICE_LOW), r.used);
    a.mov(reg(MMIO.QUEUE_DEVICE_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_READY), 1);
  }
  a.mov(reg(MMIO.STATUS), 15);
}

/** Reads identification, status and config registers; `fail(1..3)` on a wrong value. */
function touchRegisters(a: Assembler, queues: number, fail: (n: number) => string): void {
  a.mov("ebx", L.BASE);
  a.mov("eax", reg(MMIO.MAGIC_VALUE));
  a.cmp("eax", MMIO_MAGIC);
  a.jne(fail(1));
  a.mov("eax", reg(MMIO.DEVICE_ID));
  a.cmp("eax", SMP_DEVICE_ID);
  a.jne(fail(2));
  a.mov("eax", reg(MMIO.CONFIG_GENERATION));
  a.mov("eax", reg(MMIO.CONFIG));
  a.cmp("eax", SMP_CONFIG_MAGIC);
  a.jne(fail(3));
  a.mov("eax", reg(MMIO.CONFIG + 4));
  a.cmp("eax", queues);
  a.jne(fail(3));
  a.mov("eax", reg(MMIO.STATUS));
  a.cmp("eax", 15);
  a.jne(fail(6));
}

/** Descriptors 0 (request, readable) → 1 (reply, writable) of queue `q`. */
function chain(a: Assembler, q: number): void {
  const r = L.ring(q);
  a.mov(abs(r.desc, 64), L.req(q));
  a.mov(abs(r.desc + 8), 4);
  a.mov(abs(r.desc + 12, 16), 1); // NEXT
  a.mov(abs(r.desc + 14, 16), 1);
  a.mov(abs(r.desc + 16, 64), L.resp(q));
  a.mov(abs(r.desc + 24), 4);
  a.mov(abs(r.desc + 28, 16), 2); // WRITE
}

/** Round r12d on queue `q`: the request `(q << 16) | r`, head 0 into the available ring. */
function submit(a: Assembler, q: number): void {
  const r = L.ring(q);
  a.mov("eax", "r12d");
  a.or("eax", q << 16);
  a.mov(abs(L.req(q)), "eax");
  a.mov("eax", "r12d");
  a.and("eax", SMP_QUEUE_SIZE - 1);
  a.mov(mem({ disp: r.avail + 4, index: "rax", scale: 2, size: 16 }), 0);
  a.lea("eax", mem({ base: "r12", disp: 1 }));
  a.mov(abs(r.avail + 2, 16), "ax");
}

/** Checks the reply of round r12d on queue `q`; `fail(5)` otherwise. */
function checkReply(a: Assembler, q: number, fail: (n: number) => string): void {
  a.mov("edx", "r12d");
  a.or("edx", q << 16);
  a.add("edx", SMP_REPLY_ADD);
  a.cmp("edx", abs(L.resp(q)));
  a.jne(fail(5));
}

/**
 * Failure labels: the result word gets 0xE0 + n, then `after` — except on
 * vCPU 0, which powers off at once with that code (nobody waits for a hang).
 */
function failures(a: Assembler, i: number, fail: (n: number) => string, after: string): void {
  for (let n = 1; n <= 9; n++) {
    a.label(fail(n));
    a.mov(abs(F.result(i)), 0xe0 + n);
    if (i === 0) {
      a.mov("dx", 0x501);
      a.mov("eax", 0xe0 + n);
      a.out("dx", "eax");
      a.hlt();
    } else a.jmp(after);
  }
}

/** vCPU 0's ending: wait for every vCPU's done word, then power off with {@link EXIT_CODE}. */
function finishAll(a: Assembler, cpus: number): void {
  for (let j = 1; j < cpus; j++) waitNonZero(a, F.done(j));
  a.mov("dx", 0x501);
  a.mov("eax", EXIT_CODE);
  a.out("dx", "eax");
  a.hlt();
}

/** The shared interrupt handler: read and acknowledge InterruptStatus, EOI. */
function isr(): Uint8Array {
  const a = new Assembler();
  a.push("rax");
  a.push("rbx");
  a.mov("ebx", L.BASE);
  a.mov("eax", reg(MMIO.INTERRUPT_STATUS));
  a.mov(reg(MMIO.INTERRUPT_ACK), "eax");
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xb0), 0);
  a.pop("rbx");
  a.pop("rax");
  a.iretq();
  return a.assemble({ origin: L.ISR }).bytes;
}

/** Programs of the N-vCPU request test (see the module doc). */
export function smpPrograms(
  opts: { cpus: number; rounds: number; barrierAt?: number; marks?: boolean },
): { programs: Uint8Array[]; isr: Uint8Array } {
  const { cpus, rounds } = opts;
  const programs = Array.from({ length: cpus }, (_, i) => {
    const a = new Assembler();
    const fail = (n: number) => `fail${n}`;
    lapic(a, i);
    if (i === 0) {
      // IOAPIC pin GSI → VECTOR, fixed, logical destination: every vCPU.
      a.mov("ebx", 0xfec00000);
      a.mov(reg(0x00), 0x10 + 2 * L.GSI);
      a.mov(reg(0x10), L.VECTOR | 0x800);
      a.mov(reg(0x00), 0x11 + 2 * L.GSI);
      a.mov(reg(0x10), ((1 << cpus) - 1) << 24);
      driverInit(a, cpus, fail);
      a.mov(abs(F.READY), 1);
    } else {
      waitNonZero(a, F.READY);
    }
    a.sti();
    touchRegisters(a, cpus, fail);
    chain(a, i);
    if (opts.marks && i === 0) a.out(0x81, "al"); // timer start (benchmarks)
    a.xor("r12d", "r12d");
    a.label("round");
    submit(a, i);
    a.mov("ebx", L.BASE);
    a.mov(reg(MMIO.QUEUE_NOTIFY), i);
    a.lea("edx", mem({ base: "r12", disp: 1 }));
    a.label("wait");
    a.cli();
    a.movzx("eax", abs(L.ring(i).used + 2, 16));
    a.cmp("eax", "edx");
    a.je("got");
    a.sti();
    a.hlt();
    a.jmp("wait");
    a.label("got");
    a.sti();
    checkReply(a, i, fail);
    a.mov(abs(F.progress(i)), "r12d");
    if (opts.barrierAt !== undefined) {
      a.cmp("r12d", opts.barrierAt - 1);
      a.jne("next");
      a.mov("ebx", L.DOORBELL);
      a.mov(reg(0), i);
      waitNonZero(a, F.GO);
      a.label("next");
    }
    a.inc("r12d");
    a.cmp("r12d", rounds);
    a.jne("round");
    if (opts.marks && i === 0) a.out(0x82, "al"); // timer end
    a.mov(abs(F.result(i)), OK);
    a.jmp("done");
    failures(a, i, fail, "done");
    a.label("done");
    a.mov(abs(F.done(i)), 1);
    if (i === 0) finishAll(a, cpus);
    else {
      a.label("park");
      a.cli();
      a.hlt();
      a.jmp("park");
    }
    return a.assemble({ origin: L.code(i) }).bytes;
  });
  return { programs, isr: isr() };
}

/** Programs of the reset-while-notifying test (two vCPUs; see the module doc). */
export function resetPrograms(opts: { rounds: number }): {
  programs: Uint8Array[];
  isr: Uint8Array;
} {
  const fail = (n: number) => `fail${n}`;
  const r1 = L.ring(1);
  // vCPU 0: driver, reset in the middle of vCPU 1's notifications, re-init.
  const a = new Assembler();
  lapic(a, 0);
  driverInit(a, 2, fail);
  a.mov(abs(F.READY), 1);
  waitNonZero(a, F.HELD); // the device holds a completion of queue 1
  a.label("busy"); // and vCPU 1 is notifying over and over
  a.pause();
  a.cmp(abs(F.progress(1)), RESET_AFTER_NOTIFIES);
  a.jb("busy");
  a.mov("ebx", L.BASE);
  a.mov(reg(MMIO.STATUS), 0);
  a.mov("eax", reg(MMIO.STATUS));
  a.test("eax", "eax");
  a.jne(fail(6));
  // The driver may now reuse the rings: markers in queue 1's used ring.
  a.cld();
  a.mov("edi", r1.used);
  a.mov("ecx", USED_BYTES);
  a.mov("al", 0xee);
  a.repStosb();
  a.mov(abs(F.RESET_DONE), 1);
  a.mov("ebx", L.DOORBELL);
  a.mov(reg(0), 0); // the test runs the held completion now
  waitNonZero(a, F.HOST_FLUSHED);
  a.mov("esi", r1.used);
  a.mov("ecx", USED_BYTES);
  a.label("marks");
  a.cmp(mem({ base: "rsi", size: 8 }), 0xee);
  a.jne(fail(7));
  a.inc("rsi");
  a.dec("ecx");
  a.jne("marks");
  for (const [addr, n] of [[r1.used, USED_BYTES], [r1.avail, AVAIL_BYTES]]) {
    a.mov("edi", addr);
    a.mov("ecx", n);
    a.xor("eax", "eax");
    a.repStosb();
  }
  driverInit(a, 2, fail);
  a.mov(abs(F.READY2), 1);
  a.mov(abs(F.result(0)), OK);
  a.jmp("done");
  failures(a, 0, fail, "done");
  a.label("done");
  a.mov(abs(F.done(0)), 1);
  finishAll(a, 2);
  const p0 = a.assemble({ origin: L.code(0) }).bytes;

  // vCPU 1: notifies its queue over and over until the reset, then normal rounds.
  const b = new Assembler();
  lapic(b, 1);
  waitNonZero(b, F.READY);
  touchRegisters(b, 2, fail);
  chain(b, 1);
  b.xor("r12d", "r12d");
  submit(b, 1);
  b.mov("ebx", L.BASE);
  b.label("spam");
  b.mov(reg(MMIO.QUEUE_NOTIFY), 1);
  b.inc(abs(F.progress(1)));
  b.mov("eax", abs(F.RESET_DONE));
  b.test("eax", "eax");
  b.je("spam");
  waitNonZero(b, F.READY2);
  b.label("round");
  submit(b, 1);
  b.mov("ebx", L.BASE);
  b.mov(reg(MMIO.QUEUE_NOTIFY), 1);
  b.lea("edx", mem({ base: "r12", disp: 1 }));
  b.label("poll");
  b.pause();
  b.movzx("eax", abs(r1.used + 2, 16));
  b.cmp("eax", "edx");
  b.jne("poll");
  checkReply(b, 1, fail);
  b.inc("r12d");
  b.cmp("r12d", opts.rounds);
  b.jne("round");
  b.mov(abs(F.result(1)), OK);
  b.jmp("done");
  failures(b, 1, fail, "done");
  b.label("done");
  b.mov(abs(F.done(1)), 1);
  b.label("park");
  b.cli();
  b.hlt();
  b.jmp("park");
  const p1 = b.assemble({ origin: L.code(1) }).bytes;
  return { programs: [p0, p1], isr: isr() };
}

/**
 * Loads `programs` and the ISR into `memory`, points vector
 * {@link L.VECTOR} at the ISR, and puts vCPU i at program i in long mode,
 * runnable (an AP started directly, without INIT/SIPI).
 */
export function loadPrograms(
  memory: RegionMemory,
  vcpus: readonly VcpuFd[],
  p: { programs: Uint8Array[]; isr: Uint8Array },
): void {
  memory.write(L.ISR, p.isr);
  const gate = L.IDT + 16 * L.VECTOR; // 64-bit interrupt gate to the handler
  memory.writeU16(gate, L.ISR & 0xffff);
  memory.writeU16(gate + 2, X86_BOOT.BOOT_CS);
  memory.writeU8(gate + 4, 0);
  memory.writeU8(gate + 5, 0x8e);
  memory.writeU16(gate + 6, (L.ISR >>> 16) & 0xffff);
  memory.writeU32(gate + 8, 0);
  p.programs.forEach((code, i) => {
    if (code.length > 0x1000) throw new RangeError(`program ${i}: ${code.length} bytes`);
    memory.write(L.code(i), code);
    const fd = vcpus[i];
    setupLongMode(memory, fd, { entry: L.code(i), stack: L.stack(i) });
    fd.setSregs({ ...fd.getSregs(), idt: { base: BigInt(L.IDT), limit: 256 * 16 - 1 } });
    fd.setMpState(KVM_MP_STATE.RUNNABLE);
  });
}
