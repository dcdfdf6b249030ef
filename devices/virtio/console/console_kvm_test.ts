/**
 * L1: a guest program on /dev/kvm acts as a minimal virtio-mmio driver for
 * the console: checks MagicValue/DeviceID, negotiates VERSION_1, sets up the
 * receive and transmit queues, sends "ping" on the transmit queue, and
 * sleeps until an interrupt (IOAPIC → LAPIC → IDT vector 0x30) tells it the
 * host's reply arrived in its receive buffer.
 */
import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { Assembler, mem } from "../../../init/asm/mod.ts";
import { RegionMemory } from "../../../hv/memory.ts";
import { Vm, type VmStop } from "../../../hv/vm.ts";
import { setupLongMode, X86_BOOT } from "../../../hv/x86/long_mode.ts";
import { DEBUG_EXIT_PORT, debugExitSpec } from "../../legacy/debug_exit.ts";
import { hostTest } from "../../../tests/requirements.ts";
import { MMIO, MMIO_MAGIC } from "../mmio.ts";
import { VirtioMmioHost } from "../mmio_host.ts";
import { VirtioConsole } from "./device.ts";
import { HANG_MS } from "../../../tests/waits.ts";

const RAM = 8 << 20;
const BASE = 0xd000_0000;
const GSI = 20; // above the legacy PIC lines: reaches the guest only through the IOAPIC
const VECTOR = 0x30;
const CODE = 0x200000;
const STACK = 0x280000;
const Q0 = { desc: 0x300000, avail: 0x300080, used: 0x300100 };
const Q1 = { desc: 0x301000, avail: 0x301080, used: 0x301100 };
const RXBUF = 0x302000;
const PING = 0x302100;
const FLAG = 0x302200;
const RX_SEEN = 0x302204;
const IDT = 0x380000;

/** Bound on the guest, only to catch a hang (it needs well under a second when alone). */
const DEADLINE_MS = HANG_MS;

