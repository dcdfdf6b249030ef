/** L0 tests of the QEMU stream attachment over a real Unix socket. */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { NetStack } from "./service.ts";
import { listenStream } from "./stream.ts";
import { arpRequest, icmpEcho, ipv4 } from "./testdata/frames.ts";
import { ETH_HLEN, PROTO, u16 } from "./wire.ts";

function framed(...frames: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(frames.reduce((s, f) => s + 4 + f.length, 0));
  let o = 0;
  for (const f of frames) {
    new DataView(out.buffer).setUint32(o, f.length);
    out.set(f, o + 4);
    o += 4 + f.length;
  }
  return out;
}

async function readFrames(conn: Deno.Conn, count: number): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = [];
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  while (frames.length < count) {
    const n = await conn.read(chunk);
    if (n === null) break;
    buf = Uint8Array.from([...buf, ...chunk.subarray(0, n)]);
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer).getUint32(0);
      if (buf.length < 4 + len) break;
      frames.push(buf.slice(4, 4 + len));
      buf = buf.slice(4 + len);
    }
  }
  return frames;
}

Deno.test("stream: length-prefixed frames in, replies out; split writes reassembled", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-net-stream-" });
  const stack = new NetStack();
  try {
    const l = listenStream(stack, `${dir}/net.sock`);
    const conn = await Deno.connect({ transport: "unix", path: l.path });
    const bytes = framed(arpRequest(), ipv4(PROTO.ICMP, icmpEcho(new Uint8Array(100).fill(9))));
    // Write in awkward pieces: the reader must reassemble frames across reads.
    for (const cut of [[0, 3], [3, 50], [50, bytes.length]]) {
      await conn.write(bytes.subarray(cut[0], cut[1]));
      await new Promise((r) => setTimeout(r, 5));
    }
    const frames = await readFrames(conn, 2);
    deepStrictEqual(frames.map((f) => u16(f, 12)), [0x0806, 0x0800]);
    strictEqual(frames[1][ETH_HLEN + 20], 0); // echo reply
    // A bogus length ends the attachment.
    await conn.write(new Uint8Array([0xff, 0xff, 0xff, 0xff]));
    const c = await l.done;
    strictEqual(c.framesIn, 2);
    strictEqual(c.framesOut, 2);
    conn.close();
    await l.close();
    ok(stack.counters().icmpEchoReplies === 1);
  } finally {
    await stack.close();
    await Deno.remove(dir, { recursive: true });
  }
});
