/**
 * A VM: the KVM VM fd, its memory slots, the in-kernel interrupt controllers,
 * the device list handed to every vCPU Worker, and the vCPUs.
 *
 * ```ts
 * using mem = RegionMemory.memfd([{ guestAddr: 0, size: 64 << 20 }]);
 * await using vm = Vm.create({ memory: mem });
 * vm.addDevice(uartSpec(...));                  // ports/MMIO answered in the vCPU Worker
 * const vcpu = vm.createVcpu();
 * setupLongMode(mem, vcpu.fd, { entry: 0x100000 });
 * await vm.start();
 * const stop = await vm.wait();                 // rejects with VmExitError on triple fault etc.
 * ```
 *
 * @module
 */

import { Kvm, VmFd } from "../kvm_ffi/kvm.ts";
import type { UserspaceMemoryRegion } from "../kvm_ffi/structs.ts";
import { KVM_PIT_SPEAKER_DUMMY } from "../kvm_ffi/kvm_sys.ts";
import {
  closePrepared,
  memorySlots,
  type PreparedVm,
  regionSlot,
  sameSlots,
} from "./prepared_vm.ts";
import { type Bus, type BusDevice, mmioBus, portBus } from "./bus.ts";
import type { DeviceSpec } from "./device.ts";
import { VmExitError } from "./errors.ts";
import type { MemoryRegion, RegionMemory } from "./memory.ts";
import { type RunState, Vcpu } from "./vcpu.ts";
import { type VcpuWorker, vcpuWorkers } from "./vcpu_worker.ts";
import type { RawRegion, VcpuStop } from "./worker_protocol.ts";

/** Options of {@link Vm.create}. */
export interface VmOptions {
  /** Guest RAM (and any other regions); every region must be mmap-backed (`RegionMemory.memfd`). */
  memory: RegionMemory;
  /** Create the in-kernel PIC/IOAPIC/LAPIC (default true). Without it HLT exits to the host. */
  irqchip?: boolean;
  /** Create the in-kernel PIT (default: same as `irqchip`). */
  pit?: boolean;
  /** `KVM_SET_TSS_ADDR` (default 0xfffbd000, three pages below the BIOS area, as QEMU). */
  tssAddr?: number;
  /** `KVM_SET_IDENTITY_MAP_ADDR` (default 0xfffbc000, the page below the TSS). */
  identityMapAddr?: number;
  /** KVM device path (default `/dev/kvm`). */
  kvmPath?: string;
}

/** How a VM's run ended (not an error). */
export interface VmStop {
  /** What ended it. */
  kind: "stopped" | "hlt" | "reset" | "poweroff";
  /** The vCPU that ended it (-1 when the host stopped the VM). */
  vcpu: number;
  /** Exit code for device power-offs that carry one. */
  code?: number;
  /** Who asked (device or system event). */
  source?: string;
  /** RIP for `hlt`. */
  rip?: bigint;
}

class NullDevice implements BusDevice {
  read(): void {}
  write(): void {}
}

/** A virtual machine. Dispose with `await using` (stops vCPUs, closes fds). */
export class Vm implements AsyncDisposable {
  /** The open `/dev/kvm`. */
  readonly kvm: Kvm;
  /** The VM fd (for snapshot state: `vm.fd.saveState(...)`). */
  readonly fd: VmFd;
  /** Guest memory as registered at creation and with {@link addMemory}. */
  readonly memory: RegionMemory[];
  /** Whether the in-kernel irqchip exists. */
  readonly irqchip: boolean;
  /** Whether the in-kernel PIT exists. */
  readonly pit: boolean;
  /** The vCPUs, by id. */
  readonly vcpus: Vcpu[] = [];
  #devices: DeviceSpec[] = [];
  #ports: Bus = portBus();
  #mmio: Bus = mmioBus();
  #slots = 0;
  #listeners = new Map<string, (message: unknown, vcpuId: number) => void>();
  #state: RunState = "created";
  #result: Promise<VmStop> | null = null;
  #closed = false;

  private constructor(kvm: Kvm, fd: VmFd, irqchip: boolean, pit: boolean) {
    this.kvm = kvm;
    this.fd = fd;
    this.irqchip = irqchip;
    this.pit = pit;
    this.memory = [];
  }

