/**
 * Host ↔ guest throughput of skiff's virtio-vsock (TypeScript, served to
 * QEMU's vhost-user-vsock-device through the vhost-user adapter) against the
 * reference in the same guest: QEMU's own virtio-serial port (C, inside
 * QEMU, a Unix socket chardev). 32 MiB each way, the Debian kernel under TCG.
 * Both sides start a guest process per transfer (socat for vsock, head/cat
 * for the serial port), which counts in the times. A third line compares
 * guest → host vsock with the guest's own vsock stack alone (vsock_loopback,
 * both ends in the guest, no device): under TCG the guest's vsock stack, not
 * the device, bounds guest → host throughput.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { PORT_FUNCTION, testKernel } from "../../../hv/qemu/testing.ts";
import { readAll, testData, VsockGuest } from "./testdata/qemu_guest.ts";

const SIZE = 32 << 20;

const SCRIPT = [
  PORT_FUNCTION,
  "report ready",
  "$S -b 65536 -u VSOCK-LISTEN:5000 STDOUT | sha256sum | cut -d' ' -f1 > /h",
  'report "vsock-h2g $(cat /h)"',
  `head -c ${SIZE} $(port bench.in) | sha256sum | cut -d' ' -f1 > /h`,
  'report "serial-h2g $(cat /h)"',
  `dd if=/dev/urandom of=/data bs=1M count=${SIZE >> 20} 2>/dev/null`,
  "report \"data $(sha256sum < /data | cut -d' ' -f1)\"",
  "$S -b 65536 -u STDIN VSOCK-CONNECT:2:6000 < /data",
  'report "vsock-g2h $?"',
  "cat /data > $(port bench.out)",
  'report "serial-g2h $?"',
  // The guest's own vsock stack, no device: vsock_loopback (CID 1) to a local listener.
  "$S -b 65536 -u VSOCK-LISTEN:9000,fork STDOUT > /dev/null &",
  "L=$!",
  // Probe until the listener is up (each connection gets its own forked socat).
  "until $S -u STDIN VSOCK-CONNECT:1:9000 < /dev/null 2>/dev/null; do sleep 0.05; done",
  'report "loopback-start"',
  "$S -b 65536 -u STDIN VSOCK-CONNECT:1:9000 < /data",
  'report "loopback $?"',
  "kill $L",
];

function mibs(ms: number): number {
  return (SIZE / (1 << 20)) / (ms / 1000);
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`serial port closed after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}

/** Runs the comparison; one line per direction. */
export async function bench(): Promise<string[]> {
  const kernel = await testKernel();
  if (typeof kernel === "string") return [`vsock-throughput skipped: ${kernel}`];
  const deadline = AbortSignal.timeout(600_000);
  await using g = await VsockGuest.boot(kernel, SCRIPT, deadline, ["bench.in", "bench.out"]);
  const data = testData(SIZE);
  const want = createHash("sha256").update(data).digest("hex");
  const g2hListener = g.vsock.listen(6000);
  try {
    await g.report("ready");
    // host → guest over vsock
    let t = performance.now();
    const s = await g.connect(5000);
    const w = s.writable.getWriter();
    for (let off = 0; off < SIZE; off += 1 << 20) {
      await w.write(data.subarray(off, off + (1 << 20)));
    }
    await w.close();
    if ((await g.report("vsock-h2g")) !== want) throw new Error("vsock host→guest hash differs");
    const vsockH2g = performance.now() - t;
    // host → guest over virtio-serial
    t = performance.now();
    const inPort = g.vm.ports.get("bench.in")!;
    for (let off = 0; off < SIZE;) off += await inPort.write(data.subarray(off));
    if ((await g.report("serial-h2g")) !== want) throw new Error("serial host→guest hash differs");
    const serialH2g = performance.now() - t;
    // guest → host over vsock
    const hash = await g.report("data");
    t = performance.now();
    const conn = (await g2hListener.accept())!;
    const got = await readAll(conn);
    const vsockG2h = performance.now() - t;
    if (createHash("sha256").update(got).digest("hex") !== hash) {
      throw new Error("vsock guest→host hash differs");
    }
    await g.report("vsock-g2h");
    // guest → host over virtio-serial
    t = performance.now();
    const sgot = await readExactly(g.vm.ports.get("bench.out")!, SIZE);
    const serialG2h = performance.now() - t;
    if (createHash("sha256").update(sgot).digest("hex") !== hash) {
      throw new Error("serial guest→host hash differs");
    }
    // guest → guest over the guest's vsock loopback (no device)
    await g.report("loopback-start");
    t = performance.now();
    if ((await g.report("loopback")) !== "0") throw new Error("loopback transfer failed");
    const loopback = performance.now() - t;
    const line = (dir: string, v: number, s: number) =>
      `vsock-throughput engine=qemu dir=${dir} size=32MiB vsock=${mibs(v).toFixed(1)}MiB/s ` +
      `virtio-serial=${mibs(s).toFixed(1)}MiB/s ratio=${(mibs(v) / mibs(s)).toFixed(2)}`;
    return [
      line("host-to-guest", vsockH2g, serialH2g),
      line("guest-to-host", vsockG2h, serialG2h),
      `vsock-throughput engine=qemu dir=guest-to-host size=32MiB vsock=${
        mibs(vsockG2h).toFixed(1)
      }MiB/s guest-vsock-loopback=${mibs(loopback).toFixed(1)}MiB/s ratio=${
        (loopback / vsockG2h).toFixed(2)
      }`,
    ];
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${g.describe()}`);
  } finally {
    g2hListener.close();
  }
}
