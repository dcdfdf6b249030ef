/**
 * Notify/interrupt round trip: a guest writes a doorbell (as a virtio driver
 * writes QueueNotify), the host's main thread — where skiff's virtio devices
 * live (devices/virtio/mmio_host.ts) — sees it and raises an interrupt, and
 * the guest sleeps in `hlt` until its handler ran. Measured four ways:
 *
 * - notify by **MMIO exit** (the vCPU Worker's bus device posts a message to
 *   the main thread) or by **ioeventfd**, the kvm engine's path (KVM signals
 *   an eventfd in the kernel without leaving `KVM_RUN`; the main thread waits
 *   for it with `poll` on the FFI thread pool, as devices/vhost_user does);
 * - interrupt by **KVM_IRQ_LINE** (assert + deassert, two ioctls) or by
 *   **irqfd** (one eventfd write; KVM injects it).
 *
 * Prints `notify-cost mmio-exit=<µs> ioeventfd=<µs> ratio=<r>` (both with
 * KVM_IRQ_LINE) and `irq-cost irq-line=<µs> irqfd=<µs> ratio=<r>` (both with
 * the MMIO exit), µs per round trip, medians of alternating rounds; a ratio
 * above 1 means the eventfd form is faster. Every round trip wakes the main
 * thread from another thread, so on a loaded machine the medians are noisy:
 * `min-ratio` compares the fastest rounds, closer to the intrinsic cost. A guest write that an ioeventfd
 * should have absorbed but that still exits fails the run.
 *
 * @module
 */

import { Assembler, mem } from "../init/asm/mod.ts";
import { debugExitSpec } from "../devices/legacy/debug_exit.ts";
import { drainEventfd, signalEventfd, StopSignal, waitReadable } from "../kvm_ffi/eventfd.ts";
import { close, EFD, eventfd } from "../kvm_ffi/libc.ts";
import { RegionMemory } from "./memory.ts";
import { Vm, type VmStop } from "./vm.ts";
import { setupLongMode, X86_BOOT } from "./x86/long_mode.ts";
import { DoorbellHost } from "./testing/doorbell_device.ts";
import { TimerDeviceHost } from "./testing/timer_device.ts";

/** Round trips per measurement. */
export const TRIPS = 2_000;
/** Alternating rounds per variant. */
export const ROUNDS = 7;

const RAM = 4 << 20;
const DOORBELL = 0xd000_0000;
const GSI = 20; // through the IOAPIC, as the virtio-mmio devices
const VECTOR = 0x30;
const CODE = 0x200000;
const STACK = 0x280000;
const FLAG = 0x300000;
const IDT = 0x380000;
const DEADLINE_MS = 60_000;

/** Notify and interrupt mechanisms of one variant. */
export interface Variant {
  notify: "mmio-exit" | "ioeventfd";
  irq: "irq-line" | "irqfd";
}

function guestProgram(trips: number): { bytes: Uint8Array; isr: number } {
  const a = new Assembler();
  const abs = (addr: number, size: 8 | 16 | 32 | 64) => mem({ disp: addr, size });
  const reg = (off: number) => mem({ base: "rbx", disp: off, size: 32 });
  // LAPIC software-enable; IOAPIC pin GSI → VECTOR, edge, unmasked.
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xf0), 0x1ff);
  a.mov("ebx", 0xfec00000);
  a.mov(reg(0x00), 0x10 + 2 * GSI);
  a.mov(reg(0x10), VECTOR);
  a.mov(reg(0x00), 0x11 + 2 * GSI);
  a.mov(reg(0x10), 0);
  a.mov("ebx", DOORBELL);
  a.mov("ecx", trips);
  a.out(0x81, "al"); // start mark
  a.label("trip");
  a.mov(abs(FLAG, 32), 0);
  a.mov(reg(0), "ecx"); // the doorbell
  a.label("wait");
  a.cli();
  a.mov("eax", abs(FLAG, 32));
  a.test("eax", "eax");
  a.jne("woken");
  a.sti();
  a.hlt();
  a.jmp("wait");
  a.label("woken");
  a.dec("ecx");
  a.jne("trip");
  a.out(0x82, "al"); // end mark
  a.mov("dx", 0x501);
  a.out("dx", "al");
  a.hlt();
  a.label("isr");
  a.push("rbx");
  a.mov(abs(FLAG, 32), 1);
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xb0), 0); // EOI
  a.pop("rbx");
  a.iretq();
  const out = a.assemble({ origin: CODE });
  return { bytes: out.bytes, isr: out.labels.get("isr")! };
}

