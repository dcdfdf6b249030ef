import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { copySparse, copySparseInBackground } from "./sparse_copy.ts";

function withDir(fn: (dir: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "skiff-sparse-" });
  try {
    fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** Temp dirs on disk and on tmpfs: the copy goes both ways in the qemu engine. */
const DIRS = ["/tmp", "/dev/shm"].filter((d) => {
  try {
    return Deno.statSync(d).isDirectory;
  } catch {
    return false;
  }
});

type Copy = (src: string, dst: string) => Promise<{ size: number; dataBytes: number }>;

const COPIES: [string, Copy][] = [
  ["copySparse", (src, dst) => Promise.resolve(copySparse(src, dst))],
  ["copySparseInBackground", (src, dst) => {
    const copying = copySparseInBackground(src, dst);
    // The target exists at its full size before the data moves (QEMU maps it then).
    strictEqual(Deno.statSync(dst).size, Deno.statSync(src).size);
    return copying;
  }],
  ["copySparseInBackground (existing hole)", (src, dst) => {
    // As the qemu engine's early QEMU has it: created at the size, a hole, 0600.
    Deno.writeFileSync(dst, new Uint8Array(0), { createNew: true, mode: 0o600 });
    Deno.truncateSync(dst, Deno.statSync(src).size);
    return copySparseInBackground(src, dst, { existing: "hole" });
  }],
  ["copySparseInBackground (existing reset)", (src, dst) => {
    // A spare RAM copy of another entry (snapshot/ram_spares.ts): data where
    // the source has holes and where it has data; none of it may survive.
    Deno.writeFileSync(dst, new Uint8Array(0), { createNew: true, mode: 0o600 });
    using f = Deno.openSync(dst, { write: true });
    f.truncateSync(Deno.statSync(src).size);
    const junk = new Uint8Array(1 << 20).fill(0xaa);
    for (const at of [0, 16 << 20, 40 << 20]) {
      f.seekSync(at, Deno.SeekMode.Start);
      f.writeSync(junk);
    }
    return copySparseInBackground(src, dst, { existing: "reset" });
  }],
];

for (const [name, copy] of COPIES) {
  Deno.test(`${name} keeps content and holes, disk ↔ tmpfs`, () => checkCopy(copy));
}

async function checkCopy(copySparse: Copy): Promise<void> {
  const disk = Deno.makeTempDirSync({ prefix: "skiff-sparse-" });
  try {
    const src = join(disk, "src");
    using f = Deno.openSync(src, { write: true, create: true });
    f.truncateSync(64 << 20);
    const data = new Uint8Array(3 * 4096).map((_, i) => (i * 7 + 1) & 0xff);
    f.seekSync(16 << 20, Deno.SeekMode.Start);
    f.writeSync(data);
    f.seekSync((64 << 20) - 4096, Deno.SeekMode.Start);
    f.writeSync(data.subarray(0, 4096));
    for (const root of DIRS) {
      const dst = Deno.makeTempDirSync({ dir: root, prefix: "skiff-sparse-dst-" });
      try {
        const r = await copySparse(src, join(dst, "copy"));
        strictEqual(r.size, 64 << 20);
        strictEqual(r.dataBytes, 4 * 4096);
        const st = Deno.statSync(join(dst, "copy"));
        strictEqual(st.size, 64 << 20);
        ok(st.blocks! * 512 < 1 << 20, `${root}: ${st.blocks! * 512} bytes allocated, holes lost`);
        const copy = Deno.readFileSync(join(dst, "copy"));
        deepStrictEqual(copy.subarray(16 << 20, (16 << 20) + data.length), data);
        deepStrictEqual(copy.subarray((64 << 20) - 4096), data.subarray(0, 4096));
        ok(copy.subarray(0, 16 << 20).every((b) => b === 0));
        ok(copy.subarray((16 << 20) + data.length, (64 << 20) - 4096).every((b) => b === 0));
        strictEqual((st.mode ?? 0) & 0o777, 0o600);
      } finally {
        Deno.removeSync(dst, { recursive: true });
      }
    }
  } finally {
    Deno.removeSync(disk, { recursive: true });
  }
}

Deno.test("copySparseInBackground: a source that cannot be read leaves no target", () => {
  const dir = Deno.makeTempDirSync({ prefix: "skiff-sparse-" });
  try {
    throws(() => copySparseInBackground(join(dir, "missing"), join(dir, "out")), /ENOENT/);
    throws(() => Deno.statSync(join(dir, "out")), Deno.errors.NotFound);
    // A directory opens but has no size to give the target: refused, the target removed.
    throws(() => copySparseInBackground(dir, join(dir, "out")), /EINVAL/);
    throws(() => Deno.statSync(join(dir, "out")), Deno.errors.NotFound);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("copySparse refuses an existing target and a missing source, leaving nothing", () => {
  withDir((dir) => {
    const src = join(dir, "src");
    Deno.writeTextFileSync(src, "x");
    Deno.writeTextFileSync(join(dir, "taken"), "keep");
    throws(() => copySparse(src, join(dir, "taken")), /EEXIST/);
    strictEqual(Deno.readTextFileSync(join(dir, "taken")), "keep");
    throws(() => copySparse(join(dir, "missing"), join(dir, "out")), /ENOENT/);
    throws(() => Deno.statSync(join(dir, "out")), Deno.errors.NotFound);
    // An empty file copies as an empty file.
    Deno.writeFileSync(join(dir, "empty"), new Uint8Array());
    deepStrictEqual(copySparse(join(dir, "empty"), join(dir, "empty2")), { size: 0, dataBytes: 0 });
  });
});

Deno.test("copySparseInBackground (existing): a target of another size or none is refused", () => {
  withDir((dir) => {
    const src = join(dir, "src");
    Deno.writeFileSync(src, new Uint8Array(8192).fill(1));
    Deno.writeFileSync(join(dir, "small"), new Uint8Array(4096));
    throws(
      () => copySparseInBackground(src, join(dir, "small"), { existing: "hole" }),
      /8192 bytes.*4096 bytes/,
    );
    throws(() => copySparseInBackground(src, join(dir, "none"), { existing: "hole" }), /ENOENT/);
  });
});
