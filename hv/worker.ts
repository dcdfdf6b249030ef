/**
 * The vCPU Worker: instantiates the devices from their specs, then runs the
 * `KVM_RUN` loop synchronously, dispatching port-I/O and MMIO exits to the
 * buses on this thread. Synchronous FFI costs about what C does per exit; the
 * `nonblocking` form (a thread hop per call) costs ~6× more (DESIGN.md).
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { VcpuFd } from "../kvm_ffi/kvm.ts";
import {
  KVM,
  KVM_INTERNAL_ERROR,
  KVM_IRQ_LEVEL_LAYOUT,
  KVM_RUN_LAYOUT,
  KVM_SYSTEM_EVENT,
} from "../kvm_ffi/kvm_sys.ts";
import { errno, libc, SysError } from "../kvm_ffi/libc.ts";
import { Errno } from "../kvm_ffi/errno.ts";
import { type Bus, mmioBus, portBus } from "./bus.ts";
import type { DeviceContext, DeviceFactory, DeviceStopRequest, WorkerDevice } from "./device.ts";
import { decodeExit, fatalExitReason, hexBytes, type VcpuExit } from "./exits.ts";
import { gettid } from "./kick.ts";
import { MappedRegion, RegionMemory } from "./memory.ts";
import {
  CMD,
  CTL,
  STATE,
  type VcpuStop,
  type WorkerInit,
  type WorkerMessage,
} from "./worker_protocol.ts";

function post(msg: WorkerMessage): void {
  self.postMessage(msg);
}

function memoryOf(init: WorkerInit): RegionMemory {
  return new RegionMemory(init.memory.map((r) => {
    const p = Deno.UnsafePointer.create(r.hostAddr);
    if (p === null) {
      throw new Error(`guest region at 0x${r.guestAddr.toString(16)} has no host address`);
    }
    // Lazy: the view (and its external-memory GC in this isolate) only once a device reads guest bytes.
    return new MappedRegion({ guestAddr: r.guestAddr, size: r.size, hostPtr: p });
  }));
}

/** A stop requested by a device during the current exit. */
let pendingStop: VcpuStop | null = null;

async function setup(init: WorkerInit) {
  const memory = memoryOf(init);
  const ports = portBus<WorkerDevice>();
  const mmio = mmioBus<WorkerDevice>();
  const instances: WorkerDevice[] = [];
  const irq = new Uint8Array(KVM_IRQ_LEVEL_LAYOUT.size);
  const irqView = new DataView(irq.buffer);
  // All device modules at once (each import waits on module loading, not on the CPU).
  const mods = await Promise.all(init.devices.map((spec) => import(spec.module)));
  for (const [i, spec] of init.devices.entries()) {
    const mod = mods[i];
    const factoryName = spec.factory ?? "create";
    const factory = mod[factoryName] as DeviceFactory | undefined;
    if (typeof factory !== "function") {
      throw new Error(`device ${spec.name}: ${spec.module} exports no function ${factoryName}`);
    }
    const ctx: DeviceContext = {
      name: spec.name,
      vcpuId: init.vcpu.id,
      memory,
      setIrqLine(gsi: number, level: 0 | 1) {
        irqView.setUint32(KVM_IRQ_LEVEL_LAYOUT.fields.irq, gsi, true);
        irqView.setUint32(KVM_IRQ_LEVEL_LAYOUT.fields.level, level, true);
        if (libc.ioctl(init.vmFd, KVM.KVM_IRQ_LINE, irq) < 0) {
          throw new SysError(`KVM_IRQ_LINE(${gsi}, ${level})`, errno());
        }
      },
      post(message: unknown, transfer: Transferable[] = []) {
        self.postMessage(
          { type: "device", name: spec.name, message } satisfies WorkerMessage,
          transfer,
        );
      },
      requestStop(req: DeviceStopRequest) {
        pendingStop ??= req;
      },
    };
    const dev = factory(spec.config, ctx);
    instances.push(dev);
    for (const r of spec.ports ?? []) ports.insert(r.base, r.length, spec.name, dev);
    for (const r of spec.mmio ?? []) mmio.insert(r.base, r.length, spec.name, dev);
  }
  return { memory, ports, mmio, instances };
}

const F = KVM_RUN_LAYOUT.fields;

function busAccess(
  bus: Bus<WorkerDevice>,
  addr: number,
  size: number,
  data: Uint8Array,
  write: boolean,
): void {
  // A string instruction (rep outsb/insb) may carry several items.
  for (let at = 0; at < data.length; at += size) {
    const item = data.length === size ? data : data.subarray(at, at + size);
    if (write) bus.write(addr, item);
    else if (!bus.read(addr, item)) item.fill(0xff); // nothing there: the bus floats high
  }
}

function describe(exit: VcpuExit): string {
  switch (exit.kind) {
    case "io_in":
    case "io_out":
      return `${exit.kind === "io_in" ? "in" : "out"} port 0x${
        exit.port.toString(16)
      } size ${exit.size}`;
    case "mmio_read":
    case "mmio_write":
      return `${exit.kind.replace("_", " ")} 0x${exit.addr.toString(16)} len ${exit.len}`;
    default:
      return exit.kind;
  }
}

/** Instruction bytes at the guest's RIP, read through its page tables (best effort). */
function bytesAtRip(vcpu: VcpuFd, memory: RegionMemory, rip: bigint): string {
  try {
    const gpa = vcpu.translate(rip);
    if (gpa === null) return "";
    const addr = Number(gpa);
    let n = 15;
    while (n > 0 && !memory.contains(addr, n)) n--;
    return n > 0 ? hexBytes(memory.slice(addr, n)) : "";
  } catch {
    return "";
  }
}

