/**
 * A tiny single-threaded VMM for the L1 snapshot tests and the benchmark: a
 * VM with one memory region, irqchip, PIT and N vCPUs started directly in
 * 64-bit long mode, a guest program assembled with `init/asm`, and two
 * port-I/O devices (a UART transcript and a counter) with save/restore.
 * vCPUs run round-robin on the calling thread, one exit at a time.
 *
 * @module
 */

import { Assembler, mem } from "../../init/asm/mod.ts";
import type { GuestMemory, RegionMemory } from "../../hv/memory.ts";
import { Kvm, type VcpuFd, type VmFd } from "../../kvm_ffi/kvm.ts";
import { type PreparedVm as HvPreparedVm, regionSlot } from "../../hv/prepared_vm.ts";
import { KVM, KVM_EXIT, KVM_EXIT_IO, KVM_RUN_LAYOUT } from "../../kvm_ffi/kvm_sys.ts";
import { errno, libc, SysError } from "../../kvm_ffi/libc.ts";
import type { StateValue } from "../codec.ts";
import { completePendingIo, detectFeatures, type KvmFeatures } from "../kvm_state.ts";
import { type MachineParts, type Persist, saveableMsrs } from "../vm_snapshot.ts";

/** Guest layout. */
export const PML4 = 0x1000;
export const CODE = 0x10000;
export const DATA = 0x100000;
export const STACK_TOP = 0x80000;
/** Bytes of each memory region {@link TestMachine.result} hashes. */
export const HASHED_BYTES = 16 << 20;
/** Ports. */
export const UART_PORTS = [0x3f8, 0x2f8];
export const COUNTER_PORT = 0x500;
export const DOORBELL_PORT = 0x510;
export const DONE_PORT = 0x511;
export const GO_PORT = 0x512;

/** The guest program: `iterations` LCG steps per vCPU, each stored, printed and counted. */
export function guestProgram(): { bytes: Uint8Array; labels: Map<string, number> } {
  const a = new Assembler();
  // In: rax = seed, rsi = data base, r12 = iterations, r13 = UART port,
  //     r14 = counter port, r15 = doorbell iteration (-1: never).
  a.xor("ecx", "ecx");
  a.label("loop");
  a.movabs("r8", 6364136223846793005n);
  a.imul("rax", "r8");
  a.movabs("r9", 1442695040888963407n);
  a.add("rax", "r9");
  a.mov(mem({ base: "rsi", index: "rcx", scale: 8 }), "rax");
  a.mov("rdi", "rax");
  a.shr("rdi", 59);
  a.add("edi", 0x41);
  a.mov("rbx", "rax");
  a.mov("eax", "edi");
  a.mov("rdx", "r13");
  a.out("dx", "al");
  a.mov("rax", "rbx");
  a.mov("rdx", "r14");
  a.out("dx", "eax");
  a.cmp("rcx", "r15");
  a.jne("skip");
  a.mov("edx", DOORBELL_PORT);
  a.out("dx", "al");
  // Wait for the host's go (a guest paused at a known point), then restore rax.
  a.label("wait");
  a.mov("edx", GO_PORT);
  a.in("al", "dx");
  a.test("al", "al");
  a.jz("wait");
  a.mov("rax", "rbx");
  a.label("skip");
  a.inc("rcx");
  a.cmp("rcx", "r12");
  a.jne("loop");
  a.mov("edx", DONE_PORT);
  a.out("dx", "al");
  a.hlt();
  return a.assemble({ origin: CODE });
}

/** Records what each vCPU printed. */
export class Uart implements Persist {
  text: string[] = [];
  constructor(cpus: number) {
    this.text = Array.from({ length: cpus }, () => "");
  }
  save(): StateValue {
    return { text: this.text };
  }
  restore(state: StateValue): void {
    const s = state as { text: string[] };
    if (!Array.isArray(s?.text)) throw new Error("uart: bad state");
    this.text = [...s.text];
  }
}

/** Sums the values each vCPU writes (u32 wrap) and counts them. */
export class Counter implements Persist {
  sum: number[];
  count: number[];
  constructor(cpus: number) {
    this.sum = new Array(cpus).fill(0);
    this.count = new Array(cpus).fill(0);
  }
  save(): StateValue {
    return { sum: this.sum, count: this.count };
  }
  restore(state: StateValue): void {
    const s = state as { sum: number[]; count: number[] };
    this.sum = [...s.sum];
    this.count = [...s.count];
  }
}

/**
 * Writes page tables and the program into `m`, and puts every vCPU at its
 * start in 64-bit mode with the program's inputs in registers.
 */
