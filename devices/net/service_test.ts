/**
 * L0 tests of the host thread's handle on the stack's loop: a taken
 * `--publish` port fails before anything starts, and a started stack leaves
 * no file descriptor behind once closed (counted in a process of its own,
 * testdata/stack_fds.ts: this one's /proc/self/fd holds other test modules'
 * descriptors under --parallel).
 */

import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import dgram from "node:dgram";
import { NetStack } from "./service.ts";

const STACK_FDS = new URL("./testdata/stack_fds.ts", import.meta.url).pathname;

/** Runs a scenario of testdata/stack_fds.ts; it fails naming the descriptors left. */
async function noFdLeft(scenario: string): Promise<void> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", STACK_FDS, scenario],
    stdin: "null",
    stdout: "inherit",
    stderr: "piped",
  }).output();
  strictEqual(r.code, 0, `${scenario}: ${new TextDecoder().decode(r.stderr)}`);
}

Deno.test("NetStack: a taken --publish port throws naming the rule, and leaves nothing open", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  const udp = dgram.createSocket("udp4");
  const udpPort = await new Promise<number>((r) =>
    udp.bind(0, "127.0.0.1", () => r(udp.address().port))
  );
  try {
    throws(
      () =>
        new NetStack({
          publish: [
            { hostIp: "127.0.0.1", hostPort: 0, guestPort: 22, proto: "tcp" },
            { hostIp: "127.0.0.1", hostPort: port, guestPort: 80, proto: "tcp" },
          ],
        }),
      new RegExp(
        `^Error: net: cannot listen on --publish 127\\.0\\.0\\.1:${port}/tcp: ` +
          `bind\\(127\\.0\\.0\\.1:${port}/tcp\\) failed: EADDRINUSE$`,
      ),
    );
    throws(
      () =>
        new NetStack({
          publish: [{ hostIp: "127.0.0.1", hostPort: udpPort, guestPort: 53, proto: "udp" }],
        }),
      new RegExp(`cannot listen on --publish 127\\.0\\.0\\.1:${udpPort}/udp: .*EADDRINUSE`),
    );
  } finally {
    taken.close();
    udp.close();
  }
  // The first rule's listener was bound, then closed with the failure.
  await noFdLeft("failed-publish");
});

Deno.test("NetStack: published addresses before the loop runs; close releases its sockets and fds", async () => {
  const cycle = async () => {
    const stack = new NetStack({
      publish: [{ hostIp: "127.0.0.1", hostPort: 0, guestPort: 80, proto: "tcp" }],
    });
    const [addr] = stack.publishedAddrs;
    ok(addr.port > 0);
    strictEqual(addr.hostname, "127.0.0.1");
    deepStrictEqual(stack.publishLines(false), [
      `published 127.0.0.1:${addr.port} → guest :80/tcp`,
    ]);
    await stack.ready;
    // A host client reaches the listener (the loop accepts; no guest answers).
    const c = await Deno.connect({ hostname: "127.0.0.1", port: addr.port });
    const deadline = Date.now() + 30_000;
    while (stack.counters().publishAccepted === 0) {
      if (Date.now() > deadline) throw new Error("the loop never accepted");
      await new Promise((r) => setTimeout(r, 5));
    }
    c.close();
    stack.input(new Uint8Array(10)); // a runt frame through the ring: counted, dropped
    await stack.close();
    strictEqual(stack.counters().publishAccepted, 1);
    await rejects(Deno.connect({ hostname: "127.0.0.1", port: addr.port }), /refused/i);
  };
  await cycle();
  await noFdLeft("cycles");
});
