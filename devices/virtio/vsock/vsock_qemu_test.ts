// L3q: skiff's virtio-vsock device against the real Linux driver
// (vmw_vsock_virtio_transport in the Debian kernel under QEMU TCG), served
// to QEMU's `vhost-user-vsock-device` through the generic vhost-user adapter.
// The guest's root is the host's / over skiff's virtio-fs (VirtioFs through
// the same adapter), so the host's `socat` speaks AF_VSOCK in the guest.
import { ok, rejects, strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { hostTest } from "../../../tests/requirements.ts";
import { FuseServer } from "../../fuse/server.ts";
import { PassthroughFs } from "../../fuse/passthrough.ts";
import { QemuProcess } from "../../../hv/qemu/process.ts";
import { busyboxInitramfs, collect, testKernel } from "../../../hv/qemu/testing.ts";
import { VhostUserVirtioServer } from "../../vhost_user/virtio_backend.ts";
import { VirtioFs } from "../fs/device.ts";
import { VirtioVsock } from "./device.ts";
import { VsockError, type VsockStream } from "./connection.ts";

const kernel = await testKernel();
if (typeof kernel === "string") console.error(`skiff-test-skip: vsock QEMU test: ${kernel}`);

const CID = 42;
const SIZE = 32 << 20;
const DEADLINE_MS = 600_000;

/** Waits for `cond` (polled every few ms) until `signal` aborts. */
async function waitFor(what: string, cond: () => boolean, signal: AbortSignal): Promise<void> {
  while (!cond()) {
    if (signal.aborted) throw new Error(`gave up waiting for ${what}: ${signal.reason}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Reads a stream to its end. */
async function readAll(s: VsockStream): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of s.readable) parts.push(c);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Deterministic pseudo-random bytes (a sha256 counter stream). */
function testData(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0, block = 0; i < n; block++) {
    const d = createHash("sha256").update(`skiff-vsock-${block}`).digest();
    out.set(d.subarray(0, Math.min(d.length, n - i)), i);
    i += d.length;
  }
  return out;
}

const GUEST_SCRIPT = [
  "mkdir -p /mnt/root && mount -t virtiofs root /mnt/root || echo MOUNT-FAILED",
  "S='chroot /mnt/root /usr/bin/socat'",
  // Each report is one connection to host port 7000 carrying one line.
  'report() { echo "$1" | $S -u STDIN VSOCK-CONNECT:2:7000; }',
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
  // (Redirections happen outside the chroot: the host's /dev is a mount point, empty there.)
  "$S -u STDIN VSOCK-CONNECT:2:6001 < /dev/zero 2>/tmp-err; R=$?",
  'report "rst-exit $R $(cat /tmp-err | tail -1)"',
  "report done",
].join("\n");

hostTest(
  "vsock (L3q): Linux guest under QEMU, vhost-user adapter: host↔guest connections, 32 MiB each way with slow readers, EOF, RST",
  ["qemu", "cpio", "socat"],
  async () => {
    if (typeof kernel === "string") return;
    const dir = await Deno.makeTempDir({ prefix: "skiff-vsockq-" });
    const logs: string[] = [];
    const log = (m: string) => logs.push(m);
    const deadline = AbortSignal.timeout(DEADLINE_MS);
    try {
      const initrd = await busyboxInitramfs(dir, kernel, GUEST_SCRIPT, [
        "virtio_mmio",
        "virtiofs",
        "vmw_vsock_virtio_transport",
      ]);
      const vsock = new VirtioVsock({ guestCid: CID, log });
      const fuse = new FuseServer(new PassthroughFs("/", { readOnly: true, crossMounts: false }));
      const rootFs = new VirtioFs({ tag: "root", server: fuse });
      await using vsockServer = new VhostUserVirtioServer(`${dir}/vsock.sock`, vsock, {
        once: true,
        log,
      });
      await using fsServer = new VhostUserVirtioServer(`${dir}/fs.sock`, rootFs, {
        once: true,
        log,
      });

      // Reports from the guest: one line per connection to host port 7000.
      const reports: string[] = [];
      const reportListener = vsock.listen(7000, (s) => {
        readAll(s).then((b) => reports.push(new TextDecoder().decode(b).trim()), log);
      });
      const report = async (prefix: string) => {
        await waitFor(
          `guest report "${prefix}"`,
          () => reports.some((r) => r.startsWith(prefix)),
          deadline,
        );
        return reports.find((r) => r.startsWith(prefix))!.slice(prefix.length).trim();
      };
      const g2hListener = vsock.listen(6000);
      const rstListener = vsock.listen(6001);

      const vm = await QemuProcess.start({
        dir,
        accel: "tcg",
        cpus: 1,
        memoryMiB: 256,
        kernel: kernel.bzImage!,
        initrd,
        append: "console=ttyS0 quiet panic=-1",
        portNames: [],
        console: true,
        fs: [{ id: "fs0", tag: "root", socketPath: `${dir}/fs.sock` }],
        vsock: { id: "vsock0", socketPath: `${dir}/vsock.sock` },
      });
      const con = collect(vm.console!);
      try {
        await report("ready");
        // CID from the back-end's config space: the guest's packets carry it.
        ok(vsock.active);

        // -- host → guest: nothing listens on 5999 → refused (RST).
        await rejects(vsock.connect(5999), (e: VsockError) => e.code === "refused");

        // -- host → guest, 32 MiB with a stalled guest reader.
        const data = testData(SIZE);
        const t0 = performance.now();
        let h2g: VsockStream | null = null;
        while (!h2g) {
          try {
            h2g = await vsock.connect(5000, { signal: deadline });
          } catch (e) {
            // The guest's socat may not be listening yet: wait for it.
            if (!(e instanceof VsockError && e.code === "refused")) throw e;
            await new Promise((r) => setTimeout(r, 20));
          }
        }
        const writer = h2g.writable.getWriter();
        const writing = (async () => {
          for (let off = 0; off < data.length; off += 1 << 20) {
            await writer.write(data.subarray(off, off + (1 << 20)));
          }
          await writer.close(); // SHUTDOWN(SEND): the guest's socat reads EOF
        })();
        const stream = h2g;
        await waitFor(
          "the guest's credit to run out while its reader stalls",
          () => stream.stats.peerCredit === 0 && stream.stats.pendingWrite > 0,
          deadline,
        );
        const stalledAt = stream.stats.sent;
        ok(stalledAt < 2 << 20, `the guest took ${stalledAt} bytes while not reading`);
        // Release the guest's reader: connect to 5001 and close it.
        const gate = await vsock.connect(5001, { signal: deadline });
        await gate.closeWrite();
        await writing;
        const h2gHash = await report("h2g");
        const t1 = performance.now();
        strictEqual(h2gHash, createHash("sha256").update(data).digest("hex"));

        // -- guest → host, 32 MiB, the host reads only when the guest is stopped by credit.
        const g2hHash = await report("g2h-hash");
        const g2h = await Promise.race([
          g2hListener.accept(),
          report("g2h-exit").then((r) => {
            throw new Error(`the guest never connected to host port 6000: exit ${r}`);
          }),
        ]);
        if (!g2h) throw new Error("listener closed");
        const reader = g2h.readable.getReader();
        const hash = createHash("sha256");
        let got = 0;
        let stalls = 0;
        let maxBuffered = 0;
        for (let eof = false; !eof;) {
          // Wait until the guest has used up its credit (or finished), then read 1 MiB.
          await waitFor(
            "the guest to use up its credit",
            () => g2h.stats.guestCredit === 0 || reports.some((r) => r.startsWith("g2h-exit")),
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
        const t2 = performance.now();
        console.error(
          `vsock L3q (TCG): host→guest 32 MiB in ${((t1 - t0) / 1000).toFixed(1)} s, ` +
            `guest→host 32 MiB in ${
              ((t2 - t1) / 1000).toFixed(1)
            } s (incl. dd+sha256 in the guest), ` +
            `${stalls} credit stalls`,
        );
        strictEqual(got, SIZE);
        strictEqual(hash.digest("hex"), g2hHash);
        ok(maxBuffered <= vsock.bufferSize, `host buffered ${maxBuffered} > ${vsock.bufferSize}`);
        ok(stalls >= 8, `the guest was stopped by credit ${stalls} times`);
        strictEqual(await report("g2h-exit"), "0");

        // -- guest → host port without a listener: RST, socat fails.
        ok(Number(await report("refused-exit")) !== 0, "connect to an unlistened host port fails");

        // -- host reset (RST) while the guest writes: the guest's write fails.
        const victim = await Promise.race([
          rstListener.accept(),
          report("rst-exit").then((r) => {
            throw new Error(`the guest never connected to host port 6001: ${r}`);
          }),
        ]);
        if (!victim) throw new Error("listener closed");
        const vr = victim.readable.getReader();
        await vr.read();
        victim.close();
        strictEqual(await victim.closed, "local");
        const rst = await report("rst-exit");
        ok(
          !rst.startsWith("0") && /Broken pipe|reset by peer/.test(rst),
          `socat after RST: ${rst}`,
        );
        console.error(`vsock L3q: guest socat after the host's RST: exit ${rst}`);
        await report("done");

        const status = await Promise.race([
          vm.exited,
          new Promise<never>((_, reject) =>
            deadline.addEventListener("abort", () => reject(deadline.reason))
          ),
        ]);
        strictEqual(status.code, 0);
        strictEqual(vsock.counters.droppedCid, 0);
        strictEqual(vsock.counters.protocolErrors, 0);
        strictEqual(vsock.counters.creditViolations, 0);
      } catch (e) {
        throw new Error(
          `${(e as Error).message}\nreports: ${JSON.stringify(reports)}\nlogs: ${
            logs.join("; ")
          }\ncounters: ${JSON.stringify(vsock.counters)}\n--- console ---\n${con.text}`,
          { cause: e },
        );
      } finally {
        reportListener.close();
        g2hListener.close();
        rstListener.close();
        await vm.stop();
      }
      await vsockServer.done;
      await fsServer.done;
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
