/**
 * L3q: a real Linux guest (the Debian kernel under QEMU TCG, busybox user
 * space) whose virtio-net NIC is QEMU's `-netdev stream` connected to
 * skiff's stack through {@link listenStream}: DHCP, DNS and an HTTP fetch
 * from host loopback, checked byte-exact.
 */

import { ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { QemuProcess } from "../../hv/qemu/process.ts";
import {
  assertKernel,
  busyboxInitramfs,
  PORT_FUNCTION,
  runGuest,
  testKernel,
} from "../../hv/qemu/testing.ts";
import { NetStack } from "./service.ts";
import { listenStream } from "./stream.ts";

const kernel = await testKernel();

hostTest("net L3q: a Linux guest under QEMU gets DHCP, DNS and HTTP from host loopback", [
  "kernel",
  "qemu",
  "cpio",
], async () => {
  assertKernel(kernel);
  const body = new Uint8Array(1 << 20);
  crypto.getRandomValues(body.subarray(0, 65536));
  for (let o = 65536; o < body.length; o += 65536) body.copyWithin(o, 0, 65536);
  body[body.length - 1] = 7;
  const want = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", body)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  const srv = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(body),
  );
  const dir = await Deno.makeTempDir({ prefix: "skiff-netq-" });
  const stack = new NetStack({ hostLoopback: true });
  try {
    const initrd = await busyboxInitramfs(
      dir,
      kernel,
      [
        PORT_FUNCTION,
        "out=$(port test.out)",
        "cat > /dhcp.sh <<'EOS'",
        "#!/bin/sh",
        '[ "$1" = bound ] || exit 0',
        'ip addr add "$ip/$mask" dev "$interface"',
        'ip route add default via "$router"',
        'echo "lease $ip/$mask router $router dns $dns"',
        "EOS",
        "chmod +x /dhcp.sh",
        "{",
        "  ip link set lo up; ip link set eth0 up",
        // `timeout` only catches a hang (a busy host makes this TCG guest slow); udhcpc
        // sends up to 20 DISCOVERs (its own 3 s timer) before it gives up.
        "  timeout 300 udhcpc -i eth0 -n -q -f -t 20 -s /dhcp.sh 2>/dev/console",
        "  timeout 300 nslookup localhost 10.42.0.1 2>&1 | grep -c 127.0.0.1",
        `  timeout 300 wget -q -O - http://10.42.0.1:${srv.addr.port}/ | sha256sum`,
        "} 2>&1 | tee /dev/console > $out",
      ].join("\n"),
      ["virtio_mmio", "virtio_console", "virtio_net"],
    );
    await using link = listenStream(stack, `${dir}/net.sock`);
    const vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 256,
      kernel: kernel.bzImage!,
      initrd,
      append: "console=ttyS0 loglevel=4 panic=-1",
      portNames: ["test.out"],
      console: true,
      fs: [],
      netSocket: link.path,
      mac: "52:54:00:12:34:56",
    });
    try {
      const { ports, console: con } = await runGuest(vm).catch((e) => {
        throw new Error(`${e.message}\ncounters: ${JSON.stringify(stack.counters())}`);
      });
      const lines = ports["test.out"].trim().split("\n");
      const why = `guest output:\n${ports["test.out"]}\nconsole:\n${con}\ncounters: ${
        JSON.stringify(stack.counters())
      }`;
      strictEqual(lines[0], "lease 10.42.0.2/24 router 10.42.0.1 dns 10.42.0.1", why);
      ok(Number(lines[1]) >= 1, why);
      strictEqual(lines[2]?.split(/\s+/)[0], want, why);
      const c = await stack.settledCounters();
      ok(c.dhcpReplies >= 2 && c.dnsQueries >= 1 && c.tcpOpened >= 1, why);
      strictEqual(c.internalErrors, 0);
    } finally {
      await vm.stop();
    }
  } finally {
    await stack.close();
    await srv.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
