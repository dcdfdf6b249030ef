/**
 * A stand-in "vmlinux" that plays skiff's guest agent (init/agent/AGENT.md)
 * on /dev/kvm without Linux: entered per the 64-bit boot protocol like a
 * kernel, it leaves CPL0 within a few instructions (ring3.ts; CPL0 code is
 * emulated here, CPL3 code runs natively), finds the virtio-vsock device
 * among the virtio-mmio windows and drives it (driver.ts), prints
 * `skiff-standin: boot` and the agent's READY marker on COM1, then serves
 * the agent protocol on vsock port 1024 (conns.ts, requests.ts, commands.ts,
 * files.ts) in one event loop:
 *
 * ```
 * loop: reap tx ─ events ─ rx packets ─ request handlers ─ commands ─ send queued ─ free ─ kick
 *       any work done? again : spin briefly on the used rings, arm interrupts, HLT
 * ```
 *
 * Everything it keeps — connections, commands, the file table and the
 * files' bytes — is in guest RAM, so a snapshot carries it; a restore sees
 * the device's TRANSPORT_RESET and drops only the connections.
 *
 * @module
 */

import { Assembler, mem, rip } from "../../../../init/asm/mod.ts";
import { AGENT_READY_MARKER } from "../../../../init/agent/protocol.ts";
import { segmentsElf } from "./elf.ts";
import { STANDIN } from "./layout.ts";
import { emitBoot, emitPowerOff, tablesSegment, VEC } from "./ring3.ts";
import { G, g } from "./structs.ts";
import { StringPool } from "./strings.ts";
import { emitUtil } from "./util.ts";
import { emitDriver } from "./driver.ts";
import { emitConns, FIRST_GUEST_PORT } from "./conns.ts";
import { emitRequests } from "./requests.ts";
import { emitCommands } from "./commands.ts";
import { emitFiles } from "./files.ts";

/** What the stand-in prints on a cold boot before READY (a restored snapshot never does). */
export const STANDIN_BOOT_LINE = "skiff-standin: boot";

/** Local APIC timer period (ns): the longest a lost wake-up can delay the loop. */
const TIMER_NS = 10_000_000;
/** `pause` iterations spent polling the used rings before arming interrupts and halting (~50 µs). */
const SPIN = 4000;
/** First pid handed out. */
const FIRST_PID = 100;
/** e820 in boot_params (Documentation/arch/x86/zero-page.rst): count at 0x1e8, table at 0x2d0. */
const E820_ENTRIES = 0x1e8;
const E820_TABLE = 0x2d0;

/** The stand-in's machine code (assembled at {@link STANDIN.CODE}) and its labels. */
export function agentKernelCode(): { bytes: Uint8Array; labels: Map<string, number> } {
  const a = new Assembler();
  const s = new StringPool();
  const puts = (text: string) => {
    a.lea("rdi", rip(s.label(text)));
    a.call("u_puts");
  };
  emitBoot(a, { userEntry: "main", timerTicks: TIMER_NS });

  a.label("main");
  // rsi: boot_params (the boot protocol's register, kept through the switch to CPL3).
  a.mov("r12", "rsi");
  a.mov("edi", STANDIN.GLOBALS);
  a.mov("ecx", (STANDIN.TABLE_AREA + STANDIN.TABLE_AREA_SIZE - STANDIN.GLOBALS) / 8);
  a.xor("eax", "eax");
  a.cld();
  a.repStosq();
  // The file data may use the e820 RAM range that holds STANDIN.HEAP.
  a.mov(g(G.HEAP_TOP, 64), STANDIN.HEAP);
  a.mov(g(G.HEAP_END, 64), STANDIN.HEAP);
  a.movzx("ecx", mem({ base: "r12", disp: E820_ENTRIES, size: 8 }));
  a.lea("rsi", mem({ base: "r12", disp: E820_TABLE }));
  a.label("e820_l");
  a.test("ecx", "ecx");
  a.jz("e820_done");
  a.cmp(mem({ base: "rsi", disp: 16, size: 32 }), 1); // E820_RAM
  a.jne("e820_n");
  a.mov("rax", mem({ base: "rsi", size: 64 }));
  a.cmp("rax", STANDIN.HEAP);
  a.ja("e820_n");
  a.add("rax", mem({ base: "rsi", disp: 8, size: 64 }));
  a.cmp("rax", STANDIN.HEAP);
  a.jbe("e820_n");
  a.mov(g(G.HEAP_END, 64), "rax");
  a.label("e820_n");
  a.add("rsi", 20);
  a.dec("ecx");
  a.jmp("e820_l");
  a.label("e820_done");
  a.mov(g(G.NEXT_PORT), FIRST_GUEST_PORT);
  a.mov(g(G.NEXT_PID), FIRST_PID);
  puts(`${STANDIN_BOOT_LINE}\n`);
  a.call("d_find");
  a.test("eax", "eax");
  a.jnz("main_found");
  puts("skiff-standin: no virtio-vsock device\n");
  emitPowerOff(a, "user");
  a.label("main_found");
  a.call("d_init");
  a.test("eax", "eax");
  a.jnz("main_ready");
  puts("skiff-standin: the virtio-vsock device refused the driver\n");
  emitPowerOff(a, "user");
  a.label("main_ready");
  puts(`\n${AGENT_READY_MARKER}\n`);

  a.label("loop");
  a.mov(g(G.PROGRESS), 0);
  for (const step of ["tx_reap", "ev_poll", "rx_poll", "run_conns", "run_procs", "flush_conns"]) {
    a.call(step);
  }
  a.call("sweep");
  a.call("d_kick");
  a.cmp(g(G.POWEROFF), 0);
  a.jne("main_off");
  a.cmp(g(G.PROGRESS), 0);
  a.jne("loop");
  a.mov("r12d", SPIN);
  a.label("spin");
  a.call("d_pending");
  a.test("eax", "eax");
  a.jnz("loop");
  a.pause();
  a.dec("r12d");
  a.jnz("spin");
  a.call("d_arm");
  a.call("d_pending");
  a.test("eax", "eax");
  a.jnz("loop");
  a.int(VEC.IDLE);
  a.jmp("loop");
  a.label("main_off");
  emitPowerOff(a, "user");

  emitUtil(a);
  emitDriver(a);
  emitConns(a);
  emitRequests(a, s);
  emitCommands(a, s);
  emitFiles(a);
  s.emit(a);
  const out = a.assemble({ origin: STANDIN.CODE });
  if (out.bytes.length > STANDIN.CODE_MAX) {
    throw new Error(`stand-in code is ${out.bytes.length} bytes (max ${STANDIN.CODE_MAX})`);
  }
  return out;
}

/** The stand-in kernel as an ELF file for skiff's vmlinux loader (`VmConfig.kernel`). */
export function agentKernelElf(): Uint8Array {
  const { bytes, labels } = agentKernelCode();
  return segmentsElf([
    { addr: STANDIN.CODE, bytes, flags: 5 },
    { addr: STANDIN.TABLES, bytes: tablesSegment(labels), flags: 6 },
  ], labels.get("k_entry")!);
}
