// L3q: skiff's virtio-vsock device against the real Linux driver
// (vmw_vsock_virtio_transport in the Debian kernel under QEMU TCG), served
// to QEMU's `vhost-user-vsock-device` through the generic vhost-user adapter.
// The guest's root is the host's / over skiff's virtio-fs (VirtioFs through
// the same adapter), so the host's `socat` speaks AF_VSOCK in the guest.
import { ok, rejects, strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { hostTest } from "../../../tests/requirements.ts";
import { assertKernel, testKernel } from "../../../hv/qemu/testing.ts";
import { VsockError } from "./connection.ts";
import { testData, VsockGuest, waitFor } from "./testdata/qemu_guest.ts";

const kernel = await testKernel();

const SIZE = 32 << 20;
/** Only catches hangs: the whole test takes about 30 s here. */
const DEADLINE_MS = 600_000;

const SCRIPT = [
  // Host → guest: the reader stalls until the host connects to 5001 and closes it.
  "( $S -u VSOCK-LISTEN:5000 STDOUT | ( $S -u VSOCK-LISTEN:5001 STDOUT >/dev/null; cat ) |",
  "  sha256sum | cut -d' ' -f1 > /h2g ) &",
  "A=$!",
  "report ready",
  "wait $A",
  'report "h2g $(cat /h2g)"',
  // Guest → host: 32 MiB of random bytes; the host checks their hash.
  `dd if=/dev/urandom of=/data bs=1M count=${SIZE >> 20} 2>/dev/null`,
  "report \"g2h-hash $(sha256sum < /data | cut -d' ' -f1)\"",
  "$S -u STDIN VSOCK-CONNECT:2:6000 < /data",
  'report "g2h-exit $?"',
  // Nothing listens on host port 6999: the device answers RST.
  "$S -u STDIN VSOCK-CONNECT:2:6999 < /dev/null 2>/dev/null",
  'report "refused-exit $?"',
  // The host resets this one while the guest writes: the guest's write fails.
  "$S -u STDIN VSOCK-CONNECT:2:6001 < /dev/zero 2>/tmp-err; R=$?",
  'report "rst-exit $R $(tail -1 /tmp-err)"',
  "report done",
];

hostTest(
  "vsock (L3q): Linux guest under QEMU, vhost-user adapter: host↔guest connections, 32 MiB each way with slow readers, EOF, RST",
  ["qemu", "kernel", "cpio", "socat"],
  async () => {
    assertKernel(kernel);
    const deadline = AbortSignal.timeout(DEADLINE_MS);
    await using g = await VsockGuest.boot(kernel, SCRIPT, deadline);
    const vsock = g.vsock;
    const g2hListener = vsock.listen(6000);
    const rstListener = vsock.listen(6001);
    try {
      await g.report("ready");
      ok(vsock.active);

      // -- host → guest: nothing listens on 5999 → refused (RST).
      await rejects(vsock.connect(5999), (e: VsockError) => e.code === "refused");

      // -- host → guest, 32 MiB with a stalled guest reader.
      const data = testData(SIZE);
      const t0 = performance.now();
      const h2g = await g.connect(5000);
      const writer = h2g.writable.getWriter();
      const writing = (async () => {
        for (let off = 0; off < data.length; off += 1 << 20) {
          await writer.write(data.subarray(off, off + (1 << 20)));
        }
        await writer.close(); // SHUTDOWN(SEND): the guest's socat reads EOF
      })();
      await waitFor(
        "the guest's credit to run out while its reader stalls",
        () => h2g.stats.peerCredit === 0 && h2g.stats.pendingWrite > 0,
        deadline,
      );
      const stalledAt = h2g.stats.sent;
      ok(stalledAt < 2 << 20, `the guest took ${stalledAt} bytes while not reading`);
      // Release the guest's reader: connect to 5001 and close it.
      const gate = await vsock.connect(5001, { signal: deadline });
      await gate.closeWrite();
      await writing;
      strictEqual(await g.report("h2g"), createHash("sha256").update(data).digest("hex"));
      const t1 = performance.now();

      // -- guest → host, 32 MiB; the host reads only when the guest is stopped by credit.
      const g2hHash = await g.report("g2h-hash");
      const g2h = await Promise.race([
        g2hListener.accept(),
        g.report("g2h-exit").then((r) => {
          throw new Error(`the guest never connected to host port 6000: exit ${r}`);
        }),
      ]);
      if (!g2h) throw new Error("listener closed");
      const t2 = performance.now();
      const reader = g2h.readable.getReader();
      const hash = createHash("sha256");
      let got = 0;
      let stalls = 0;
      let maxBuffered = 0;
      for (let eof = false; !eof;) {
        // Wait until the guest has used up its credit (or finished), then read 1 MiB.
        await waitFor(
          "the guest to use up its credit",
          () => g2h.stats.guestCredit === 0 || g.reports.some((r) => r.startsWith("g2h-exit")),
          deadline,
        );
        maxBuffered = Math.max(maxBuffered, g2h.stats.buffered);
        if (g2h.stats.guestCredit === 0) stalls++;
        for (let n = 0; n < 1 << 20;) {
          const r = await reader.read();
          if (r.done) {
            eof = true;
            break;
          }
          hash.update(r.value);
          n += r.value.length;
          got += r.value.length;
        }
      }
      const t3 = performance.now();
      console.error(
        `vsock L3q (TCG): host→guest 32 MiB in ${((t1 - t0) / 1000).toFixed(1)} s, ` +
          `guest→host 32 MiB in ${((t3 - t2) / 1000).toFixed(1)} s with ${stalls} credit stalls`,
      );
      strictEqual(got, SIZE);
      strictEqual(hash.digest("hex"), g2hHash);
      ok(maxBuffered <= vsock.bufferSize, `host buffered ${maxBuffered} > ${vsock.bufferSize}`);
      ok(stalls >= 8, `the guest was stopped by credit ${stalls} times`);
      strictEqual(await g.report("g2h-exit"), "0");

      // -- guest → host port without a listener: RST, socat fails.
      ok(Number(await g.report("refused-exit")) !== 0, "connect to an unlistened host port fails");

      // -- host reset (RST) while the guest writes: the guest's write fails.
      const victim = await Promise.race([
        rstListener.accept(),
        g.report("rst-exit").then((r) => {
          throw new Error(`the guest never connected to host port 6001: ${r}`);
        }),
      ]);
      if (!victim) throw new Error("listener closed");
      await victim.readable.getReader().read();
      victim.close();
      strictEqual(await victim.closed, "local");
      const rst = await g.report("rst-exit");
      ok(!rst.startsWith("0") && /Broken pipe|reset by peer/.test(rst), `socat after RST: ${rst}`);
      console.error(`vsock L3q: guest socat after the host's RST: exit ${rst}`);
      await g.report("done");

      const status = await Promise.race([
        g.vm.exited,
        new Promise<never>((_, reject) =>
          deadline.addEventListener("abort", () => reject(deadline.reason))
        ),
      ]);
      strictEqual(status.code, 0);
      strictEqual(vsock.counters.droppedCid, 0);
      strictEqual(vsock.counters.protocolErrors, 0);
      strictEqual(vsock.counters.creditViolations, 0);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${g.describe()}`, { cause: e });
    } finally {
      g2hListener.close();
      rstListener.close();
    }
  },
);