export function setupGuest(
  m: GuestMemory,
  vcpus: readonly VcpuFd[],
  iterations: number,
  doorbellAt: number,
): void {
  m.writeU64(PML4, BigInt(PML4 + 0x1000) | 3n);
  m.writeU64(PML4 + 0x1000, BigInt(PML4 + 0x2000) | 3n);
  for (let i = 0; i < 512; i++) m.writeU64(PML4 + 0x2000 + 8 * i, (BigInt(i) << 21n) | 0x83n);
  m.write(CODE, guestProgram().bytes);
  vcpus.forEach((v, i) => {
    const s = v.getSregs();
    const code = {
      base: 0n,
      limit: 0xffffffff,
      selector: 8,
      type: 11,
      present: 1,
      dpl: 0,
      db: 0,
      s: 1,
      l: 1,
      g: 1,
      avl: 0,
      unusable: 0,
    };
    const data = { ...code, selector: 16, type: 3, db: 1, l: 0 };
    Object.assign(s, { cs: code, ds: data, es: data, fs: data, gs: data, ss: data });
    s.cr3 = BigInt(PML4);
    s.cr4 = 1n << 5n; // PAE
    s.cr0 = 0x80000011n; // PG | ET | PE
    s.efer = (1n << 8n) | (1n << 10n); // LME | LMA
    v.setSregs(s);
    const r = v.getRegs();
    Object.assign(r, {
      rip: BigInt(CODE),
      rsp: BigInt(STACK_TOP - i * 0x1000),
      rflags: 2n,
      rax: BigInt(0x1234 + i),
      rsi: BigInt(DATA + i * 0x10000),
      r12: BigInt(iterations),
      r13: BigInt(UART_PORTS[i]),
      r14: BigInt(COUNTER_PORT + 4 * i),
      r15: i === 0 ? BigInt(doorbellAt) : 0xffffffffffffffffn,
    });
    v.setRegs(r);
    if (i > 0) v.setMpState(0); // APs start runnable (no INIT/SIPI in this test)
  });
}

/** `/dev/kvm` and a VM fd whose memory slots already hold the machine's memory. */
export interface PreparedVm {
  kvm: Kvm;
  vm: VmFd;
}

/**
 * Opens KVM, creates the VM and registers `memory`'s slots (a restore's
 * `prepare` step: see `restoreVmAsync`): on a thread-pool thread when the
 * restore has work to `overlap` with it, else in place; or takes the VM the
 * restore pool made (`pooled`: snapshot/restore_pool.ts).
 */
export async function prepareVm(
  memory: RegionMemory,
  overlap = true,
  pooled: HvPreparedVm | null = null,
): Promise<PreparedVm> {
  if (pooled) return { kvm: pooled.kvm, vm: pooled.vm };
  const kvm = Kvm.open();
  let vm: VmFd | null = null;
  try {
    vm = kvm.createVm();
    for (const [i, r] of memory.regions.entries()) {
      if (overlap) await vm.setUserMemoryRegionAsync(regionSlot(r, i));
      else vm.setUserMemoryRegion(regionSlot(r, i));
    }
    return { kvm, vm };
  } catch (e) {
    vm?.close();
    kvm.close();
    throw e;
  }
}

/** Releases a {@link PreparedVm} no machine took. */
export function releaseVm(p: PreparedVm): void {
  p.vm.close();
  p.kvm.close();
}

/** The test VM. */
export class TestMachine implements MachineParts, Disposable {
  readonly kvm: Kvm;
  readonly vm: VmFd;
  readonly vcpus: VcpuFd[] = [];
  readonly memory: RegionMemory;
  #features: KvmFeatures | null = null;
  readonly uart: Uart;
  readonly counter: Counter;
  readonly devices: Map<string, Persist>;
  /** vCPUs that reported done. */
  readonly done: boolean[];
  #next = 0;

  /**
   * Creates the VM over `memory` (not yet set up: see {@link boot}). A restore
   * whose snapshot carries each vCPU's CPUID passes `setCpuid: false`: the
   * restore sets the saved table, so asking KVM for the supported one
   * (~0.6 ms) and setting it (~0.2 ms) would be wasted.
   */
  constructor(memory: RegionMemory, cpus: number, setCpuid = true, prepared?: PreparedVm) {
    this.kvm = prepared?.kvm ?? Kvm.open();
    this.memory = memory;
    this.vm = prepared?.vm ?? this.kvm.createVm();
    if (!prepared) {
      memory.regions.forEach((r, slot) => this.vm.setUserMemoryRegion(regionSlot(r, slot)));
    }
    // Memory slots before the irqchip (as Firecracker): with an in-kernel irqchip
    // each KVM_SET_USER_MEMORY_REGION costs ~7 ms more here, which would dominate a restore.
    this.vm.setTssAddr(0xfffbd000);
    this.vm.createIrqchip();
    this.vm.createPit2();
    const cpuid = setCpuid ? this.kvm.supportedCpuid() : null;
    for (let i = 0; i < cpus; i++) {
      const v = this.vm.createVcpu(i);
      if (cpuid) v.setCpuid2(cpuid);
      this.vcpus.push(v);
    }
    this.uart = new Uart(cpus);
    this.counter = new Counter(cpus);
    this.devices = new Map<string, Persist>([["uart", this.uart], ["counter", this.counter]]);
    this.done = new Array(cpus).fill(false);
  }

