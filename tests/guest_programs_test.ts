/**
 * L1: small guest programs (assembled by init/asm) on /dev/kvm, exercising
 * the vCPU loop, exits, buses, the UART with its interrupt, multi-vCPU runs,
 * SMP bring-up through the in-kernel local APIC (INIT/SIPI), host
 * stop/pause and the fatal-exit errors.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { Assembler, mem } from "../init/asm/mod.ts";
import { hostTest } from "./requirements.ts";
import { HANG_MS, until } from "./waits.ts";
import { codeAddr, testGuest } from "../hv/testing/guest.ts";
import { RecorderHost } from "../hv/testing/recorder.ts";
import { debugExitSpec } from "../devices/legacy/debug_exit.ts";
import { Uart } from "../devices/legacy/uart.ts";
import { I8042Device } from "../devices/legacy/i8042.ts";
import { VmExitError } from "../hv/errors.ts";
import { RegionMemory } from "../hv/memory.ts";
import { Vm } from "../hv/vm.ts";
import { setupLongMode } from "../hv/x86/long_mode.ts";
import { createVcpus } from "../hv/kvm/builder.ts";
import { KVM_MP_STATE } from "../kvm_ffi/kvm_sys.ts";

const COM1 = 0x3f8;
const EXIT_PORT = 0x501;

/** Emits `out EXIT_PORT, code` (power-off with `code`). */
function exitWith(a: Assembler, code: number): void {
  a.mov("dx", EXIT_PORT);
  a.mov("al", code);
  a.out("dx", "al");
  a.hlt();
}

/** Prints `text` on COM1, polling LSR.THRE before each byte as Linux's early console does. */
function print(a: Assembler, text: string): void {
  const l = a.newLabel("str");
  const loop = a.newLabel("next"), wait = a.newLabel("wait"), done = a.newLabel("done");
  a.lea("rsi", { kind: "mem", scale: 1, disp: 0, rip: l });
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
  a.label(l);
  a.asciz(text);
  a.label(done);
}

hostTest("guest prints hello through the UART and halts", ["kvm"], async () => {
  const out: number[] = [];
  const uart = new Uart({ output: (b) => out.push(...b) });
  const a = new Assembler();
  print(a, "hello\n");
  a.hlt();
  await using g = testGuest({ programs: [a.assemble({ origin: codeAddr(0) }).bytes] });
  uart.attach(g.vm);
  await g.vm.start();
  const stop = await g.vm.wait();
  strictEqual(stop.kind, "hlt");
  uart.flush();
  strictEqual(new TextDecoder().decode(new Uint8Array(out)), "hello\n");
});

hostTest("UART receive raises IRQ 4 through the in-kernel PIC; the guest echoes the byte", [
  "kvm",
], async () => {
  const out: number[] = [];
  const uart = new Uart({ output: (b) => out.push(...b) });
  const IDT = 0x3000, VECTOR = 0x24; // PIC master remapped to 0x20: IRQ 4 → vector 0x24
  const a = new Assembler();
  // Remap and program the master 8259 (ICW1..ICW4), unmask only IRQ 4.
  for (const [port, v] of [[0x20, 0x11], [0x21, 0x20], [0x21, 0x04], [0x21, 0x01], [0x21, 0xef]]) {
    a.mov("al", v);
    a.out(port, "al");
  }
  a.mov("dx", COM1 + 1);
  a.mov("al", 0x01); // IER: received-data interrupt
  a.out("dx", "al");
  a.mov("dx", EXIT_PORT + 8); // tell the host we are ready (recorder)
  a.out("dx", "al");
  a.sti();
  a.label("idle");
  a.hlt();
  a.jmp("idle");
  a.align(16);
  a.label("handler");
  a.mov("dx", COM1);
  a.in("al", "dx"); // RBR: take the byte (drops the interrupt)
  a.out("dx", "al"); // echo it
  a.mov("bl", "al");
  a.mov("al", 0x20);
  a.out(0x20, "al"); // EOI
  a.mov("dx", EXIT_PORT);
  a.mov("al", "bl");
  a.out("dx", "al"); // power off with the byte as the code
  a.hlt();
  const { bytes, labels } = a.assemble({ origin: codeAddr(0) });
  const ready = new RecorderHost("ready", { ports: [{ base: EXIT_PORT + 8, length: 1 }] });
  await using g = testGuest({
    programs: [bytes],
    irqchip: true,
    devices: [debugExitSpec(), ready.spec],
  });
  uart.attach(g.vm);
  // A 64-bit interrupt gate for VECTOR (Intel SDM vol. 3 §6.14.1): selector 0x10, type 0xE, P.
  const h = BigInt(labels.get("handler")!);
  const lo = (h & 0xffffn) | (0x10n << 16n) | (0x8e00n << 32n) | (((h >> 16n) & 0xffffn) << 48n);
  g.memory.writeU64(IDT + VECTOR * 16, lo);
  g.memory.writeU64(IDT + VECTOR * 16 + 8, h >> 32n);
  const sregs = g.vm.vcpus[0].fd.getSregs();
  sregs.idt = { base: BigInt(IDT), limit: 256 * 16 - 1 };
  g.vm.vcpus[0].fd.setSregs(sregs);
  await g.vm.start();
  await until(() => ready.writes().length > 0, "the guest gets ready");
  strictEqual(ready.writes().length, 1);
  uart.receive(new Uint8Array([0x4b]));
  const stop = await g.vm.wait();
  deepStrictEqual([stop.kind, stop.code], ["poweroff", 0x4b]);
  uart.flush();
  deepStrictEqual(out, [0x4b]);
});

