/**
 * A minimal ELF64 little-endian reader (System V gABI, "ELF Header",
 * "Program Header", "Sections"): enough to load an x86-64 `vmlinux` by its
 * program headers and to read named sections of kernel modules.
 *
 * @module
 */

/** ELF program header type of a loadable segment (gABI). */
export const PT_LOAD = 1;
/** ELF machine number of x86-64 (gABI). */
export const EM_X86_64 = 62;

/** Input that is not a loadable ELF64 x86-64 file; says which field was wrong. */
export class ElfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ElfError";
  }
}

/** One program header. */
export interface ProgramHeader {
  type: number;
  flags: number;
  /** File offset of the segment's bytes. */
  offset: number;
  vaddr: bigint;
  paddr: number;
  /** Bytes present in the file. */
  filesz: number;
  /** Bytes in memory (the rest, past filesz, is zero). */
  memsz: number;
  align: number;
}

/** One section header, with its name resolved. */
export interface SectionHeader {
  name: string;
  type: number;
  offset: number;
  size: number;
}

/** Whether `data` starts with the ELF magic. */
export function isElf(data: Uint8Array): boolean {
  return data.length >= 4 && data[0] === 0x7f && data[1] === 0x45 && data[2] === 0x4c &&
    data[3] === 0x46;
}

/** A parsed ELF64 LE file (views into the original bytes). */
export class Elf64 {
  readonly data: Uint8Array;
  readonly #dv: DataView;
  /** e_type (2 = EXEC, 1 = REL, …). */
  readonly type: number;
  readonly machine: number;
  /** e_entry: the virtual entry address. */
  readonly entry: bigint;

  /** Parses the ELF header; throws {@link ElfError} if `data` is not ELF64 LE. */
  constructor(data: Uint8Array, readonly name = "ELF file") {
    if (!isElf(data)) throw new ElfError(`${name}: not an ELF file (no \\x7fELF magic)`);
    if (data.length < 64) {
      throw new ElfError(`${name}: ELF header truncated (${data.length} bytes)`);
    }
    if (data[4] !== 2) throw new ElfError(`${name}: not ELF64 (EI_CLASS ${data[4]})`);
    if (data[5] !== 1) throw new ElfError(`${name}: not little-endian (EI_DATA ${data[5]})`);
    this.data = data;
    this.#dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.type = this.#dv.getUint16(16, true);
    this.machine = this.#dv.getUint16(18, true);
    this.entry = this.#dv.getBigUint64(24, true);
  }

  #u64(off: number): number {
    const v = this.#dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ElfError(
        `${this.name}: value 0x${v.toString(16)} at 0x${off.toString(16)} too large`,
      );
    }
    return Number(v);
  }

  #table(offField: number, entSizeField: number, numField: number, minEnt: number) {
    const off = this.#u64(offField);
    const entSize = this.#dv.getUint16(entSizeField, true);
    const num = this.#dv.getUint16(numField, true);
    if (num === 0) return { off, entSize, num };
    if (entSize < minEnt || off + entSize * num > this.data.length) {
      throw new ElfError(
        `${this.name}: header table at 0x${
          off.toString(16)
        } (${num} × ${entSize}) lies outside the file`,
      );
    }
    return { off, entSize, num };
  }

  /** All program headers. */
  programHeaders(): ProgramHeader[] {
    const { off, entSize, num } = this.#table(32, 54, 56, 56);
    const out: ProgramHeader[] = [];
    for (let i = 0; i < num; i++) {
      const p = off + i * entSize;
      const ph: ProgramHeader = {
        type: this.#dv.getUint32(p, true),
        flags: this.#dv.getUint32(p + 4, true),
        offset: this.#u64(p + 8),
        vaddr: this.#dv.getBigUint64(p + 16, true),
        paddr: this.#u64(p + 24),
        filesz: this.#u64(p + 32),
        memsz: this.#u64(p + 40),
        align: this.#u64(p + 48),
      };
      if (ph.type === PT_LOAD) {
        if (ph.offset + ph.filesz > this.data.length) {
          throw new ElfError(
            `${this.name}: segment ${i} (offset 0x${
              ph.offset.toString(16)
            }, ${ph.filesz} bytes) lies outside the file`,
          );
        }
        if (ph.filesz > ph.memsz) {
          throw new ElfError(
            `${this.name}: segment ${i} has filesz ${ph.filesz} > memsz ${ph.memsz}`,
          );
        }
      }
      out.push(ph);
    }
    return out;
  }

  /** All section headers with names from the section-name string table. */
  sections(): SectionHeader[] {
    const { off, entSize, num } = this.#table(40, 58, 60, 64);
    const raw: { nameOff: number; type: number; offset: number; size: number }[] = [];
    for (let i = 0; i < num; i++) {
      const s = off + i * entSize;
      raw.push({
        nameOff: this.#dv.getUint32(s, true),
        type: this.#dv.getUint32(s + 4, true),
        offset: this.#u64(s + 24),
        size: this.#u64(s + 32),
      });
    }
    const strndx = this.#dv.getUint16(62, true);
    const strtab = raw[strndx];
    const decoder = new TextDecoder();
    return raw.map((r) => {
      let name = "";
      if (strtab && strtab.offset + r.nameOff < this.data.length) {
        const start = strtab.offset + r.nameOff;
        let end = start;
        while (end < this.data.length && this.data[end] !== 0) end++;
        name = decoder.decode(this.data.subarray(start, end));
      }
      return { name, type: r.type, offset: r.offset, size: r.size };
    });
  }

  /** The bytes of the section called `name`, or undefined. */
  section(name: string): Uint8Array | undefined {
    const s = this.sections().find((x) => x.name === name);
    if (!s || s.type === 8 /* SHT_NOBITS */) return undefined;
    if (s.offset + s.size > this.data.length) {
      throw new ElfError(`${this.name}: section ${name} lies outside the file`);
    }
    return this.data.subarray(s.offset, s.offset + s.size);
  }
}
