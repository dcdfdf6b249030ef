import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { FEATURE } from "../../devices/virtio/device.ts";
import { VirtioVsock } from "../../devices/virtio/vsock/device.ts";
import {
  type MockGuestSocket,
  MockVsockGuest,
  type MockVsockGuestOptions,
} from "../../devices/virtio/vsock/mock_guest.ts";
import { OP, SHUTDOWN_BOTH } from "../../devices/virtio/vsock/packet.ts";
import { AgentClient, type AgentExecResult } from "../../init/agent/client.ts";
import { AGENT_PORT, EXEC, REQ_HDR } from "../../init/agent/protocol.ts";
import type { AgentTransport } from "../../init/agent/transport.ts";
import { VmError } from "../errors.ts";
import { VsockAgentTransport, vsockReady } from "./vsock_transport.ts";

const NEVER = new Promise<never>(() => {});

Deno.test("vsockReady: resolves when the driver sets the device up; its deadline is a VmError; stop ends it", async () => {
  const up = new VirtioVsock({ guestCid: 3 });
  const waiting = vsockReady(up, NEVER);
  new MockVsockGuest(up); // the driver reaches DRIVER_OK
  await waiting;
  await vsockReady(up, NEVER, 1); // at once when already up

  await rejects(
    vsockReady(new VirtioVsock({ guestCid: 3 }), NEVER, 20),
    (e) => e instanceof VmError && /vsock device \(20 ms\)/.test(e.message),
  );
  const died = Promise.reject(new Error("the guest died"));
  died.catch(() => {});
  await rejects(vsockReady(new VirtioVsock({ guestCid: 3 }), died), /the guest died/);
});

/**
 * A guest agent that runs `echo 21` for an EXEC the moment it sees it, from
 * the device's interrupt (inside the device's pump, as a vCPU beside the
 * event loop can): it connects the stdout and stderr ports, writes, closes
 * both and replies `pid`/`exit 0` before any host promise callback runs.
 */
function eagerAgent(onEnded: () => void): MockVsockGuestOptions["onInterrupt"] {
  let stdio: [MockGuestSocket, MockGuestSocket] | null = null;
  let request = new Uint8Array(0);
  let done = false;
  let ended = false;
  return (g) => {
    g.poll();
    if (done && !ended && stdio!.every((s) => s.state === "reset")) {
      ended = true; // the host's RSTs: both connections are over on its side too
      onEnded();
    }
    const control = [...g.sockets.values()].find((s) => s.port === AGENT_PORT);
    if (!control || done) return;
    if (!stdio) {
      const got = control.read();
      const all = new Uint8Array(request.length + got.length);
      all.set(request);
      all.set(got, request.length);
      request = all;
      if (request.length < REQ_HDR.SIZE) return;
      const dv = new DataView(request.buffer);
      if (request.length < REQ_HDR.SIZE + dv.getUint32(REQ_HDR.LENGTH, true)) return;
      const port = (field: number) => dv.getUint32(REQ_HDR.SIZE + field, true);
      stdio = [g.connect(2000, port(EXEC.STDOUT)), g.connect(2001, port(EXEC.STDERR))];
      return;
    }
    if (!stdio.every((s) => s.state === "established")) return;
    done = true;
    stdio[0].write(new TextEncoder().encode("21\n"));
    for (const s of stdio) s.sendControl(OP.SHUTDOWN, SHUTDOWN_BOTH);
    control.write(new TextEncoder().encode("pid 7\nexit 0\n"));
    control.sendControl(OP.SHUTDOWN, SHUTDOWN_BOTH);
  };
}

Deno.test("AgentClient.exec over vsock: a command whose streams ended before the host accepted them", async () => {
  // Every used buffer interrupts (no EVENT_IDX), so the guest sees each packet at once.
  const dev = new VirtioVsock({ guestCid: 3 });
  let accepts = 0;
  let acceptsWhenEnded = -1;
  const g = new MockVsockGuest(dev, {
    features: ~(1n << BigInt(FEATURE.RING_EVENT_IDX)) & ((1n << 64n) - 1n),
    onInterrupt: eagerAgent(() => acceptsWhenEnded = accepts),
  });
  g.listening.add(AGENT_PORT);
  const vsock = new VsockAgentTransport(dev);
  const transport: AgentTransport = {
    connect: (port, signal) => vsock.connect(port, signal),
    listen: async (port) => {
      const l = await vsock.listen(port);
      return {
        port: l.port,
        accept: (signal) => {
          accepts++;
          return l.accept(signal);
        },
        close: () => l.close(),
      };
    },
  };
  const agent = new AgentClient(transport);
  let result: AgentExecResult | null = null;
  let error: unknown = null;
  agent.exec(["echo", "21"]).then((r) => result = r, (e) => error = e);
  // Bounded by event-loop turns (the guest needs none: it answers inside the pump).
  for (let turn = 0; turn < 1000 && !result && !error; turn++) {
    await new Promise((r) => setTimeout(r, 0));
  }
  if (error) throw error;
  ok(result, "exec never finished: a stdio connection that ended before accept() was lost");
  const r: AgentExecResult = result;
  deepStrictEqual([r.code, r.stdoutText, r.stderrText], [0, "21\n", ""]);
  strictEqual(acceptsWhenEnded, 0, "the order under test: both ended before any accept()");
  strictEqual(accepts, 2);
  strictEqual(dev.connectionCount, 0);
});
