/**
 * The stand-in kernel's machine setup: it leaves CPL0 as soon as it can.
 * On this workplace's /dev/kvm (kvm_pvm, DESIGN.md "This workplace's KVM")
 * code at CPL0 is emulated (~0.7 µs an instruction) while code at CPL3 runs
 * natively, so everything but a few instructions runs in user mode:
 *
 * - The **system tables** are data in the ELF (no instruction builds them):
 *   identity page tables for 4 GiB with 2 MiB pages, all user-accessible
 *   (the virtio windows, IOAPIC and local APIC included, so user-mode MMIO
 *   reaches the VMM like any MMIO); a GDT with kernel and user segments and a
 *   64-bit TSS (RSP0 for interrupts from CPL3); an IDT.
 * - **Boot** (CPL0, ~25 instructions): load them, enable the local APIC (LINT0
 *   masked, so the 8259 behind KVM's virtual wire stays out) with a periodic timer (a safety net: no wait can outlast a lost wake-up by
 *   more than one period), and `iretq` to CPL3 with interrupts off.
 * - **Gates from CPL3**: kvm_pvm turns `int n` in user mode into #UD at the
 *   `int` instruction (measured), so the #UD handler looks at the faulting
 *   bytes and, for `int` of one of the user gates below, steps over it and
 *   runs the gate's code; on hardware the gates are taken directly.
 * - **Port I/O** from CPL3 goes through a gate (`int 0x82`: `out dx, al` at
 *   CPL0): kvm_pvm does not keep RFLAGS.IOPL for user mode (measured: after
 *   an `iretq` with IOPL 3, user code reads IOPL 0 and `out` raises #GP(0)).
 *   Only the UART and the sleep port need it; MMIO works from CPL3.
 * - **Idle**: user code calls `int 0x80`; the gate (DPL 3) runs `sti; hlt`
 *   at CPL0 and returns after the next interrupt. With the in-kernel irqchip
 *   HLT blocks the vCPU thread, so an idle guest costs no host CPU. `sti`
 *   holds interrupts off for one more instruction, so one that became
 *   pending while user code ran (with IF = 0) wakes the `hlt` at once: no
 *   lost wake-up.
 * - **Interrupts** (device GSIs routed by the user code through the IOAPIC,
 *   and the timer): EOI to the local APIC, return. Nothing else: the user
 *   code polls its rings after every wake-up.
 * - **Faults**: print `skiff-standin: fault V error E rip R cs C rflags F cr2 A` on the UART and
 *   power off, so a bug is a stopped VM with a message, not a hang.
 *
 * @module
 */

import { type Assembler, mem, ref } from "../../../../init/asm/mod.ts";
import { gdtEntry } from "../../../x86/long_mode.ts";
import { LAYOUT } from "../../../boot/layout.ts";
import { SLEEP } from "../../../acpi/tables.ts";
import { STANDIN } from "./layout.ts";

/** GDT selectors. */
export const SEL = {
  KCODE: 0x08,
  KDATA: 0x10,
  /** User code and data, RPL 3. */
  UCODE: 0x18 | 3,
  UDATA: 0x20 | 3,
  TSS: 0x28,
} as const;

/** Interrupt vectors. */
export const VEC = {
  /** Device interrupts (every GSI the user code routes). */
  DEVICE: 0x20,
  /** Local APIC timer. */
  TIMER: 0x21,
  /** `int 0x80` from CPL3: wait for the next interrupt. */
  IDLE: 0x80,
  /** `int 0x81` from CPL3: return at once (measures the round trip). */
  NULL: 0x81,
  /** `int 0x82` from CPL3: `out dx, al` (port I/O from CPL3 faults here, see the module doc). */
  OUT: 0x82,
  /** Local APIC spurious vector. */
  SPURIOUS: 0xff,
} as const;

/** Offsets inside the tables segment at {@link STANDIN.TABLES}. */
const T = {
  PML4: 0x0000,
  PDPT: 0x1000,
  PD: 0x2000, // four pages
  GDT: 0x6000,
  GDTR: 0x6f00,
  IDTR: 0x6f10,
  IDT: 0x7000,
  TSS: 0x8000,
  SIZE: 0x9000,
} as const;

