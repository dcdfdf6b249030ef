/**
 * Wraps the stand-in's segments in an ELF64 x86-64 EXEC file that skiff's
 * vmlinux loader (hv/boot/loader.ts) takes like a kernel: PT_LOAD segments at
 * their physical addresses, a physical entry point (as vmlinux's
 * `ENTRY(phys_startup_64)`), virtual addresses in the kernel map as Linux has them.
 *
 * @module
 */

/** One loadable segment. */
export interface Segment {
  /** Guest-physical load address (page-aligned). */
  addr: number;
  bytes: Uint8Array;
  /** Bytes in memory (≥ bytes.length; the rest is zero-filled by the loader). */
  memsz?: number;
  /** p_flags: 4 R, 2 W, 1 X. */
  flags: number;
}

/** `__START_KERNEL_map` (x86-64): where vmlinux's virtual addresses start. */
const KERNEL_MAP = 0xffffffff80000000n;

/** An ELF64 EXEC with `segments` and the physical entry `entry`. */
export function segmentsElf(segments: Segment[], entry: number): Uint8Array {
  const phoff = 64;
  const phsize = 56;
  let off = Math.ceil((phoff + phsize * segments.length) / 0x1000) * 0x1000;
  const offsets = segments.map((s) => {
    const at = off;
    off = Math.ceil((off + s.bytes.length) / 0x1000) * 0x1000;
    return at;
  });
  const b = new Uint8Array(off);
  const dv = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(entry), true);
  dv.setBigUint64(32, BigInt(phoff), true);
  dv.setUint16(52, 64, true);
  dv.setUint16(54, phsize, true);
  dv.setUint16(56, segments.length, true);
  segments.forEach((s, i) => {
    const p = phoff + i * phsize;
    dv.setUint32(p, 1, true); // PT_LOAD
    dv.setUint32(p + 4, s.flags, true);
    dv.setBigUint64(p + 8, BigInt(offsets[i]), true);
    dv.setBigUint64(p + 16, KERNEL_MAP + BigInt(s.addr), true);
    dv.setBigUint64(p + 24, BigInt(s.addr), true);
    dv.setBigUint64(p + 32, BigInt(s.bytes.length), true);
    dv.setBigUint64(p + 40, BigInt(Math.max(s.memsz ?? 0, s.bytes.length)), true);
    dv.setBigUint64(p + 48, 0x1000n, true);
    b.set(s.bytes, offsets[i]);
  });
  return b;
}