  /** Creates the VM, its irqchip/PIT and a memory slot per region of `opts.memory`. */
  static create(opts: VmOptions): Vm {
    // Memory slots before the irqchip (as Firecracker): here each
    // KVM_SET_USER_MEMORY_REGION costs ~7 ms more once an in-kernel irqchip
    // exists, which dominated a snapshot restore (hv restore state 8.7 → ~2 ms).
    return Vm.#finish(Vm.#open(opts), (vm) => vm.addMemory(opts.memory));
  }

  /**
   * {@link create} with the memory slots registered on a thread-pool thread:
   * the promise settles once the VM exists with its slots, irqchip and PIT,
   * and the caller's code runs meanwhile. On this host's shadow-paging KVM a
   * slot costs ~0.5 ms per GiB of guest memory (KVM allocates and zeroes
   * per-page metadata), so a restore verifies the snapshot while a 4 GiB
   * slot is being made instead of after.
   */
  static async createAsync(opts: VmOptions): Promise<Vm> {
    const vm = Vm.#open(opts);
    try {
      for (const r of opts.memory.regions) await vm.fd.setUserMemoryRegionAsync(vm.#slotFor(r));
    } catch (e) {
      vm.#closeFds();
      throw e;
    }
    return Vm.#finish(vm, () => vm.memory.push(opts.memory));
  }

  /**
   * {@link create} over a VM whose slots were made ahead (a snapshot
   * restore's pooled VM: snapshot/restore_pool.ts); it must have exactly
   * `memorySlots(opts.memory)` (hv/prepared_vm.ts), made on `opts.kvmPath`.
   * The Vm owns `prepared` from then on (and closes it when it does not fit).
   */
  static fromPrepared(opts: VmOptions, prepared: PreparedVm): Vm {
    const want = memorySlots(opts.memory);
    if (!sameSlots(want, prepared.slots) || prepared.kvmPath !== (opts.kvmPath ?? "/dev/kvm")) {
      closePrepared(prepared);
      throw new Error("Vm.fromPrepared: the prepared VM is not one for this memory and KVM device");
    }
    return Vm.#finish(Vm.#open(opts, prepared), (vm) => {
      vm.#slots = want.length;
      vm.memory.push(opts.memory);
    });
  }

  /** Runs `slots` (the memory) on a just-opened VM, then makes its chips; closes it on failure. */
  static #finish(vm: Vm, slots: (vm: Vm) => void): Vm {
    try {
      slots(vm);
      vm.#createChips();
      return vm;
    } catch (e) {
      vm.#closeFds();
      throw e;
    }
  }

  #closeFds(): void {
    this.fd.close();
    this.kvm.close();
  }

  /** `/dev/kvm`, the VM fd (`prepared`'s, if given) and its two Intel areas. */
  static #open(opts: VmOptions, prepared?: PreparedVm): Vm {
    const kvm = prepared?.kvm ?? Kvm.open(opts.kvmPath);
    let fd: VmFd | null = prepared?.vm ?? null;
    try {
      fd ??= kvm.createVm();
      const irqchip = opts.irqchip ?? true;
      // Intel VT-x needs these two areas for real-mode emulation; harmless elsewhere.
      fd.setIdentityMapAddr(opts.identityMapAddr ?? 0xfffbc000);
      fd.setTssAddr(opts.tssAddr ?? 0xfffbd000);
      return new Vm(kvm, fd, irqchip, opts.pit ?? irqchip);
    } catch (e) {
      fd?.close();
      kvm.close();
      throw e;
    }
  }

  #createChips(): void {
    if (this.irqchip) this.fd.createIrqchip();
    if (this.pit) this.fd.createPit2(KVM_PIT_SPEAKER_DUMMY);
  }

  /** Run state: `created` until {@link start}, then `running`/`paused`, finally `stopped`. */
  get state(): RunState {
    return this.#state;
  }

  /** Registers every region of `memory` as a KVM memory slot (before {@link start}). */
  addMemory(memory: RegionMemory): void {
    if (this.#state !== "created") throw new Error("Vm.addMemory: VM already started");
    for (const r of memory.regions) this.#addSlot(r);
    this.memory.push(memory);
  }

  #addSlot(r: MemoryRegion): void {
    this.fd.setUserMemoryRegion(this.#slotFor(r));
  }

  /** The next slot's `KVM_SET_USER_MEMORY_REGION` for `r`, checked against the slots so far. */
  #slotFor(r: MemoryRegion): UserspaceMemoryRegion {
    for (const m of this.memory) {
      for (const o of m.regions) {
        if (r.guestAddr < o.guestAddr + o.size && o.guestAddr < r.guestAddr + r.size) {
          throw new Error(
            `guest region at 0x${r.guestAddr.toString(16)} overlaps 0x${o.guestAddr.toString(16)}`,
          );
        }
      }
    }
    return regionSlot(r, this.#slots++);
  }

  /**
   * Adds a device that every vCPU Worker instantiates (see `device.ts`).
   * Its ranges are checked here, so an overlap fails at once, naming both devices.
   */
  addDevice(spec: DeviceSpec): void {
    if (this.#state !== "created") throw new Error("Vm.addDevice: VM already started");
    if (this.#devices.some((d) => d.name === spec.name)) {
      throw new Error(`device name ${spec.name} is already used`);
    }
    const dummy = new NullDevice();
    const added: [Bus, number][] = [];
    try {
      for (const r of spec.ports ?? []) {
        this.#ports.insert(r.base, r.length, spec.name, dummy);
        added.push([this.#ports, r.base]);
      }
      for (const r of spec.mmio ?? []) {
        this.#mmio.insert(r.base, r.length, spec.name, dummy);
        added.push([this.#mmio, r.base]);
      }
    } catch (e) {
      for (const [bus, base] of added) bus.remove(base);
      throw e;
    }
    this.#devices.push(spec);
  }

  /** The device specs added so far. */
  get devices(): readonly DeviceSpec[] {
    return this.#devices;
  }

  /** Receives messages a device posts with `ctx.post` (from any vCPU Worker). */
  onDeviceMessage(name: string, listener: (message: unknown, vcpuId: number) => void): void {
    this.#listeners.set(name, listener);
  }

  /** `KVM_IRQ_LINE`: drives GSI `gsi` of the in-kernel irqchip. */
  setIrqLine(gsi: number, level: 0 | 1): void {
    if (!this.irqchip) throw new Error(`setIrqLine(${gsi}): the VM has no in-kernel irqchip`);
    this.fd.irqLine(gsi, level);
  }

  /** A level-triggered pulse (assert then deassert): an edge on the irqchip. */
  pulseIrq(gsi: number): void {
    this.setIrqLine(gsi, 1);
    this.setIrqLine(gsi, 0);
  }

  /** `KVM_IRQFD`: signalling eventfd `fd` raises GSI `gsi` without a host round trip. */
  irqfd(fd: number, gsi: number, opts: { deassign?: boolean; resampleFd?: number } = {}): void {
    this.fd.irqfd(fd, gsi, opts);
  }

  /** `KVM_IOEVENTFD`: a guest write to `addr` signals eventfd `fd` in the kernel. */
  ioeventfd(
    fd: number,
    addr: number,
    len: number,
    opts: { pio?: boolean; datamatch?: bigint; deassign?: boolean } = {},
  ): void {
    this.fd.ioeventfd(fd, addr, len, opts);
  }

  /**
   * Creates the next vCPU (ids 0, 1, …) and takes its Worker at once (an idle
   * one, or a new one whose modules load while the caller sets up the rest:
   * see vcpu_worker.ts). Set its registers through `vcpu.fd` before {@link start}.
   */
  createVcpu(): Vcpu {
    if (this.#state !== "created") throw new Error("Vm.createVcpu: VM already started");
    const fd = this.fd.createVcpu(this.vcpus.length);
    let worker: VcpuWorker;
    try {
      worker = vcpuWorkers.take();
    } catch (e) {
      fd.close();
      throw e;
    }
    const vcpu = new Vcpu(
      fd,
      (name, message, id) => this.#listeners.get(name)?.(message, id),
      worker,
    );
    this.vcpus.push(vcpu);
    return vcpu;
  }

  #rawMemory(): RawRegion[] {
    return this.memory.flatMap((m) =>
      m.regions.map((r) => ({
        guestAddr: r.guestAddr,
        size: r.size,
        hostAddr: Deno.UnsafePointer.value(r.hostPtr!) as bigint,
      }))
    );
  }

  /**
   * Starts every vCPU's Worker; resolves once all run (or, with `paused`,
   * once all are ready and paused at their first instruction).
   */
  async start(opts: { paused?: boolean } = {}): Promise<void> {
    if (this.#state !== "created") throw new Error(`Vm.start in state ${this.#state}`);
    if (this.vcpus.length === 0) throw new Error("Vm.start: no vCPUs (call createVcpu first)");
    this.#state = opts.paused ? "paused" : "running";
    const init = { vmFd: this.fd.fd, memory: this.#rawMemory(), devices: this.#devices };
    await Promise.all(this.vcpus.map((v) => v.start(init, opts)));
    if (opts.paused) await Promise.all(this.vcpus.map((v) => v.pause()));
    this.#result = this.#watch();
  }

  /**
   * The VM's result: the first vCPU stop other than `hlt` (host stop, reset,
   * power-off, error) ends the VM and stops the others; a vCPU that halted
   * without an irqchip is simply done, and the VM ends `hlt` when all are.
   */
  async #watch(): Promise<VmStop> {
    const pending = new Map(this.vcpus.map((v, i) => [i, v.done.then((s) => [i, s] as const)]));
    let last: readonly [number, VcpuStop] | null = null;
    while (pending.size > 0) {
      const [i, s] = await Promise.race(pending.values());
      pending.delete(i);
      last = [i, s];
      if (s.kind !== "hlt") break;
    }
    for (const v of this.vcpus) v.requestStop();
    await Promise.all(this.vcpus.map((v) => v.done));
    this.#state = "stopped";
    return toVmStop(last![0], last![1]);
  }

  /**
   * Resolves when the VM stops: the host called {@link stop}, the guest
   * rebooted or powered off, or every vCPU halted (only without an irqchip). Rejects with
   * `VmExitError` (which exit, RIP, instruction bytes) on triple fault,
   * emulation failure, failed entry or a device failure.
   */
  wait(): Promise<VmStop> {
    if (this.#result === null) return Promise.reject(new Error("Vm.wait: VM not started"));
    return this.#result;
  }

  /** Pauses every vCPU (they leave KVM_RUN); vCPU and VM state can then be read. */
  async pause(): Promise<void> {
    if (this.#state !== "running" && this.#state !== "paused") {
      throw new Error(`Vm.pause in state ${this.#state}`);
    }
    await Promise.all(this.vcpus.map((v) => v.pause()));
    this.#state = "paused";
  }

  /** Resumes paused vCPUs. */
  resume(): void {
    if (this.#state !== "paused") throw new Error(`Vm.resume in state ${this.#state}`);
    for (const v of this.vcpus) if (v.state === "paused") v.resume();
    this.#state = "running";
  }

  /** Stops every vCPU; resolves with the VM's stop (or rejects as {@link wait} does). */
  stop(): Promise<VmStop> {
    if (this.#result === null) {
      this.#state = "stopped";
      for (const v of this.vcpus) v.requestStop(); // hands back Workers taken by createVcpu
      return Promise.resolve({ kind: "stopped", vcpu: -1 });
    }
    for (const v of this.vcpus) v.requestStop();
    return this.#result;
  }

  /** Stops the vCPUs and closes every fd (memory stays with its owner). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.stop();
    } catch {
      // the stop reason was already reported through wait()
    }
    for (const v of this.vcpus) v.fd.close();
    this.fd.close();
    this.kvm.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function toVmStop(vcpu: number, s: VcpuStop): VmStop {
  switch (s.kind) {
    case "error":
      throw new VmExitError(`${s.reason} on vCPU ${vcpu}`, s.rip, s.detail ?? "");
    case "stopped":
      return { kind: "stopped", vcpu: -1 };
    case "hlt":
      return { kind: "hlt", vcpu, rip: s.rip };
    case "reset":
      return { kind: "reset", vcpu, source: s.source };
    case "poweroff":
      return { kind: "poweroff", vcpu, source: s.source, code: s.code };
  }
}
