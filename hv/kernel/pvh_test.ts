import { strictEqual } from "node:assert/strict";
import { hasPvhEntry } from "./pvh.ts";

/** A note: name, type, descriptor, each padded to 4 bytes. */
function note(name: string, type: number, desc: number[]): number[] {
  const n = [...new TextEncoder().encode(name), 0];
  const pad = (a: number[]) => [...a, ...new Array((4 - a.length % 4) % 4).fill(0)];
  const u32 = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24];
  return [...u32(n.length), ...u32(desc.length), ...u32(type), ...pad(n), ...pad(desc)];
}

/** An ELF64 x86-64 header, one PT_NOTE program header, then `notes`. */
function elf(notes: number[], o: { cls?: number; machine?: number; noteSize?: number } = {}) {
  const b = new Uint8Array(64 + 56 + notes.length);
  const dv = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, o.cls ?? 2, 1, 1]);
  dv.setUint16(18, o.machine ?? 62, true);
  dv.setBigUint64(32, 64n, true); // e_phoff
  dv.setUint16(54, 56, true); // e_phentsize
  dv.setUint16(56, 1, true); // e_phnum
  dv.setUint32(64, 4, true); // PT_NOTE
  dv.setBigUint64(64 + 8, 120n, true); // p_offset
  dv.setBigUint64(64 + 32, BigInt(o.noteSize ?? notes.length), true); // p_filesz
  b.set(notes, 120);
  return b;
}

Deno.test("hasPvhEntry: the Xen PHYS32_ENTRY note among others, and everything that is not one", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const check = (bytes: Uint8Array, want: boolean, what: string) => {
      Deno.writeFileSync(`${dir}/k`, bytes);
      strictEqual(hasPvhEntry(`${dir}/k`), want, what);
    };
    const entry = note("Xen", 18, [0x50, 0x08, 0x00, 0x01, 0, 0, 0, 0]);
    check(elf([...note("GNU", 3, [1, 2, 3, 4]), ...note("Xen", 6, [0x6c]), ...entry]), true, "PVH");
    check(
      elf([...note("Xen", 6, [0x6c]), ...note("Xen", 5, [1, 2, 3, 4])]),
      false,
      "Xen, no entry",
    );
    check(elf(note("Xem", 18, [1, 2, 3, 4])), false, "other owner");
    check(elf(note("Xen", 18, [1])), false, "entry note too short for an address");
    check(elf(entry, { noteSize: entry.length - 4 }), false, "note cut by the segment");
    check(elf(entry, { cls: 1 }), false, "ELF32");
    check(elf(entry, { machine: 3 }), false, "i386");
    check(elf(entry).subarray(0, 100), false, "truncated program headers");
    check(
      new TextEncoder().encode("MZ not an ELF at all, a bzImage would be HdrS"),
      false,
      "bzImage",
    );
    strictEqual(hasPvhEntry(`${dir}/missing`), false);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