hostTest("guest MMIO reads and writes of 1, 2, 4 and 8 bytes reach the test device", [
  "kvm",
], async () => {
  const BASE = 0xd000_0000;
  const dev = new RecorderHost("mmio-dev", { mmio: [{ base: BASE, length: 0x1000 }] });
  const a = new Assembler();
  a.mov("ebx", BASE);
  a.mov(mem({ base: "rbx", disp: 0, size: 8 }), 0x11);
  a.mov(mem({ base: "rbx", disp: 2, size: 16 }), 0x2233);
  a.mov(mem({ base: "rbx", disp: 4, size: 32 }), 0x44556677);
  a.movabs("rax", 0x8899aabbccddeeffn);
  a.mov(mem({ base: "rbx", disp: 8 }), "rax");
  // Reads: the device answers 0xA0 + offset per byte.
  a.movzx("eax", mem({ base: "rbx", disp: 1, size: 8 }));
  a.cmp("eax", 0xa1);
  a.jne("fail1");
  a.movzx("eax", mem({ base: "rbx", disp: 2, size: 16 }));
  a.cmp("eax", 0xa3a2);
  a.jne("fail2");
  a.mov("eax", mem({ base: "rbx", disp: 4 }));
  a.cmp("eax", 0xa7a6a5a4);
  a.jne("fail3");
  a.mov("rax", mem({ base: "rbx", disp: 8 }));
  a.movabs("rcx", 0xafaeadacabaaa9a8n);
  a.cmp("rax", "rcx");
  a.jne("fail4");
  exitWith(a, 0x55);
  for (let i = 1; i <= 4; i++) {
    a.label(`fail${i}`);
    exitWith(a, i);
  }
  await using g = testGuest({
    programs: [a.assemble({ origin: codeAddr(0) }).bytes],
    devices: [dev.spec, debugExitSpec()],
  });
  await g.vm.start();
  const stop = await g.vm.wait();
  deepStrictEqual([stop.kind, stop.code], ["poweroff", 0x55]);
  deepStrictEqual(dev.writes(), [
    { offset: 0, len: 1, value: 0x11n },
    { offset: 2, len: 2, value: 0x2233n },
    { offset: 4, len: 4, value: 0x44556677n },
    { offset: 8, len: 8, value: 0x8899aabbccddeeffn },
  ]);
});

