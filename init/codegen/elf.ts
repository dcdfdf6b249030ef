/**
 * A minimal static ELF64 executable writer (System V gABI, "ELF-64 Object
 * File Format" 1.5): an ELF header, two PT_LOAD program headers (text R+X
 * including the headers, data R+W with the bss as memsz beyond filesz) and
 * no sections, which is all the kernel's binfmt_elf needs.
 *
 * @module
 */

/** Layout of the image to wrap (offsets relative to the start of `image`). */
export interface ElfImage {
  /** Virtual address of file offset 0 (page aligned). */
  base: number;
  /** File offset (page aligned) where `image` starts; the headers fit before it. */
  textOffset: number;
  /** Code followed by data; everything from `bssStart` on is zero and not stored. */
  image: Uint8Array;
  /** End of code. */
  codeEnd: number;
  /** Start of the data segment (page aligned relative to `base`). */
  dataStart: number;
  /** Start of the bss (zero) part. */
  bssStart: number;
  /** End of memory. */
  end: number;
  /** Entry virtual address. */
  entry: number;
}

const EHDR = 64;
const PHDR = 56;
const PT_LOAD = 1;
const PT_GNU_STACK = 0x6474e551;
const PF_X = 1;
const PF_W = 2;
const PF_R = 4;

/** Builds the ELF file. */
export function buildElf(img: ElfImage): Uint8Array<ArrayBuffer> {
  const page = 0x1000;
  if (img.base % page || img.textOffset % page || (img.textOffset + img.dataStart) % page) {
    throw new Error("ELF segments must be page aligned");
  }
  if (EHDR + 3 * PHDR > img.textOffset) throw new Error("no room for the ELF headers");
  const fileSize = img.textOffset + img.bssStart;
  const out = new Uint8Array(fileSize);
  const dv = new DataView(out.buffer);
  // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0);
  dv.setUint16(16, 2, true); // e_type = ET_EXEC
  dv.setUint16(18, 62, true); // e_machine = EM_X86_64
  dv.setUint32(20, 1, true); // e_version
  dv.setBigUint64(24, BigInt(img.entry), true);
  dv.setBigUint64(32, BigInt(EHDR), true); // e_phoff
  dv.setBigUint64(40, 0n, true); // e_shoff
  dv.setUint32(48, 0, true); // e_flags
  dv.setUint16(52, EHDR, true);
  dv.setUint16(54, PHDR, true);
  dv.setUint16(56, 3, true); // e_phnum
  dv.setUint16(58, 64, true); // e_shentsize
  dv.setUint16(60, 0, true);
  dv.setUint16(62, 0, true);
  const ph = (
    i: number,
    type: number,
    flags: number,
    off: number,
    vaddr: number,
    filesz: number,
    memsz: number,
    align: number,
  ) => {
    const o = EHDR + i * PHDR;
    dv.setUint32(o, type, true);
    dv.setUint32(o + 4, flags, true);
    dv.setBigUint64(o + 8, BigInt(off), true);
    dv.setBigUint64(o + 16, BigInt(vaddr), true);
    dv.setBigUint64(o + 24, BigInt(vaddr), true); // p_paddr
    dv.setBigUint64(o + 32, BigInt(filesz), true);
    dv.setBigUint64(o + 40, BigInt(memsz), true);
    dv.setBigUint64(o + 48, BigInt(align), true);
  };
  const textSize = img.textOffset + img.codeEnd;
  ph(0, PT_LOAD, PF_R | PF_X, 0, img.base, textSize, textSize, page);
  const dOff = img.textOffset + img.dataStart;
  ph(
    1,
    PT_LOAD,
    PF_R | PF_W,
    dOff,
    img.base + dOff,
    img.bssStart - img.dataStart,
    img.end - img.dataStart,
    page,
  );
  ph(2, PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 16);
  out.set(img.image.subarray(0, img.bssStart), img.textOffset);
  return out;
}
