/**
 * L0 tests of {@link SpliceSender}: its "/dev/fuse" here is a plain file, so what
 * it sends is what lands there: a reply header with the right length and unique,
 * then the file's bytes; nothing at all when it declines (the server then replies
 * the ordinary way), and a pipe left empty for the next reply.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { SpliceSender } from "./dev_fuse_splice.ts";
import { cpath, r, sys } from "./sys.ts";

const O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0o100, O_TRUNC = 0o1000, O_DIRECTORY = 0o200000;

function open(path: string, flags: number): number {
  const fd = r(sys.openat(-100, cpath(path), flags | 0o2000000, 0o600));
  if (fd < 0) throw new Error(`open ${path}: errno ${-fd}`);
  return fd;
}

/** A sender whose output is a file (the sender writes it like a stream, at the fd's offset). */
async function setup(size: number) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-splice-" });
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  await Deno.writeFile(`${dir}/src`, data);
  const src = open(`${dir}/src`, O_RDONLY);
  const out = open(`${dir}/out`, O_WRONLY | O_CREAT | O_TRUNC);
  const sender = SpliceSender.open(out, 256 << 10, 4096);
  ok(sender, "a pipe for the sender");
  let seen = 0;
  return {
    dir,
    data,
    src,
    sender,
    /** What was sent since the last call. */
    async sent(): Promise<Uint8Array> {
      const b = (await Deno.readFile(`${dir}/out`)).subarray(seen);
      seen += b.length;
      return b;
    },
    async done() {
      sender.close();
      sys.close(src);
      sys.close(out);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function header(b: Uint8Array): [number, number, number, number] {
  const v = new DataView(b.buffer, b.byteOffset, 16);
  return [v.getUint32(0, true), v.getInt32(4, true), v.getUint32(8, true), v.getUint32(12, true)];
}

Deno.test("splice sender: header then the file's bytes, clipped at EOF", async () => {
  const t = await setup(300_001);
  try {
    strictEqual(t.sender.send(7, 9, t.src, 4096n + 13n, 200_000), 200_000);
    let b = await t.sent();
    deepStrictEqual(header(b), [16 + 200_000, 0, 7, 9]);
    deepStrictEqual(b.subarray(16), t.data.subarray(4109, 4109 + 200_000));
    // 200 KiB asked for 1 byte before the end: one byte.
    strictEqual(t.sender.send(1, 0, t.src, 300_000n, 200_000), 1);
    b = await t.sent();
    deepStrictEqual(header(b), [17, 0, 1, 0]);
    strictEqual(b[16], t.data[300_000]);
  } finally {
    await t.done();
  }
});

Deno.test("splice sender: declines (sends nothing) past EOF, too large, bad offsets, unspliceable fds", async () => {
  const t = await setup(100_000);
  const dirFd = open(t.dir, O_RDONLY | O_DIRECTORY);
  try {
    strictEqual(t.sender.send(1, 0, t.src, 100_000n, 8192), -1, "at EOF");
    strictEqual(t.sender.send(1, 0, t.src, 1n << 40n, 8192), -1, "far past EOF");
    strictEqual(t.sender.send(1, 0, t.src, 0n, 1 << 20), -1, "more than the pipe holds");
    strictEqual(
      t.sender.send(1, 0, t.src, (1n << 64n) - 4096n, 8192),
      -1,
      "u64 offset beyond loff_t",
    );
    strictEqual(t.sender.send(1, 0, dirFd, 0n, 8192), -1, "a directory");
    strictEqual(t.sender.send(1, 0, 1 << 20, 0n, 8192), -1, "no such fd");
    strictEqual((await t.sent()).length, 0);
    // Nothing left behind in the pipe: the next reply is whole and alone.
    strictEqual(t.sender.send(5, 6, t.src, 0n, 8192), 8192);
    const b = await t.sent();
    deepStrictEqual(header(b), [16 + 8192, 0, 5, 6]);
    strictEqual(b.length, 16 + 8192);
    deepStrictEqual(b.subarray(16), t.data.subarray(0, 8192));
  } finally {
    sys.close(dirFd);
    await t.done();
  }
});