hostTest("two vCPUs run at the same time and both finish", ["kvm"], async () => {
  // Each vCPU raises its flag, then waits for the other's: only concurrent vCPUs get past.
  const FLAGS = 0x5000;
  const rec = new RecorderHost("done", { ports: [{ base: 0x510, length: 2 }] });
  const programs = [0, 1].map((id) => {
    const a = new Assembler();
    a.mov(mem({ disp: FLAGS + 8 * id, size: 64 }), 1);
    a.label("wait");
    a.pause();
    a.cmp(mem({ disp: FLAGS + 8 * (1 - id), size: 64 }), 1);
    a.jne("wait");
    a.mov("dx", 0x510 + id);
    a.mov("al", 0x30 + id);
    a.out("dx", "al");
    a.hlt();
    return a.assemble({ origin: codeAddr(id) }).bytes;
  });
  await using g = testGuest({ programs, devices: [rec.spec] });
  await g.vm.start();
  const timer = setTimeout(() => g.vm.stop(), HANG_MS); // only catches a hang
  const stop = await g.vm.wait();
  clearTimeout(timer);
  strictEqual(stop.kind, "hlt");
  deepStrictEqual(
    rec.writes().map((w) => [w.offset, Number(w.value)]).sort(),
    [[0, 0x30], [1, 0x31]],
  );
  deepStrictEqual((await Promise.all(g.vm.vcpus.map((v) => v.done))).map((s) => s.kind), [
    "hlt",
    "hlt",
  ]);
});

hostTest(
  "SMP bring-up: APs wait for INIT/SIPI; the BSP starts each through its local APIC, each reads its APIC ID",
  ["kvm"],
  async () => {
    // vCPUs as the kvm engine creates them (per-vCPU CPUID), only vCPU 0 set up.
    const CPUS = 3, SEEN = 0x6000, TRAMPOLINE = 0x8000;
    using memory = RegionMemory.memfd([{ guestAddr: 0, size: 4 << 20 }], "skiff-sipi-test");
    await using vm = Vm.create({ memory, pit: false });
    vm.addDevice(debugExitSpec());
    createVcpus(vm, CPUS, true);
    deepStrictEqual(vm.vcpus.map((v) => v.fd.getMpState()), [
      KVM_MP_STATE.RUNNABLE,
      KVM_MP_STATE.UNINITIALIZED,
      KVM_MP_STATE.UNINITIALIZED,
    ]);
    // The AP's real-mode trampoline (SIPI vector 8 → CS:IP 0800:0000): mark
    // SEEN + its initial APIC ID from CPUID leaf 1, then sleep.
    memory.write(
      TRAMPOLINE,
      new Uint8Array([
        ...[0x66, 0xb8, 1, 0, 0, 0], // mov eax, 1
        ...[0x0f, 0xa2], // cpuid
        ...[0x66, 0xc1, 0xeb, 24], // shr ebx, 24
        ...[0xc6, 0x87, SEEN & 0xff, SEEN >> 8, 1], // mov byte [bx + SEEN], 1
        ...[0xfa, 0xf4, 0xeb, 0xfc], // cli; hlt; jmp back
      ]),
    );
    const a = new Assembler();
    const icr = (off: number) => mem({ base: "rbx", disp: off, size: 32 });
    a.mov("ebx", 0xfee00000);
    a.mov(icr(0xf0), 0x1ff);
    for (let id = 1; id < CPUS; id++) {
      a.mov(icr(0x310), id << 24);
      a.mov(icr(0x300), 0x4500); // INIT, level assert
      a.mov(icr(0x310), id << 24);
      a.mov(icr(0x300), 0x4600 | (TRAMPOLINE >> 12)); // STARTUP
    }
    a.label("wait");
    a.pause();
    a.mov("al", mem({ disp: SEEN + 1, size: 8 }));
    a.and("al", mem({ disp: SEEN + 2, size: 8 }));
    a.je("wait");
    a.movzx("eax", mem({ disp: SEEN, size: 8 })); // 0: vCPU 0 ran no trampoline
    a.shl("eax", 8);
    a.or("al", mem({ disp: SEEN + 1, size: 8 }));
    a.mov("dx", 0x501);
    a.out("dx", "eax");
    a.hlt();
    memory.write(0x100000, a.assemble({ origin: 0x100000 }).bytes);
    setupLongMode(memory, vm.vcpus[0].fd, { entry: 0x100000, stack: 0x80000 });
    await vm.start();
    const timer = setTimeout(() => vm.stop(), 120_000); // only catches a hang
    const stop = await vm.wait();
    clearTimeout(timer);
    deepStrictEqual([stop.kind, stop.code], ["poweroff", 1]);
    deepStrictEqual([...memory.slice(SEEN, CPUS)], [0, 1, 1]);
  },
);

