import { notStrictEqual, strictEqual, throws } from "node:assert/strict";
import { close, O, open } from "../../kvm_ffi/libc.ts";
import { liveFileMappings, mapFile, mapPath } from "./file_mapping.ts";

const PAGE = 4096;

function withFile(size: number, f: (path: string) => void): void {
  const dir = Deno.makeTempDirSync({ dir: "/dev/shm", prefix: "skiff-fmap-" });
  try {
    const path = `${dir}/ram`;
    Deno.writeFileSync(path, new Uint8Array(0));
    Deno.truncateSync(path, size);
    f(path);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("file mapping: one mapping per file, shared by fds and paths, unmapped by the last release", () => {
  withFile(4 * PAGE, (path) => {
    const before = liveFileMappings();
    const fd1 = open(path, O.RDWR | O.CLOEXEC), fd2 = open(path, O.RDWR | O.CLOEXEC);
    try {
      const a = mapFile(fd1, 2 * PAGE);
      const b = mapFile(fd2, 4 * PAGE);
      const c = mapPath(path);
      strictEqual(liveFileMappings(), before + 1);
      // The whole file, once: the same address and the same bytes for all three.
      strictEqual(a.size, 4 * PAGE);
      strictEqual(Deno.UnsafePointer.value(a.base), Deno.UnsafePointer.value(b.base));
      strictEqual(Deno.UnsafePointer.value(c.base), Deno.UnsafePointer.value(b.base));
      a.bytes[3 * PAGE + 1] = 0x5a;
      strictEqual(c.bytes[3 * PAGE + 1], 0x5a);
      strictEqual(Deno.readFileSync(path)[3 * PAGE + 1], 0x5a);
      a.release();
      a.release(); // idempotent: does not drop b's or c's reference
      b.release();
      strictEqual(liveFileMappings(), before + 1);
      strictEqual(c.bytes[3 * PAGE + 1], 0x5a);
      c.release();
      strictEqual(liveFileMappings(), before);
    } finally {
      close(fd1);
      close(fd2);
    }
  });
});

Deno.test("file mapping: more than the file or than the live mapping holds gets a mapping of its own", () => {
  withFile(2 * PAGE, (path) => {
    const fd = open(path, O.RDWR | O.CLOEXEC);
    try {
      const small = mapFile(fd, PAGE);
      strictEqual(small.size, 2 * PAGE);
      const big = mapFile(fd, 3 * PAGE);
      strictEqual(big.size, 3 * PAGE);
      notStrictEqual(Deno.UnsafePointer.value(big.base), Deno.UnsafePointer.value(small.base));
      big.bytes[5] = 7;
      strictEqual(small.bytes[5], 7); // one file under both
      // The newest serves later requests; the older one lives on with its reference.
      const again = mapFile(fd, PAGE);
      strictEqual(Deno.UnsafePointer.value(again.base), Deno.UnsafePointer.value(big.base));
      for (const m of [small, big, again]) m.release();
    } finally {
      close(fd);
    }
  });
});

Deno.test("file mapping: an empty file is refused with a clear error", () => {
  withFile(0, (path) => {
    throws(() => mapPath(path), /cannot map an empty file/);
  });
});
