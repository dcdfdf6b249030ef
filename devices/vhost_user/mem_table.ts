/**
 * The guest memory a vhost-user front-end shares (SET_MEM_TABLE): each
 * region's fd mapped `MAP_SHARED` into one {@link RegionMemory} keyed by guest
 * physical address, and the front-end's virtual addresses (which ring
 * addresses are given in) translated to guest physical ones.
 *
 * @module
 */

import { type MemoryRegion, RegionMemory } from "../../hv/memory.ts";
import { libc, MAP, mmap, PROT, viewAt } from "../../kvm_ffi/libc.ts";
import type { MemRegionDesc } from "./protocol.ts";

/** A mapped memory table. Dispose it to unmap the regions and close their fds. */
export class MemTable implements Disposable {
  /** The guest memory. */
  readonly memory: RegionMemory;
  #regions: readonly MemRegionDesc[];

  private constructor(memory: RegionMemory, regions: readonly MemRegionDesc[]) {
    this.memory = memory;
    this.#regions = regions;
  }

  /**
   * Maps `regions` from `fds` (one per region, in order; they become owned by
   * the table). On failure every fd is closed and nothing stays mapped.
   */
  static map(regions: readonly MemRegionDesc[], fds: number[]): MemTable {
    if (fds.length !== regions.length) {
      closeFds(fds);
      throw new Error(`SET_MEM_TABLE: ${regions.length} regions but ${fds.length} fds`);
    }
    const mapped: MemoryRegion[] = [];
    const owned: { ptr: Deno.PointerObject; size: number; fd?: number }[] = [];
    try {
      for (const [i, r] of regions.entries()) {
        const off = Number(r.mmapOffset);
        const size = Number(r.memorySize);
        if (!Number.isSafeInteger(off + size) || size <= 0) {
          throw new RangeError(`SET_MEM_TABLE region ${i}: offset ${off} size ${size}`);
        }
        const total = off + size;
        const ptr = mmap(total, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.NORESERVE, fds[i], 0);
        owned.push({ ptr, size: total, fd: fds[i] });
        const base = Deno.UnsafePointer.create(Deno.UnsafePointer.value(ptr) + BigInt(off))!;
        mapped.push({
          guestAddr: Number(r.guestPhysAddr),
          size,
          bytes: viewAt(base, size),
          hostPtr: base,
          fd: fds[i],
          fdOffset: off,
        });
      }
      return new MemTable(new RegionMemory(mapped, owned), regions);
    } catch (e) {
      for (const o of owned) libc.munmap(o.ptr, BigInt(o.size));
      closeFds(fds);
      throw e;
    }
  }

  /** Front-end virtual address → guest physical address; throws when no region holds `len` bytes there. */
  toGuest(user: bigint, len: number, what: string): number {
    for (const m of this.#regions) {
      if (user >= m.userspaceAddr && user + BigInt(len) <= m.userspaceAddr + m.memorySize) {
        return Number(user - m.userspaceAddr + m.guestPhysAddr);
      }
    }
    throw new RangeError(`${what} at user address 0x${user.toString(16)} is in no memory region`);
  }

  /** Unmaps the regions and closes their fds. */
  [Symbol.dispose](): void {
    this.memory[Symbol.dispose]();
  }
}

/** Closes every fd in `fds` (emptying it). */
export function closeFds(fds: number[]): void {
  for (const fd of fds.splice(0)) libc.close(fd);
}
