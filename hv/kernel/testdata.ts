/**
 * Builders of small synthetic inputs for the kernel tests: an ELF with named
 * sections, a bzImage around a payload, and LZ4 legacy frames.
 *
 * @module
 */

/** An ELF64 LE relocatable file with the given sections (data only). */
export function makeElf(sections: Record<string, Uint8Array>, type = 1): Uint8Array {
  const names = ["", ...Object.keys(sections), ".shstrtab"];
  const enc = new TextEncoder();
  const strtab: number[] = [];
  const nameOff: number[] = [];
  for (const n of names) {
    nameOff.push(strtab.length);
    strtab.push(...enc.encode(n), 0);
  }
  const bodies = [new Uint8Array(0), ...Object.values(sections), new Uint8Array(strtab)];
  let off = 64;
  const offsets = bodies.map((b) => {
    const o = off;
    off += b.length;
    return o;
  });
  const shoff = (off + 7) & ~7;
  const out = new Uint8Array(shoff + 64 * bodies.length);
  const dv = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, type, true);
  dv.setUint16(18, 62, true);
  dv.setUint32(20, 1, true);
  dv.setBigUint64(40, BigInt(shoff), true);
  dv.setUint16(52, 64, true);
  dv.setUint16(58, 64, true);
  dv.setUint16(60, bodies.length, true);
  dv.setUint16(62, bodies.length - 1, true);
  bodies.forEach((b, i) => {
    out.set(b, offsets[i]);
    const s = shoff + i * 64;
    dv.setUint32(s, nameOff[i], true);
    dv.setUint32(s + 4, i === 0 ? 0 : i === bodies.length - 1 ? 3 : 1, true);
    dv.setBigUint64(s + 24, BigInt(offsets[i]), true);
    dv.setBigUint64(s + 32, BigInt(b.length), true);
  });
  return out;
}

/** A kernel module image with a `.modinfo` holding `name=` and `depends=`. */
export function makeModule(name: string, depends: string[]): Uint8Array {
  const info = `license=GPL\0depends=${depends.join(",")}\0name=${name}\0`;
  return makeElf({ ".text": new Uint8Array(16), ".modinfo": new TextEncoder().encode(info) });
}

/** Options of {@link makeBzImage}. */
export interface BzImageOptions {
  version?: number;
  xloadflags?: number;
  setupSects?: number;
  release?: string;
}

/** A minimal bzImage: setup sectors with a valid header, then `payload` as the protected-mode code. */
export function makeBzImage(payload: Uint8Array, o: BzImageOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const pm = (setupSects + 1) * 512;
  const out = new Uint8Array(pm + 0x100 + payload.length);
  const dv = new DataView(out.buffer);
  out[0x1f1] = setupSects;
  dv.setUint16(0x1fe, 0xaa55, true);
  out[0x200] = 0xeb;
  out[0x201] = 0x6a; // header ends at 0x26c
  dv.setUint32(0x202, 0x53726448, true);
  dv.setUint16(0x206, o.version ?? 0x020f, true);
  out[0x211] = 0x01;
  dv.setUint32(0x214, 0x100000, true);
  dv.setUint32(0x22c, 0x7fffffff, true);
  dv.setUint32(0x230, 0x200000, true);
  out[0x234] = 1;
  dv.setUint16(0x236, o.xloadflags ?? 0x7f, true);
  dv.setUint32(0x238, 2047, true);
  dv.setUint32(0x248, 0x100, true);
  dv.setUint32(0x24c, payload.length, true);
  dv.setBigUint64(0x258, 0x1000000n, true);
  dv.setUint32(0x260, 0x2000000, true);
  if (o.release) {
    const s = new TextEncoder().encode(`${o.release} (test@skiff) #1 SMP\0`);
    out.set(s, 0x300);
    dv.setUint16(0x20e, 0x300 - 0x200, true);
  }
  out.set(payload, pm + 0x100);
  return out;
}

/** An LZ4 legacy frame holding `data` as literal-only blocks (valid, uncompressed). */
export function lz4LegacyLiterals(data: Uint8Array, blockSize = 8 << 20): Uint8Array {
  const parts: number[] = [0x02, 0x21, 0x4c, 0x18];
  for (let off = 0; off < data.length || off === 0; off += blockSize) {
    const chunk = data.subarray(off, Math.min(off + blockSize, data.length));
    const block: number[] = [];
    const n = chunk.length;
    if (n >= 15) {
      block.push(0xf0);
      let rest = n - 15;
      while (rest >= 255) {
        block.push(255);
        rest -= 255;
      }
      block.push(rest);
    } else {
      block.push(n << 4);
    }
    block.push(...chunk);
    parts.push(block.length & 0xff, (block.length >> 8) & 0xff, (block.length >> 16) & 0xff, 0);
    parts.push(...block);
    if (data.length === 0) break;
  }
  return new Uint8Array(parts);
}