async function waitOrStop(vm: Vm, what: string): Promise<VmStop> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) =>
    timer = setTimeout(() => r("timeout"), DEADLINE_MS)
  );
  try {
    const first = await Promise.race([vm.wait(), timeout]);
    if (first !== "timeout") return first;
    await vm.stop();
    throw new Error(`${what}: guest did not finish within ${DEADLINE_MS} ms`);
  } finally {
    clearTimeout(timer);
  }
}

/** One run of `trips` round trips; returns µs per round trip. */
export async function runVariant(v: Variant, trips: number): Promise<number> {
  const what = `${v.notify}+${v.irq}`;
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: RAM }], "skiff-notify-cost");
  const vm = Vm.create({ memory, pit: false });
  const fds: number[] = [];
  const stop = new StopSignal();
  let poller: Promise<void> = Promise.resolve();
  try {
    const timer = new TimerDeviceHost(0x80);
    // In the ioeventfd variant the doorbell stays mapped, silent, to count
    // writes the kernel did not absorb.
    const doorbell = new DoorbellHost("doorbell", DOORBELL, v.notify === "mmio-exit");
    vm.addDevice(timer.spec);
    vm.addDevice(doorbell.spec);
    vm.addDevice(debugExitSpec());
    let raise: () => void;
    if (v.irq === "irqfd") {
      const fd = eventfd(0, EFD.CLOEXEC);
      fds.push(fd);
      vm.irqfd(fd, GSI);
      raise = () => signalEventfd(fd);
    } else {
      raise = () => vm.pulseIrq(GSI);
    }
    if (v.notify === "ioeventfd") {
      const fd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
      fds.push(fd);
      vm.ioeventfd(fd, DOORBELL, 4);
      poller = (async () => {
        while (await waitReadable(fd, stop) === "ready") {
          if (drainEventfd(fd) > 0n) raise();
        }
      })();
    } else {
      vm.onDeviceMessage("doorbell", () => raise());
    }
    const vcpu = vm.createVcpu();
    vcpu.fd.setCpuid2(vm.kvm.supportedCpuid());
    const { bytes, isr } = guestProgram(trips);
    memory.write(CODE, bytes);
    const gate = IDT + 16 * VECTOR; // 64-bit interrupt gate to the handler
    memory.writeU16(gate, isr & 0xffff);
    memory.writeU16(gate + 2, X86_BOOT.BOOT_CS);
    memory.writeU8(gate + 4, 0);
    memory.writeU8(gate + 5, 0x8e);
    memory.writeU16(gate + 6, (isr >>> 16) & 0xffff);
    memory.writeU32(gate + 8, 0);
    setupLongMode(memory, vcpu.fd, { entry: CODE, stack: STACK });
    const sregs = vcpu.fd.getSregs();
    vcpu.fd.setSregs({ ...sregs, idt: { base: BigInt(IDT), limit: 256 * 16 - 1 } });
    await vm.start();
    const end = await waitOrStop(vm, what);
    if (end.kind !== "poweroff") throw new Error(`${what}: guest ended with ${end.kind}`);
    if (v.notify === "ioeventfd" && doorbell.exits !== 0) {
      throw new Error(`${what}: ${doorbell.exits} doorbell writes exited despite the ioeventfd`);
    }
    if (v.notify === "mmio-exit" && doorbell.exits !== trips) {
      throw new Error(`${what}: ${doorbell.exits} doorbell exits, expected ${trips}`);
    }
    return timer.elapsedMs() * 1000 / trips;
  } finally {
    stop.fire();
    await poller;
    stop[Symbol.dispose]();
    await vm.close();
    for (const fd of fds) close(fd);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Runs the variants in alternating rounds; returns the `notify-cost` and `irq-cost` lines. */
export async function bench(): Promise<string[]> {
  const variants: Variant[] = [
    { notify: "mmio-exit", irq: "irq-line" },
    { notify: "ioeventfd", irq: "irq-line" },
    { notify: "mmio-exit", irq: "irqfd" },
  ];
  const us: number[][] = variants.map(() => []);
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, v] of variants.entries()) us[i].push(await runVariant(v, TRIPS));
  }
  const [base, ioevent, irqfd] = us.map(median);
  const [baseMin, ioeventMin, irqfdMin] = us.map((u) => Math.min(...u));
  const f = (x: number) => x.toFixed(2);
  return [
    `notify-cost mmio-exit=${f(base)} ioeventfd=${f(ioevent)} ratio=${f(base / ioevent)} ` +
    `min-ratio=${f(baseMin / ioeventMin)}`,
    `irq-cost irq-line=${f(base)} irqfd=${f(irqfd)} ratio=${f(base / irqfd)} ` +
    `min-ratio=${f(baseMin / irqfdMin)}`,
  ];
}

if (import.meta.main) console.log((await bench()).join("\n"));