  /** KVM features (capture only: a restore does not ask). */
  get features(): KvmFeatures {
    return this.#features ??= detectFeatures(this.kvm, { irqchip: true, pit: true });
  }

  /** Saveable MSRs (capture only). */
  get msrIndices(): readonly number[] {
    return saveableMsrs(this.kvm);
  }

  /** Writes page tables and the program, and puts every vCPU at its start in long mode. */
  boot(iterations: number, doorbellAt: number): void {
    setupGuest(this.memory, this.vcpus, iterations, doorbellAt);
  }

  /**
   * Runs vCPUs round-robin until all are done (resolves "done") or vCPU 0
   * rings the doorbell (resolves "doorbell", every vCPU paused with pending
   * I/O completed, ready for capture). `onFirstRun` is called right before the
   * first KVM_RUN.
   */
  run(onFirstRun?: () => void): "done" | "doorbell" {
    let first = true;
    const n = this.vcpus.length;
    while (this.done.some((d) => !d)) {
      const i = this.#next;
      this.#next = (this.#next + 1) % n;
      if (this.done[i]) continue;
      const v = this.vcpus[i];
      if (first) {
        onFirstRun?.();
        first = false;
      }
      if (libc.ioctl_val(v.fd, KVM.KVM_RUN, 0n) < 0) throw new SysError("KVM_RUN", errno());
      if (this.#exit(i, v)) {
        for (const w of this.vcpus) completePendingIo(w);
        return "doorbell";
      }
    }
    return "done";
  }

  /** Handles one exit; true for the doorbell. */
  #exit(i: number, v: VcpuFd): boolean {
    const run = new DataView(v.run.buffer, v.run.byteOffset, v.run.byteLength);
    const F = KVM_RUN_LAYOUT.fields;
    const reason = run.getUint32(F.exit_reason, true);
    if (reason === KVM_EXIT.HLT) {
      this.done[i] = true;
      return false;
    }
    if (
      reason === KVM_EXIT.IO && run.getUint8(F["io.direction"]) === KVM_EXIT_IO.IN &&
      run.getUint16(F["io.port"], true) === GO_PORT
    ) {
      run.setUint8(Number(run.getBigUint64(F["io.data_offset"], true)), 1); // always go
      return false;
    }
    if (reason !== KVM_EXIT.IO || run.getUint8(F["io.direction"]) !== KVM_EXIT_IO.OUT) {
      throw new Error(
        `vCPU ${i}: unexpected exit ${reason} at RIP 0x${v.getRegs().rip.toString(16)}`,
      );
    }
    const port = run.getUint16(F["io.port"], true);
    const at = Number(run.getBigUint64(F["io.data_offset"], true));
    if (port === UART_PORTS[i]) this.uart.text[i] += String.fromCharCode(run.getUint8(at));
    else if (port === COUNTER_PORT + 4 * i) {
      this.counter.sum[i] = (this.counter.sum[i] + run.getUint32(at, true)) >>> 0;
      this.counter.count[i]++;
    } else if (port === DOORBELL_PORT) return true;
    else if (port === DONE_PORT) this.done[i] = true;
    else throw new Error(`vCPU ${i}: write to unexpected port 0x${port.toString(16)}`);
    return false;
  }

  /**
   * What the run produced: transcripts, counters, a hash of guest memory (the
   * first {@link HASHED_BYTES} of each region: the program touches only the
   * first 2 MiB, and hashing a 1 GiB guest would take seconds), final registers.
   */
  async result(): Promise<Record<string, unknown>> {
    const hashes = [];
    for (const r of this.memory.regions) {
      hashes.push(
        Array.from(
          new Uint8Array(
            await crypto.subtle.digest(
              "SHA-256",
              r.bytes.slice(0, Math.min(r.size, HASHED_BYTES)),
            ),
          ),
          (b) => b.toString(16).padStart(2, "0"),
        ).join(""),
      );
    }
    return {
      uart: [...this.uart.text],
      counter: { sum: [...this.counter.sum], count: [...this.counter.count] },
      memory: hashes,
      rax: this.vcpus.map((v) => v.getRegs().rax.toString(16)),
    };
  }

  [Symbol.dispose](): void {
    for (const v of this.vcpus) v.close();
    this.vm.close();
    this.kvm.close();
    this.memory[Symbol.dispose]();
  }
}
