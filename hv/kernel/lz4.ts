/**
 * A decoder for the LZ4 "legacy frame" the Linux build uses for
 * `vmlinux.bin.lz4` (`lz4 -l`), written from the LZ4 block and frame format
 * descriptions (lz4/doc/lz4_Block_format.md, lz4_Frame_format.md "Legacy
 * frame"). Small on purpose: skiff only needs to unpack one kernel payload.
 *
 * Legacy frame: magic 0x184C2102, then blocks, each a little-endian u32
 * compressed size followed by an LZ4 block that decodes to at most 8 MiB. A
 * new magic may start another frame. The kernel build appends the
 * decompressed size as a u32 (`size_append`), which ends the stream.
 *
 * @module
 */

/** Magic number of the LZ4 legacy frame. */
export const LZ4_LEGACY_MAGIC = 0x184c2102;
/** Maximum decoded size of one legacy block (8 MiB). */
export const LZ4_LEGACY_BLOCK_MAX = 8 << 20;

/** Malformed LZ4 input; says where decoding failed. */
export class Lz4Error extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Lz4Error";
  }
}

/** Whether `data` starts with the LZ4 legacy frame magic. */
export function isLz4Legacy(data: Uint8Array): boolean {
  return data.length >= 4 &&
    new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) === LZ4_LEGACY_MAGIC;
}

/**
 * Decodes one LZ4 block from `src[start, end)` into `dst` at `out`; returns the
 * new output position. Throws {@link Lz4Error} on truncated input, an offset
 * before the start of the output, or output overflow.
 */
export function decodeLz4Block(
  src: Uint8Array,
  start: number,
  end: number,
  dst: Uint8Array,
  out: number,
): number {
  let i = start;
  while (i < end) {
    const token = src[i++];
    let litLen = token >> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (i >= end) throw new Lz4Error(`truncated literal length at input offset ${i}`);
        b = src[i++];
        litLen += b;
      } while (b === 255);
    }
    if (i + litLen > end) {
      throw new Lz4Error(`literals of ${litLen} bytes run past the block end at ${i}`);
    }
    if (out + litLen > dst.length) throw new Lz4Error("output larger than declared");
    dst.set(src.subarray(i, i + litLen), out);
    i += litLen;
    out += litLen;
    // The last sequence of a block has literals only.
    if (i === end) break;
    if (i + 2 > end) throw new Lz4Error(`truncated match offset at input offset ${i}`);
    const offset = src[i] | (src[i + 1] << 8);
    i += 2;
    if (offset === 0 || offset > out) {
      throw new Lz4Error(`bad match offset ${offset} at output position ${out}`);
    }
    let matchLen = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (i >= end) throw new Lz4Error(`truncated match length at input offset ${i}`);
        b = src[i++];
        matchLen += b;
      } while (b === 255);
    }
    if (out + matchLen > dst.length) throw new Lz4Error("output larger than declared");
    let from = out - offset;
    if (offset >= matchLen) {
      dst.copyWithin(out, from, from + matchLen);
      out += matchLen;
    } else {
      // Overlapping match: repeats the last `offset` bytes, byte by byte.
      for (let k = 0; k < matchLen; k++) dst[out++] = dst[from++];
    }
  }
  return out;
}

/**
 * Decodes an LZ4 legacy-frame stream. `expectedSize` bounds the output (the
 * kernel payload's appended size); when omitted, the trailing u32 of `data`
 * is taken as the size when it is consistent, otherwise blocks grow the
 * output as needed.
 */
export function decodeLz4Legacy(data: Uint8Array, expectedSize?: number): Uint8Array {
  if (!isLz4Legacy(data)) {
    throw new Lz4Error("not an LZ4 legacy frame (magic 0x184c2102 missing)");
  }
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let capacity = expectedSize ?? LZ4_LEGACY_BLOCK_MAX;
  let dst = new Uint8Array(capacity);
  let out = 0;
  let i = 4;
  while (i + 4 <= data.length) {
    const size = dv.getUint32(i, true);
    if (size === LZ4_LEGACY_MAGIC) {
      i += 4; // a concatenated frame
      continue;
    }
    // Fewer than 4 bytes of block would follow: this is the kernel's appended size.
    if (i + 4 + size > data.length) {
      if (i + 4 === data.length) break;
      throw new Lz4Error(
        `block of ${size} bytes at input offset ${i} runs past the end (${data.length})`,
      );
    }
    if (expectedSize === undefined && out + LZ4_LEGACY_BLOCK_MAX > capacity) {
      capacity = Math.max(capacity * 2, out + LZ4_LEGACY_BLOCK_MAX);
      const grown = new Uint8Array(capacity);
      grown.set(dst.subarray(0, out));
      dst = grown;
    }
    out = decodeLz4Block(data, i + 4, i + 4 + size, dst, out);
    i += 4 + size;
  }
  if (expectedSize !== undefined && out !== expectedSize) {
    throw new Lz4Error(`decoded ${out} bytes, expected ${expectedSize}`);
  }
  return out === dst.length ? dst : dst.slice(0, out);
}