hostTest("the host pauses, inspects, resumes and stops a spinning guest", ["kvm"], async () => {
  // The guest counts in RAX and stores each count at COUNTER, where the host watches it.
  const COUNTER = 0x100000;
  const a = new Assembler();
  a.mov("ebx", COUNTER);
  a.xor("eax", "eax");
  a.label("spin");
  a.inc("rax");
  a.mov(mem({ base: "rbx", size: 64 }), "rax");
  a.jmp("spin");
  await using g = testGuest({
    programs: [a.assemble({ origin: codeAddr(0) }).bytes],
    irqchip: true,
  });
  const count = () => g.memory.readU64(COUNTER);
  await g.vm.start();
  await until(() => count() > 0n, "the guest runs");
  await g.vm.pause();
  strictEqual(g.vm.vcpus[0].state, "paused");
  const r1 = g.vm.vcpus[0].fd.getRegs().rax;
  ok(r1 > 0n);
  // Paused between the increment and the store at most.
  ok(count() === r1 || count() === r1 - 1n, `count ${count()} vs rax ${r1}`);
  const seen = count();
  // Time passes on the host (a busy machine only makes this check weaker, never wrong).
  await new Promise((r) => setTimeout(r, 50));
  strictEqual(g.vm.vcpus[0].fd.getRegs().rax, r1, "a paused guest must not run");
  strictEqual(count(), seen, "a paused guest must not write");
  g.vm.resume();
  await until(() => count() > r1, "the guest runs again after resume");
  const stop = await g.vm.stop();
  strictEqual(stop.kind, "stopped");
  ok(g.vm.vcpus[0].fd.getRegs().rax > r1, "the guest ran again after resume");
});

hostTest("i8042 reset command stops the VM as a guest reboot", ["kvm"], async () => {
  const kbd = new I8042Device();
  const a = new Assembler();
  a.mov("al", 0xfe);
  a.out(0x64, "al");
  a.label("spin");
  a.jmp("spin");
  await using g = testGuest({
    programs: [a.assemble({ origin: codeAddr(0) }).bytes],
    devices: [kbd.spec()],
  });
  await g.vm.start();
  const stop = await g.vm.wait();
  strictEqual(stop.kind, "reset");
  match(stop.source!, /i8042/);
});

hostTest("a triple fault ends the run with an error naming it and RIP", ["kvm"], async () => {
  // ud2 with an empty IDT: #UD → #GP → double fault → shutdown.
  const a = new Assembler();
  a.nop();
  a.ud2();
  await using g = testGuest({ programs: [a.assemble({ origin: codeAddr(0) }).bytes] });
  await g.vm.start();
  await rejects(g.vm.wait(), (e: unknown) => {
    ok(e instanceof VmExitError);
    match(e.message, /triple fault \(KVM_EXIT_SHUTDOWN\) on vCPU 0 at RIP 0x10001/);
    strictEqual(e.rip, BigInt(codeAddr(0) + 1));
    return true;
  });
});

hostTest("an instruction the emulator lacks ends with an emulation error, RIP and bytes", [
  "kvm",
], async () => {
  // cmpxchg16b [rax]: this host's emulated KVM reports KVM_INTERNAL_ERROR_EMULATION.
  const a = new Assembler();
  a.mov("eax", 0x6000);
  a.emit([0x48, 0x0f, 0xc7, 0x08]);
  a.hlt();
  await using g = testGuest({ programs: [a.assemble({ origin: codeAddr(0) }).bytes] });
  await g.vm.start();
  await rejects(g.vm.wait(), (e: unknown) => {
    ok(e instanceof VmExitError);
    match(e.message, /KVM_EXIT_INTERNAL_ERROR/);
    match(e.message, /at RIP 0x10005/);
    match(e.message, /instruction bytes 48 0f c7 08/);
    return true;
  });
});
