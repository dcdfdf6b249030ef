/**
 * Benchmark: what copying each FUSE request out of guest memory costs the
 * virtio-fs device (issue 12: the server must only see private copies).
 *
 * In one run, per request, over a passthrough share on the host disk:
 *
 * - `device`: skiff's {@link VirtioFs} serving a chain (pop, copy into its
 *   `RequestBuffer`, server, used ring) — what the kvm engine runs;
 * - `before`: the reference — the same chain served the way the device did
 *   before the fix: a request in one buffer handed to the server as a view
 *   of guest memory (zero-copy, and unsafe; reproduced here only to measure
 *   against), a scattered one gathered into a fresh buffer;
 * - `copy`: `RequestBuffer.copy` of the same chain alone (part of `device`).
 *
 * Two layouts: `one` — the whole request in one descriptor (the case that
 * used to be zero-copy; any guest can send it), and `linux` — header,
 * arguments and each 4 KiB page of WRITE data in their own descriptors of
 * an indirect table, as Linux's virtio_fs sends them. Rows: LOOKUP of an
 * existing name, GETATTR, WRITE of 4 KiB, 128 KiB and 1 MiB at offset 0
 * (page cache). Each figure is the median of {@link ROUNDS} alternating
 * rounds.
 *
 * Run: `./skiff deno run -A devices/virtio/fs/request_copy_bench.ts` or
 * `deno task bench request_copy`.
 *
 * @module
 */

import { RegionMemory } from "../../../hv/memory.ts";
import { PassthroughFs } from "../../fuse/passthrough.ts";
import { Op } from "../../fuse/protocol.ts";
import { FuseServer } from "../../fuse/server.ts";
import { cat, le, z } from "../../fuse/test_client.ts";
import { ChainReader, RequestBuffer } from "../chain.ts";
import type { DeviceContext } from "../device.ts";
import { type MockBuffer, MockQueueDriver } from "../mock_driver.ts";
import { Queue } from "../queue.ts";
import { VirtioFs } from "./device.ts";
import { median } from "../../../tests/bench_util.ts";

const ROUNDS = 5;
const MEM = 64 << 20;

interface Rig {
  mem: RegionMemory;
  drv: MockQueueDriver;
  q: Queue;
  dev: VirtioFs;
  server: FuseServer;
}

function rig(share: string): Rig {
  const mem = RegionMemory.fromBytes(MEM);
  const drv = new MockQueueDriver(mem, 256, 0x1000, 0x10000, MEM - 0x20000);
  const queues = [new Queue(256), new Queue(256)];
  const q = queues[1];
  q.descTable = drv.rings.desc;
  q.availRing = drv.rings.avail;
  q.usedRing = drv.rings.used;
  q.ready = true;
  const server = new FuseServer(new PassthroughFs(share));
  const dev = new VirtioFs({ tag: "bench", server });
  const ctx: DeviceContext = {
    mem,
    queues,
    features: 0n,
    signalUsed: () => {},
    signalConfig: () => {},
    fail: (e) => {
      throw e;
    },
  };
  dev.activate(ctx);
  return { mem, drv, q, dev, server };
}

let unique = 1n;
function request(opcode: number, nodeid: number, args: Uint8Array): Uint8Array {
  const hdr = le([4, 40 + args.length], [4, opcode], [8, unique++], [8, nodeid], [4, 0], [4, 0], [
    4,
    1,
  ], [4, 0]);
  return cat(hdr, args);
}

function replyError(r: Rig): number {
  const [u] = r.drv.takeUsed();
  return new DataView(u.written.buffer).getInt32(4, true);
}

type Way = "device" | "before" | "copy";
type Layout = "one" | "linux";

/** The request's buffers in `layout` (Linux: header | arguments | one per 4 KiB data page). */
function buffers(req: Uint8Array, layout: Layout, argLen: number): MockBuffer[] {
  const reply: MockBuffer[] = [{ writable: 16 }, { writable: 4096 }];
  if (layout === "one") return [{ data: req }, ...reply];
  const out: MockBuffer[] = [{ data: req.subarray(0, 40) }];
  if (argLen > 0) out.push({ data: req.subarray(40, 40 + argLen) });
  for (let p = 40 + argLen; p < req.length; p += 4096) {
    out.push({ data: req.subarray(p, Math.min(req.length, p + 4096)) });
  }
  return [...out, ...reply];
}

/**
 * Serves `n` requests made of `bufs` one way, `batch` at a time (one notify
 * serves a batch, as a guest's burst); returns µs per request.
 */