/** Waits for the VM to stop; past `ms`, stops it and fails with `state()`. */
async function waitOrStop(vm: Vm, ms: number, state: () => string): Promise<VmStop> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), ms));
  try {
    const first = await Promise.race([vm.wait(), timeout]);
    if (first !== "timeout") return first;
    await vm.stop();
    throw new Error(`guest did not finish within ${ms} ms: ${state()}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Builds the guest program; the debug-exit code is `(interrupts << 8) | rx length`, or 0xE0+n on a failed check. */
function guest(spinAfterNotify: number): { bytes: Uint8Array; isr: number } {
  const a = new Assembler();
  const reg = (off: number, size: 8 | 16 | 32 | 64 = 32) => mem({ base: "rbx", disp: off, size });
  const abs = (addr: number, size: 8 | 16 | 32 | 64) => mem({ disp: addr, size });
  const fail = (n: number) => `fail${n}`;

  // Interrupt controllers: LAPIC software-enable, IOAPIC pin GSI → VECTOR, edge, unmasked.
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xf0), 0x1ff);
  a.mov("ebx", 0xfec00000);
  a.mov(reg(0x00), 0x10 + 2 * GSI);
  a.mov(reg(0x10), VECTOR);
  a.mov(reg(0x00), 0x11 + 2 * GSI);
  a.mov(reg(0x10), 0);

  a.mov("ebx", BASE);
  a.mov("eax", reg(MMIO.MAGIC_VALUE));
  a.cmp("eax", MMIO_MAGIC);
  a.jne(fail(1));
  a.mov("eax", reg(MMIO.VERSION));
  a.cmp("eax", 2);
  a.jne(fail(2));
  a.mov("eax", reg(MMIO.DEVICE_ID));
  a.cmp("eax", 3);
  a.jne(fail(3));
  // §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK.
  a.mov(reg(MMIO.STATUS), 0);
  a.mov(reg(MMIO.STATUS), 1);
  a.mov(reg(MMIO.STATUS), 3);
  a.mov(reg(MMIO.DEVICE_FEATURES_SEL), 1);
  a.mov("eax", reg(MMIO.DEVICE_FEATURES));
  a.test("eax", 1); // VIRTIO_F_VERSION_1 = bit 32
  a.je(fail(4));
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 0);
  a.mov(reg(MMIO.DRIVER_FEATURES), 0);
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 1);
  a.mov(reg(MMIO.DRIVER_FEATURES), 1);
  a.mov(reg(MMIO.STATUS), 11);
  a.mov("eax", reg(MMIO.STATUS));
  a.test("eax", 8);
  a.je(fail(5));
  for (const [i, q] of [[0, Q0], [1, Q1]] as const) {
    a.mov(reg(MMIO.QUEUE_SEL), i);
    a.mov("eax", reg(MMIO.QUEUE_NUM_MAX));
    a.cmp("eax", 8);
    a.jb(fail(6));
    a.mov(reg(MMIO.QUEUE_NUM), 8);
    a.mov(reg(MMIO.QUEUE_DESC_LOW), q.desc);
    a.mov(reg(MMIO.QUEUE_DESC_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DRIVER_LOW), q.avail);
    a.mov(reg(MMIO.QUEUE_DRIVER_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DEVICE_LOW), q.used);
    a.mov(reg(MMIO.QUEUE_DEVICE_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_READY), 1);
  }
  a.mov(reg(MMIO.STATUS), 15);
  a.mov("eax", reg(MMIO.STATUS));
  a.cmp("eax", 15);
  a.jne(fail(7));
  // Receive buffer: descriptor 0 of queue 0, 64 bytes, device-writable.
  a.mov(abs(Q0.desc, 64), RXBUF);
  a.mov(abs(Q0.desc + 8, 32), 64);
  a.mov(abs(Q0.desc + 12, 16), 2);
  a.mov(abs(Q0.avail + 4, 16), 0);
  a.mov(abs(Q0.avail + 2, 16), 1);
  a.mov(reg(MMIO.QUEUE_NOTIFY), 0);
  // "ping": descriptor 0 of queue 1, 4 bytes, device-readable.
  a.mov(abs(PING, 32), 0x676e6970);
  a.mov(abs(Q1.desc, 64), PING);
  a.mov(abs(Q1.desc + 8, 32), 4);
  a.mov(abs(Q1.desc + 12, 16), 0);
  a.mov(abs(Q1.avail + 4, 16), 0);
  a.mov(abs(Q1.avail + 2, 16), 1);
  a.mov(reg(MMIO.QUEUE_NOTIFY), 1);
  if (spinAfterNotify > 0) {
    // Busy with IF clear while the host answers: the reply and its interrupt
    // are already there when the wait loop first looks.
    a.mov("ecx", spinAfterNotify);
    a.label("spin");
    a.dec("ecx");
    a.jne("spin");
  }
  // Sleep until an interrupt handler has seen the reply. Polling the used
  // index here instead would race: the host may publish the reply (and pulse
  // the line) before this loop first runs, while IF is still clear from boot,
  // and the guest would finish without ever taking the interrupt.
  a.label("wait");
  a.cli();
  a.mov("eax", abs(RX_SEEN, 32));
  a.test("eax", "eax");
  a.jne("got");
  a.sti();
  a.hlt();
  a.jmp("wait");
  a.label("got");
  a.mov("eax", abs(Q0.used + 8, 32)); // used->ring[0].len
  a.mov("ecx", abs(FLAG, 32));
  a.shl("ecx", 8);
  a.or("eax", "ecx");
  a.jmp("exit");
  for (let n = 1; n <= 7; n++) {
    a.label(fail(n));
    a.mov("eax", 0xe0 + n);
    a.jmp("exit");
  }
  a.label("exit");
  a.mov("dx", DEBUG_EXIT_PORT);
  a.out("dx", "eax");
  a.hlt();
  // The interrupt handler: read and acknowledge InterruptStatus, count, then
  // (as Linux's vring_interrupt does, after the acknowledgement) look at the
  // receive queue's used index; EOI. The device publishes the used entry
  // before it raises InterruptStatus, so a reply that lands after this check
  // comes with a fresh interrupt.
  a.label("isr");
  a.push("rax");
  a.push("rbx");
  a.mov("ebx", BASE);
  a.mov("eax", reg(MMIO.INTERRUPT_STATUS));
  a.mov(reg(MMIO.INTERRUPT_ACK), "eax");
  a.inc(abs(FLAG, 32));
  a.movzx("eax", abs(Q0.used + 2, 16));
  a.cmp("eax", 1);
  a.jne("isr_done");
  a.mov(abs(RX_SEEN, 32), 1);
  a.label("isr_done");
  a.mov("ebx", 0xfee00000);
  a.mov(reg(0xb0), 0);
  a.pop("rbx");
  a.pop("rax");
  a.iretq();
  const out = a.assemble({ origin: CODE });
  return { bytes: out.bytes, isr: out.labels.get("isr")! };
}

hostTest("console L1: guest virtio-mmio driver sends ping, gets the reply after an interrupt", [
  "kvm",
], () => pingPong(0));

hostTest("console L1: a reply that arrives while the guest has interrupts off is still delivered", [
  "kvm",
], () => pingPong(50_000));

hostTest("console L1: QueueNotify through KVM ioeventfds never exits to the vCPU thread", [
  "kvm",
], () => pingPong(0, true));

/**
 * Runs the guest of {@link guest}; `spin` iterations between the last notify
 * and the wait; `ioeventfd`: notifies go through {@link VirtioMmioHost.attachIoeventfds}.
 */
async function pingPong(spin: number, ioeventfd = false): Promise<void> {
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: RAM }]);
  const vm = Vm.create({ memory, pit: false });
  let notifier: AsyncDisposable | null = null;
  try {
    const console = new VirtioConsole();
    const host = new VirtioMmioHost(console, memory, { irq: () => vm.pulseIrq(GSI) });
    let received = "";
    console.console.onData = (b) => {
      received += new TextDecoder().decode(b);
      console.console.send(new TextEncoder().encode("pong!"));
    };
    let exitedNotifies = 0;
    vm.onDeviceMessage("virtio-console", (m) => {
      if ((m as { type?: string })?.type === "notify") exitedNotifies++;
      host.handle(m);
    });
    if (ioeventfd) notifier = host.attachIoeventfds(vm, BASE);
    vm.addDevice(host.spec("virtio-console", BASE, GSI));
    vm.addDevice(debugExitSpec());
    const vcpu = vm.createVcpu();
    vcpu.fd.setCpuid2(vm.kvm.supportedCpuid());
    const { bytes, isr } = guest(spin);
    memory.write(CODE, bytes);
    // IDT entry for VECTOR: a 64-bit interrupt gate to the handler.
    const gate = IDT + 16 * VECTOR;
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
    const stop = await waitOrStop(
      vm,
      DEADLINE_MS,
      () =>
        `interrupts=${memory.readU32(FLAG)} rxSeen=${memory.readU32(RX_SEEN)} ` +
        `rxUsed=${memory.readU16(Q0.used + 2)} received=${JSON.stringify(received)}`,
    );
    strictEqual(stop.kind, "poweroff");
    const code = stop.code ?? -1;
    strictEqual(code & 0xff, 5, `guest exit code 0x${code.toString(16)}`);
    strictEqual(received, "ping");
    deepStrictEqual(new TextDecoder().decode(memory.slice(RXBUF, 5)), "pong!");
    const interrupts = code >> 8;
    if (interrupts < 1) throw new Error(`the guest saw ${interrupts} interrupts`);
    // Both queues were notified once; with ioeventfds neither write left KVM_RUN.
    strictEqual(exitedNotifies, ioeventfd ? 0 : 2, "QueueNotify writes seen by the transport");
  } finally {
    await notifier?.[Symbol.asyncDispose]();
    await vm.close();
  }
}
