/**
 * The guest memory a vhost-user front-end shares (SET_MEM_TABLE): each
 * region's fd mapped `MAP_SHARED` (one mapping per file, shared) into one {@link RegionMemory} keyed by guest
 * physical address, and the front-end's virtual addresses (which ring
 * addresses are given in) translated to guest physical ones.
 *
 * @module
 */

import { type MemoryRegion, RegionMemory } from "../../hv/memory.ts";
import { libc } from "../../kvm_ffi/libc.ts";
import { type FileMapping, mapFile } from "./file_mapping.ts";
import type { MemRegionDesc } from "./protocol.ts";

/** A mapped memory table. Dispose it to unmap the regions and close their fds. */
export class MemTable implements Disposable {
  /** The guest memory. */
  readonly memory: RegionMemory;
  #regions: readonly MemRegionDesc[];
  #leases: FileMapping[];

  private constructor(
    memory: RegionMemory,
    regions: readonly MemRegionDesc[],
    leases: FileMapping[],
  ) {
    this.memory = memory;
    this.#regions = regions;
    this.#leases = leases;
  }

  /**
   * Maps `regions` from `fds` (one per region, in order; they become owned by
   * the table). Regions of one file share one mapping (file_mapping.ts). On
   * failure every fd is closed and nothing stays mapped.
   */
  static map(regions: readonly MemRegionDesc[], fds: number[]): MemTable {
    if (fds.length !== regions.length) {
      closeFds(fds);
      throw new Error(`SET_MEM_TABLE: ${regions.length} regions but ${fds.length} fds`);
    }
    const mapped: MemoryRegion[] = [];
    const leases: FileMapping[] = [];
    try {
      for (const [i, r] of regions.entries()) {
        const off = Number(r.mmapOffset);
        const size = Number(r.memorySize);
        if (!Number.isSafeInteger(off + size) || size <= 0) {
          throw new RangeError(`SET_MEM_TABLE region ${i}: offset ${off} size ${size}`);
        }
        const m = mapFile(fds[i], off + size);
        leases.push(m);
        mapped.push({
          guestAddr: Number(r.guestPhysAddr),
          size,
          bytes: m.bytes.subarray(off, off + size),
          hostPtr: Deno.UnsafePointer.create(Deno.UnsafePointer.value(m.base) + BigInt(off))!,
          fd: fds[i],
          fdOffset: off,
        });
      }
      // The memory owns the fds; the table releases the mappings after it.
      const owned = fds.map((fd) => ({ ptr: null as unknown as Deno.PointerObject, size: 0, fd }));
      return new MemTable(new RegionMemory(mapped, owned), regions, leases);
    } catch (e) {
      for (const m of leases) m.release();
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

  /** Closes the regions' fds and releases their mappings (the last user unmaps). */
  [Symbol.dispose](): void {
    this.memory[Symbol.dispose]();
    for (const m of this.#leases.splice(0)) m.release();
  }
}

/** Closes every fd in `fds` (emptying it). */
export function closeFds(fds: number[]): void {
  for (const fd of fds.splice(0)) libc.close(fd);
}