function run(r: Rig, way: Way, bufs: MockBuffer[], n: number, batch: number): number {
  let t = 0;
  const indirect = bufs.length > 3;
  for (let done = 0; done < n; done += batch) {
    const k = Math.min(batch, n - done);
    for (let i = 0; i < k; i++) r.drv.add(bufs, { indirect });
    if (way === "copy") {
      // The copy alone: one chain copied k times.
      const c = r.q.pop(r.mem)!;
      const t0 = performance.now();
      for (let i = 0; i < k; i++) copier.copy(r.mem, c);
      t += performance.now() - t0;
      r.q.addUsed(r.mem, c.head, 0);
      for (let c2 = r.q.pop(r.mem); c2; c2 = r.q.pop(r.mem)) r.q.addUsed(r.mem, c2.head, 0);
      r.drv.takeUsed();
      continue;
    }
    const t0 = performance.now();
    if (way === "device") {
      r.dev.queueNotify(1);
    } else {
      for (let c = r.q.pop(r.mem); c; c = r.q.pop(r.mem)) {
        const request = c.readable.length === 1
          ? r.mem.slice(c.readable[0].addr, c.readable[0].len)
          : new ChainReader(r.mem, c).readAll();
        const iov = c.writable.map((s) => r.mem.slice(s.addr, s.len));
        r.q.addUsed(r.mem, c.head, r.server.handleV(request, iov));
      }
    }
    t += performance.now() - t0;
    const used = r.drv.takeUsed();
    if (used.length !== k) throw new Error(`bench: ${used.length} of ${k} chains came back`);
    for (const u of used) {
      const err = new DataView(u.written.buffer).getInt32(4, true);
      if (err !== 0) throw new Error(`bench: a request failed with ${err}`);
    }
  }
  return (t * 1000) / n;
}

const copier = new RequestBuffer(new FuseServer(new PassthroughFs("/")).requestBufferSize);

/** Runs every row; returns the `fs-request-copy …` lines. */
export function bench(): Promise<string[]> {
  const base = Deno.makeTempDirSync({ dir: "/var/tmp", prefix: "skiff-fs-copy-bench-" });
  const out: string[] = [];
  try {
    Deno.writeTextFileSync(`${base}/file`, "x");
    const r = rig(base);
    r.drv.add([
      {
        data: request(
          Op.INIT,
          0,
          cat(le([4, 7], [4, 37], [4, 1 << 20], [4, 0xffffffff], [4, 0]), new Uint8Array(44)),
        ),
      },
      { writable: 16 },
      { writable: 4096 },
    ]);
    r.dev.queueNotify(1);
    if (replyError(r) !== 0) throw new Error("bench: INIT failed");
    r.drv.add([{ data: request(Op.LOOKUP, 1, z("file")) }, { writable: 16 }, { writable: 4096 }]);
    r.dev.queueNotify(1);
    const [u] = r.drv.takeUsed();
    const node = Number(new DataView(u.written.buffer).getBigUint64(16, true));
    r.drv.add([{ data: request(Op.OPEN, node, le([4, 2], [4, 0])) }, { writable: 16 }, {
      writable: 4096,
    }]);
    r.dev.queueNotify(1);
    const [o] = r.drv.takeUsed();
    const fh = Number(new DataView(o.written.buffer).getBigUint64(16, true));
    const write = (size: number) =>
      request(
        Op.WRITE,
        node,
        cat(le([8, fh], [8, 0], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]), new Uint8Array(size)),
      );
    // [row, request, argument bytes (before WRITE data), iterations]
    const rows: [string, Uint8Array, number, number][] = [
      ["lookup", request(Op.LOOKUP, 1, z("file")), 5, 20000],
      ["getattr", request(Op.GETATTR, node, le([4, 0], [4, 0], [8, 0])), 16, 20000],
      ["write-4k", write(4096), 40, 10000],
      ["write-128k", write(128 << 10), 40, 1000],
      ["write-1m", write(1 << 20), 40, 200],
    ];
    for (const layout of ["one", "linux"] as const) {
      for (const [name, req, argLen, n] of rows) {
        const bufs = buffers(req, layout, argLen);
        // Chains of one batch must not share the driver's (wrapping) buffer heap.
        const batch = Math.max(1, Math.min(64, Math.floor((48 << 20) / (req.length + 8192))));
        const got: Record<Way, number[]> = { device: [], before: [], copy: [] };
        for (let round = 0; round < ROUNDS; round++) {
          const order: Way[] = round % 2
            ? ["device", "before", "copy"]
            : ["before", "device", "copy"];
          for (const way of order) got[way].push(run(r, way, bufs, n, batch));
        }
        const device = median(got.device), before = median(got.before);
        const f = (x: number) => x.toFixed(2);
        out.push(
          `fs-request-copy ${name} layout=${layout} device=${f(device)}us ` +
            `before=${f(before)}us copy=${f(median(got.copy))}us ` +
            `ratio=${(device / before).toFixed(2)}`,
        );
      }
    }
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
  return Promise.resolve(out);
}

if (import.meta.main) {
  for (const l of await bench()) console.log(l);
}