function fatal(exit: VcpuExit, vcpu: VcpuFd, memory: RegionMemory): VcpuStop {
  let rip: bigint | undefined;
  try {
    rip = vcpu.getRegs().rip;
  } catch {
    rip = undefined;
  }
  let detail = "";
  if (exit.kind === "internal_error") {
    const bytes = exit.insnBytes && exit.insnBytes.length > 0
      ? hexBytes(exit.insnBytes)
      : rip !== undefined
      ? bytesAtRip(vcpu, memory, rip)
      : "";
    if (bytes) detail = `(instruction bytes ${bytes})`;
    if (exit.suberror !== KVM_INTERNAL_ERROR.EMULATION && exit.data.length > 0) {
      detail += `${detail ? " " : ""}(data ${
        exit.data.map((d) => "0x" + d.toString(16)).join(" ")
      })`;
    }
  }
  return { kind: "error", reason: fatalExitReason(exit), rip, detail: detail || undefined };
}

function runLoop(init: WorkerInit, env: Awaited<ReturnType<typeof setup>>): VcpuStop {
  const vcpu = VcpuFd.fromRaw(init.vcpu);
  const { ports, mmio, memory } = env;
  const run = vcpu.run;
  const view = new DataView(run.buffer, run.byteOffset, run.byteLength);
  const ctl = new Int32Array(init.control);
  const fd = vcpu.fd;
  const req = KVM.KVM_RUN;
  const immediateExit = F.immediate_exit;
  for (;;) {
    // Clear immediate_exit before reading the command: a host that sets the
    // command and then immediate_exit cannot be missed (see kick.ts).
    run[immediateExit] = 0;
    const cmd = Atomics.load(ctl, CTL.CMD);
    if (cmd === CMD.STOP) return { kind: "stopped" };
    if (cmd === CMD.PAUSE) {
      Atomics.store(ctl, CTL.STATE, STATE.PAUSED);
      Atomics.notify(ctl, CTL.STATE);
      post({ type: "paused" });
      Atomics.wait(ctl, CTL.CMD, CMD.PAUSE);
      Atomics.store(ctl, CTL.STATE, STATE.RUNNING);
      post({ type: "resumed" });
      continue;
    }
    const r = libc.ioctl_val(fd, req, 0n);
    if (r < 0) {
      const e = errno();
      if (e === Errno.EINTR || e === Errno.EAGAIN) continue; // kicked: re-check the command
      return { kind: "error", reason: new SysError("KVM_RUN", e).message };
    }
    ctl[CTL.EXITS]++;
    const exit = decodeExit(run, view);
    try {
      switch (exit.kind) {
        case "io_out":
          busAccess(ports, exit.port, exit.size, exit.data, true);
          break;
        case "io_in":
          busAccess(ports, exit.port, exit.size, exit.data, false);
          break;
        case "mmio_write":
          mmio.write(exit.addr, exit.data);
          break;
        case "mmio_read":
          if (!mmio.read(exit.addr, exit.data)) exit.data.fill(0xff);
          break;
        case "intr":
        case "irq_window_open":
          break;
        case "hlt":
          return { kind: "hlt", rip: vcpu.getRegs().rip };
        case "system_event":
          if (exit.type === KVM_SYSTEM_EVENT.SHUTDOWN) {
            return { kind: "poweroff", source: exit.typeName };
          }
          if (exit.type === KVM_SYSTEM_EVENT.RESET) return { kind: "reset", source: exit.typeName };
          return {
            kind: "error",
            reason: `system event ${exit.typeName}`,
            rip: vcpu.getRegs().rip,
          };
        default:
          return fatal(exit, vcpu, memory);
      }
    } catch (e) {
      const at = (() => {
        try {
          return vcpu.getRegs().rip;
        } catch {
          return undefined;
        }
      })();
      return {
        kind: "error",
        reason: `device failed on ${describe(exit)}: ${(e as Error).message ?? e}`,
        rip: at,
      };
    }
    if (pendingStop !== null) return pendingStop;
  }
}

/**
 * One vCPU's run. The Worker then waits for its next vCPU (the host's pool
 * reuses it: hv/vcpu_worker.ts) or is terminated.
 */
self.onmessage = async (ev: MessageEvent<WorkerInit>) => {
  const init = ev.data;
  pendingStop = null;
  const ctl = new Int32Array(init.control);
  let stop: VcpuStop;
  let env: Awaited<ReturnType<typeof setup>> | null = null;
  try {
    env = await setup(init);
    Atomics.store(ctl, CTL.TID, gettid());
    Atomics.store(ctl, CTL.STATE, STATE.RUNNING);
    post({ type: "running", tid: Atomics.load(ctl, CTL.TID) });
    stop = runLoop(init, env);
  } catch (e) {
    stop = { kind: "error", reason: `vCPU ${init.vcpu.id} failed: ${(e as Error).message ?? e}` };
  }
  for (const d of env?.instances ?? []) {
    try {
      d.close?.();
    } catch {
      // teardown of one device must not hide the stop reason
    }
  }
  Atomics.store(ctl, CTL.STATE, STATE.EXITED);
  Atomics.notify(ctl, CTL.STATE);
  post({ type: "stopped", stop });
};