/** Local APIC registers (Intel SDM Vol. 3 §11.4.1, default base). */
const APIC = {
  EOI: LAYOUT.LAPIC_ADDR + 0xb0,
  SVR: LAYOUT.LAPIC_ADDR + 0xf0,
  LVT_LINT0: LAYOUT.LAPIC_ADDR + 0x350,
  LVT_TIMER: LAYOUT.LAPIC_ADDR + 0x320,
  TIMER_INIT: LAYOUT.LAPIC_ADDR + 0x380,
  TIMER_DIV: LAYOUT.LAPIC_ADDR + 0x3e0,
} as const;

/** Exceptions that push an error code (SDM Vol. 3 Table 6-1). */
const WITH_ERROR = new Set([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);

/** RFLAGS of user mode: IOPL 3 (port I/O), IF clear, reserved bit 1. */
export const USER_RFLAGS = 0x3002;

/** Options of {@link emitBoot}. */
export interface BootOptions {
  /** Label of the user-mode entry (runs at CPL3 on the user stack). */
  userEntry: string;
  /**
   * Local APIC timer period in APIC timer ticks (divide by 1; KVM's APIC
   * bus runs at 1 GHz, so ticks are nanoseconds); 0 = no timer.
   */
  timerTicks?: number;
}

/**
 * Emits the CPL0 part at the current position (the ELF entry must be the
 * first instruction emitted here): boot, the idle gate, the interrupt and
 * fault handlers. Label names start with `k_`.
 */
export function emitBoot(a: Assembler, opts: BootOptions): void {
  const abs32 = (addr: number) => {
    // [addr] with addr ≥ 2 GiB does not fit a sign-extended disp32: go through rax.
    a.mov("eax", addr);
    return mem({ base: "rax", size: 32 });
  };
  a.label("k_entry");
  a.lgdt(mem({ disp: STANDIN.TABLES + T.GDTR }));
  a.lidt(mem({ disp: STANDIN.TABLES + T.IDTR }));
  a.mov("eax", STANDIN.TABLES + T.PML4);
  a.mov("cr3", "rax");
  a.mov("ax", SEL.TSS);
  a.ltr("ax");
  a.mov("ax", SEL.KDATA);
  a.mov("ss", "ax");
  a.mov("esp", STANDIN.KSTACK_TOP);
  // Local APIC on (SVR bit 8) with the spurious vector; the timer as a safety net.
  a.mov(abs32(APIC.SVR), 0x100 | VEC.SPURIOUS);
  // LINT0 masked: KVM resets the BSP's LVT0 to ExtINT (the BIOS's virtual wire) and routes
  // GSIs 0–15 to its 8259 too, and an unprogrammed 8259 hands IRQ n over as vector n — the
  // vsock device's GSI 6 arrived as #UD before this (measured).
  a.mov(abs32(APIC.LVT_LINT0), 1 << 16);
  if (opts.timerTicks) {
    a.mov(abs32(APIC.TIMER_DIV), 0xb); // divide by 1
    a.mov(abs32(APIC.LVT_TIMER), VEC.TIMER | (1 << 17)); // periodic
    a.mov(abs32(APIC.TIMER_INIT), opts.timerTicks);
  }
  // To CPL3: SS, RSP, RFLAGS, CS, RIP (SDM Vol. 3 §6.14.3, IRET to a lower privilege).
  a.push(SEL.UDATA);
  a.push(STANDIN.USTACK_TOP);
  a.push(USER_RFLAGS);
  a.push(SEL.UCODE);
  a.push(ref(opts.userEntry));
  a.mov("ax", SEL.UDATA);
  a.mov("ds", "ax");
  a.mov("es", "ax");
  a.iretq();

  // int 0x80 (interrupt gate: IF is clear here): wait for one interrupt. No `cli` after the
  // hlt: iretq restores the caller's IF = 0, and an interrupt in between is harmless.
  a.label("k_idle");
  a.sti();
  a.hlt();
  a.iretq();

  // Device and timer interrupts, spurious: EOI (not for spurious) and return.
  a.label("k_irq");
  a.push("rax");
  a.mov(abs32(APIC.EOI), 0);
  a.pop("rax");
  a.iretq();
  a.label("k_spurious");
  a.label("k_null");
  a.iretq();
  a.label("k_out");
  a.out("dx", "al");
  a.iretq();

  // #UD: kvm_pvm raises it for `int n` in user mode instead of going through the gate
  // (measured: `int 0x82` at CPL3 faults with vector 6 at its own RIP). The handler
  // does what the gate would: for `int` of a user gate it steps over the instruction
  // and runs the gate's code with the same frame.
  a.label("k_fault_6");
  a.push("rax");
  a.mov("rax", mem({ base: "rsp", disp: 8, size: 64 })); // the faulting RIP
  a.cmp(mem({ base: "rax", size: 8 }), 0xcd);
  a.jne("k_ud_real");
  a.movzx("eax", mem({ base: "rax", disp: 1, size: 8 }));
  a.add(mem({ base: "rsp", disp: 8, size: 64 }), 2);
  for (const [v, l] of [[VEC.IDLE, "k_idle"], [VEC.NULL, "k_null"], [VEC.OUT, "k_out"]] as const) {
    const next = a.newLabel("ud");
    a.cmp("eax", v);
    a.jne(next);
    a.pop("rax");
    a.jmp(l);
    a.label(next);
  }
  a.sub(mem({ base: "rsp", disp: 8, size: 64 }), 2);
  a.label("k_ud_real");
  a.pop("rax");
  a.push(0);
  a.push(6);
  a.jmp("k_fault");
  // Faults: one stub per vector pushes (a zero error code and) the vector.
  for (let v = 0; v < 32; v++) {
    if (v === 6) continue;
    a.label(`k_fault_${v}`);
    if (!WITH_ERROR.has(v)) a.push(0);
    a.push(v);
    a.jmp("k_fault");
  }
  a.label("k_unexpected");
  a.push(0);
  a.push(0xee);
  a.label("k_fault");
  // [rsp] vector, [rsp+8] error code, [rsp+16] RIP.
  emitPuts(a, "\nskiff-standin: fault ");
  a.mov("rbx", mem({ base: "rsp", size: 64 }));
  a.mov("ecx", 2);
  a.call("k_hex");
  emitPuts(a, " error ");
  a.mov("rbx", mem({ base: "rsp", disp: 8, size: 64 }));
  a.mov("ecx", 8);
  a.call("k_hex");
  emitPuts(a, " rip ");
  a.mov("rbx", mem({ base: "rsp", disp: 16, size: 64 }));
  a.mov("ecx", 16);
  a.call("k_hex");
  emitPuts(a, " cs ");
  a.mov("rbx", mem({ base: "rsp", disp: 24, size: 64 }));
  a.mov("ecx", 4);
  a.call("k_hex");
  emitPuts(a, " rflags ");
  a.mov("rbx", mem({ base: "rsp", disp: 32, size: 64 }));
  a.mov("ecx", 8);
  a.call("k_hex");
  emitPuts(a, " cr2 ");
  a.mov("rbx", "cr2");
  a.mov("ecx", 16);
  a.call("k_hex");
  emitPuts(a, "\n");
  emitPowerOff(a);

  // k_hex: print the low ecx nibbles of rbx in hex, most significant first (clobbers rax, rcx, rdx, r8).
  a.label("k_hex");
  a.mov("r8d", "ecx");
  a.label("k_hex_next");
  a.lea("ecx", mem({ index: "r8", scale: 4, disp: -4 }));
  a.mov("rax", "rbx");
  a.shr("rax", "cl");
  a.and("eax", 15);
  a.cmp("al", 10);
  a.jb("k_hex_digit");
  a.add("al", 0x61 - 10 - 0x30);
  a.label("k_hex_digit");
  a.add("al", 0x30);
  a.mov("dx", 0x3f8);
  a.out("dx", "al");
  a.dec("r8d");
  a.jnz("k_hex_next");
  a.ret();
}

/** A 16-byte IDT gate (SDM Vol. 3 §6.14.1): interrupt gate to `handler` in the kernel code segment. */
function gate(dv: DataView, at: number, handler: number, dpl: number): void {
  dv.setUint16(at, handler & 0xffff, true);
  dv.setUint16(at + 2, SEL.KCODE, true);
  dv.setUint8(at + 4, 0); // IST 0: the TSS's RSP0 from CPL3, the current stack at CPL0
  dv.setUint8(at + 5, 0x8e | (dpl << 5)); // P, DPL, type 0xE (64-bit interrupt gate)
  dv.setUint16(at + 6, (handler >>> 16) & 0xffff, true);
  dv.setUint32(at + 8, 0, true); // handler < 4 GiB
  dv.setUint32(at + 12, 0, true);
}

/**
 * The tables segment (loaded at {@link STANDIN.TABLES}) for code assembled
 * with {@link emitBoot}: `labels` are the assembled addresses of its handlers.
 */
export function tablesSegment(labels: ReadonlyMap<string, number>): Uint8Array {
  const at = (name: string) => {
    const v = labels.get(name);
    if (v === undefined) throw new Error(`stand-in tables: no label ${name}`);
    return v;
  };
  const b = new Uint8Array(T.SIZE);
  const dv = new DataView(b.buffer);
  const base = STANDIN.TABLES;
  const U = 0x7n; // present, writable, user (SDM Vol. 3 §4.5, Table 4-15…4-17)
  dv.setBigUint64(T.PML4, BigInt(base + T.PDPT) | U, true);
  for (let g = 0; g < 4; g++) {
    const pd = T.PD + g * 0x1000;
    dv.setBigUint64(T.PDPT + 8 * g, BigInt(base + pd) | U, true);
    for (let j = 0; j < 512; j++) {
      const phys = (BigInt(g) << 30n) | (BigInt(j) << 21n);
      dv.setBigUint64(pd + 8 * j, phys | U | 0x80n, true); // PS: 2 MiB page
    }
  }
  // GDT: null, kernel code, kernel data, user code, user data, 64-bit TSS (two slots).
  const gdt = [
    0n,
    gdtEntry(0xa09b, 0, 0xfffff),
    gdtEntry(0xc093, 0, 0xfffff),
    gdtEntry(0xa0fb, 0, 0xfffff),
    gdtEntry(0xc0f3, 0, 0xfffff),
  ];
  gdt.forEach((e, i) => dv.setBigUint64(T.GDT + 8 * i, e, true));
  const tss = base + T.TSS;
  // System descriptor: limit 103, base, type 9 (available 64-bit TSS), P (SDM Vol. 3 §8.2.3).
  dv.setBigUint64(T.GDT + SEL.TSS, gdtEntry(0x0089, tss, 103), true);
  dv.setUint32(T.GDT + SEL.TSS + 8, 0, true); // base bits 63:32
  dv.setUint16(T.GDTR, SEL.TSS + 16 - 1, true);
  dv.setBigUint64(T.GDTR + 2, BigInt(base + T.GDT), true);
  // IDT: faults, the device and timer interrupts, the idle gate (DPL 3), the rest unexpected.
  for (let v = 0; v < 256; v++) {
    let h = at("k_unexpected");
    if (v < 32) h = at(`k_fault_${v}`);
    else if (v === VEC.DEVICE || v === VEC.TIMER) h = at("k_irq");
    else if (v === VEC.SPURIOUS) h = at("k_spurious");
    else if (v === VEC.IDLE) h = at("k_idle");
    else if (v === VEC.NULL) h = at("k_null");
    else if (v === VEC.OUT) h = at("k_out");
    const user = v === VEC.IDLE || v === VEC.NULL || v === VEC.OUT;
    gate(dv, T.IDT + 16 * v, h, user ? 3 : 0);
  }
  dv.setUint16(T.IDTR, 256 * 16 - 1, true);
  dv.setBigUint64(T.IDTR + 2, BigInt(base + T.IDT), true);
  // TSS: RSP0 at offset 4; I/O map base past the limit (no bitmap: IOPL 3 allows all ports).
  dv.setBigUint64(T.TSS + 4, BigInt(STANDIN.KSTACK_TOP), true);
  dv.setUint16(T.TSS + 102, 104, true);
  return b;
}

/** Where code runs: port I/O is an `out` at CPL0 and the {@link VEC.OUT} gate at CPL3. */
export type Ring = "kernel" | "user";

/** `out dx, al` from `ring`. */
export function emitOut(a: Assembler, ring: Ring): void {
  if (ring === "kernel") a.out("dx", "al");
  else a.int(VEC.OUT);
}

/** Prints `s` on COM1 (clobbers rax, rdx). */
export function emitPuts(a: Assembler, s: string, ring: Ring = "kernel"): void {
  a.mov("dx", 0x3f8);
  for (const ch of new TextEncoder().encode(s)) {
    a.mov("al", ch);
    emitOut(a, ring);
  }
}

/** Powers off through the ACPI sleep port, as Linux's `poweroff` does on skiff's machine. */
export function emitPowerOff(a: Assembler, ring: Ring = "kernel"): void {
  a.mov("dx", LAYOUT.SLEEP_PORT);
  a.mov("al", SLEEP.SLP_EN | (SLEEP.S5_TYPE << SLEEP.SLP_TYP_SHIFT));
  emitOut(a, ring);
  const spin = a.newLabel("off");
  a.label(spin);
  a.jmp(spin);
}
