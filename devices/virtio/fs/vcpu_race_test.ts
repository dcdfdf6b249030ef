// L0: virtio-fs against a real racing vCPU — a Worker that keeps flipping a
// LOOKUP name in shared guest memory between "abcd" and "../x" while the
// device serves the same request over and over on the main thread. Whatever
// the interleaving, the server must answer for share/abcd or refuse the name;
// it must never look up ../x (a file next to the share). Timing decides which
// interleavings a run sees, so this complements the deterministic
// HostileMemory tests (race_test.ts) rather than replacing them: with the
// pre-fix device (a view of guest memory) it found the escape in about half
// of its runs.
import { ok, strictEqual } from "node:assert/strict";
import { type MemoryRegion, RegionMemory } from "../../../hv/memory.ts";
import { Errno } from "../../../kvm_ffi/errno.ts";
import { PassthroughFs } from "../../fuse/passthrough.ts";
import { Op } from "../../fuse/protocol.ts";
import { FuseServer } from "../../fuse/server.ts";
import { cat, le, z } from "../../fuse/test_client.ts";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../queue.ts";
import { MockMmioDriver } from "../mock_driver.ts";
import { VirtioMmioTransport } from "../mmio.ts";
import { VirtioFs } from "./device.ts";

const ALL = (1n << 64n) - 1n;
/** Upper bound on requests: only there to end a run that never sees both outcomes. */
const MAX_REQUESTS = 400_000;
/** Requests at least, and of each outcome (valid name copied, hostile name copied). */
const MIN_REQUESTS = 50_000;
const MIN_EACH = 200;

Deno.test("virtio-fs: a name flipped by a concurrently running vCPU never reaches the host as ../x", async () => {
  const base = Deno.makeTempDirSync({ prefix: "skiff-vcpurace-" });
  const share = `${base}/share`;
  Deno.mkdirSync(share);
  Deno.writeTextFileSync(`${share}/abcd`, "inside");
  Deno.writeTextFileSync(`${base}/x`, "outside");
  const inside = BigInt(Deno.lstatSync(`${share}/abcd`).ino!);
  const outside = BigInt(Deno.lstatSync(`${base}/x`).ino!);
  const fs = new PassthroughFs(share);
  const size = 4 << 20;
  const sab = new SharedArrayBuffer(size);
  const region: MemoryRegion = { guestAddr: 0, size, bytes: new Uint8Array(sab) as never };
  const mem = new RegionMemory([region]);
  const dev = new VirtioFs({ tag: "race", server: new FuseServer(fs) });
  const t = new VirtioMmioTransport(dev, mem, () => {});
  const drv = new MockMmioDriver(t, mem, 0x10000, 0x3e0000);
  drv.init(ALL, 2, 16);
  const q = drv.queues[1];
  const control = new SharedArrayBuffer(8);
  const ctl = new Int32Array(control);
  const worker = new Worker(new URL("../testdata/flipper_worker.ts", import.meta.url), {
    type: "module",
  });
  const stopped = new Promise((r) => worker.onmessage = r);
  let started = false;
  try {
    const init = cat(
      le([4, 104], [4, Op.INIT], [8, 1], [8, 0], [8, 0], [8, 0]),
      le([4, 7], [4, 37], [4, 1 << 20], [4, 0], [4, 0]),
      new Uint8Array(44),
    );
    q.add([{ data: init }, { writable: 16 }, { writable: 256 }]);
    drv.kick(1);
    strictEqual(new DataView(q.takeUsed()[0].written.buffer).getInt32(4, true), 0, "INIT");
    // One LOOKUP chain at fixed addresses, made available again and again: the
    // flipper rewrites its name while the device serves it.
    const lookup = cat(le([4, 45], [4, Op.LOOKUP], [8, 2], [8, 1], [8, 0], [8, 0]), z("abcd"));
    const REQ = 0x200000, HDR = 0x201000, BODY = 0x201100;
    mem.write(REQ, lookup);
    q.writeDesc(q.rings.desc, 0, REQ, lookup.length, VIRTQ_DESC_F_NEXT, 1);
    q.writeDesc(q.rings.desc, 1, HDR, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
    q.writeDesc(q.rings.desc, 2, BODY, 256, VIRTQ_DESC_F_WRITE, 0);
    const serve = () => {
      q.pushAvail(0);
      drv.kick(1);
      strictEqual(q.takeUsed().length, 1);
      return { error: -mem.readU32(HDR + 4) | 0, ino: mem.readU64(BODY + 40) };
    };
    const first = serve();
    strictEqual(first.error, 0);
    strictEqual(first.ino, inside);
    started = true;
    worker.postMessage({
      memory: sab,
      at: REQ + 40,
      values: [new TextEncoder().encode("abcd"), new TextEncoder().encode("../x")],
      control,
    });
    while (Atomics.load(ctl, 1) === 0) await new Promise((r) => setTimeout(r, 0));
    let valid = 0, refused = 0, n = 0;
    for (; n < MAX_REQUESTS; n++) {
      if (n >= MIN_REQUESTS && valid >= MIN_EACH && refused >= MIN_EACH) break;
      mem.writeU64(BODY + 40, 0n);
      const r = serve();
      ok(r.ino !== outside, `request ${n}: LOOKUP answered for ../x (ino ${r.ino})`);
      if (r.error === 0) {
        strictEqual(r.ino, inside, `request ${n}: LOOKUP answered for another file`);
        valid++;
      } else {
        ok(
          r.error === Errno.EINVAL || r.error === Errno.ENOENT,
          `request ${n}: unexpected errno ${r.error}`,
        );
        refused++;
      }
    }
    ok(
      valid >= MIN_EACH && refused >= MIN_EACH,
      `both outcomes seen: ${valid} valid, ${refused} refused in ${n} requests`,
    );
  } finally {
    Atomics.store(ctl, 0, 1);
    if (started) await stopped;
    worker.terminate();
    fs.close();
    Deno.removeSync(base, { recursive: true });
  }
});
