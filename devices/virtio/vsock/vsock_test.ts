import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { createHash } from "node:crypto";
import { STATUS } from "../device.ts";
import { VIRTQ_DESC_F_NEXT } from "../queue.ts";
import { VirtioVsock } from "./device.ts";
import { VsockError, type VsockStream } from "./connection.ts";
import { MockVsockGuest } from "./mock_guest.ts";
import {
  encodeHeader,
  EVENT_TRANSPORT_RESET,
  HEADER_SIZE,
  HOST_CID,
  MAX_PACKET_PAYLOAD,
  OP,
  SHUTDOWN,
  SHUTDOWN_BOTH,
  VSOCK_TYPE,
} from "./packet.ts";
import { parseVsockState } from "./persist.ts";

const CID = 42;

/** mulberry32: a small seeded PRNG so failures replay. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = prng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

function sha(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/**
 * Runs `step` (guest work) and lets the host's promises run, until `done()`
 * holds; fails naming `what` if it never does (a bound on turns, not time).
 */
async function until(what: string, done: () => boolean, step: () => void = () => {}) {
  for (let i = 0; i < 20_000; i++) {
    step();
    if (done()) return;
    await new Promise((r) => setTimeout(r, 0));
  }
  throw new Error(`never happened: ${what}`);
}

function settle<T>(p: Promise<T>): { value?: T; error?: unknown; done: boolean } {
  const s: { value?: T; error?: unknown; done: boolean } = { done: false };
  p.then((v) => {
    s.value = v;
    s.done = true;
  }, (e) => {
    s.error = e;
    s.done = true;
  });
  return s;
}

function setup(opts: { bufferSize?: number; maxConnections?: number; rxBuffers?: number } = {}) {
  const dev = new VirtioVsock({ guestCid: CID, ...opts });
  const g = new MockVsockGuest(dev, { rxBuffers: opts.rxBuffers });
  return { dev, g };
}

/** Host connects to a guest listener on `port`. */
async function hostConnect(dev: VirtioVsock, g: MockVsockGuest, port: number) {
  g.listening.add(port);
  const c = settle(dev.connect(port));
  await until("connect resolves", () => c.done, () => g.poll());
  if (c.error) throw c.error;
  const s = c.value!;
  return { s, gs: g.socket(port, s.localPort) };
}

/** Guest connects to a host listener on `hostPort`. */
async function guestConnect(dev: VirtioVsock, g: MockVsockGuest, hostPort: number, from = 5000) {
  const l = dev.listen(hostPort);
  const acc = settle(l.accept());
  const gs = g.connect(from, hostPort);
  await until("accepted", () => acc.done && gs.state === "established", () => g.poll());
  return { s: acc.value!, gs, l };
}

Deno.test("vsock: config space holds the guest CID; device id 19, 3 queues, no features", () => {
  const { g, dev } = setup();
  strictEqual(g.drv.r32(0x008), 19);
  strictEqual(g.cid, CID);
  strictEqual(dev.features, 0n);
  strictEqual(g.drv.queues.length, 3);
  throws(() => new VirtioVsock({ guestCid: 2 }), /CID 2/);
  throws(() => new VirtioVsock({ guestCid: 0xffffffff }), /CID/);
});

Deno.test("vsock: host connect sends REQUEST; RESPONSE resolves; RST rejects as refused", async () => {
  const { dev, g } = setup();
  const refused = settle(dev.connect(7));
  await until("refusal", () => g.stray.length > 0 || refused.done, () => g.poll());
  const req = g.stray.shift()!;
  strictEqual(req.header.op, OP.REQUEST);
  strictEqual(req.header.dstPort, 7);
  strictEqual(req.header.srcCid, HOST_CID);
  strictEqual(req.header.bufAlloc, dev.bufferSize);
  // Nothing listens on guest port 7: the guest answers RST.
  g.send({ srcPort: 7, dstPort: req.header.srcPort, op: OP.RST });
  await until("rejected", () => refused.done);
  ok(refused.error instanceof VsockError && refused.error.code === "refused", `${refused.error}`);
  ok(/guest port 7.*refused/.test((refused.error as Error).message));
  strictEqual(dev.connectionCount, 0);

  const { s, gs } = await hostConnect(dev, g, 1024);
  strictEqual(s.peerPort, 1024);
  strictEqual(gs.state, "established");
  strictEqual(dev.connectionCount, 1);
});

Deno.test("vsock: connect before the driver is up rejects with not-active; an abort signal resets", async () => {
  const dev = new VirtioVsock({ guestCid: CID });
  await rejects(dev.connect(1), (e: VsockError) => e.code === "not-active");
  const up = settle(dev.whenActive());
  await Promise.resolve();
  strictEqual(up.done, false, "whenActive waits for the driver");
  const g = new MockVsockGuest(dev);
  await until("whenActive resolved by the driver's DRIVER_OK", () => up.done);
  strictEqual(up.error, undefined);
  await dev.whenActive(); // at once when active
  const ac = new AbortController();
  const c = settle(dev.connect(99, { signal: ac.signal }));
  g.poll(); // the REQUEST reached the guest, which does not answer
  ac.abort(new Error("gave up"));
  await until("aborted", () => c.done);
  strictEqual((c.error as Error).message, "gave up");
  await until("RST sent", () => g.stray.some((p) => p.header.op === OP.RST), () => g.poll());
  strictEqual(dev.connectionCount, 0);
});

Deno.test("vsock: 4 MiB host → guest byte-exact in random chunks; never past the guest's credit", async () => {
  const { dev, g } = setup();
  const { s, gs } = await hostConnect(dev, g, 1024);
  const data = randomBytes(4 << 20, 1);
  const r = prng(2);
  const writing = (async () => {
    const w = s.writable.getWriter();
    for (let off = 0; off < data.length;) {
      const n = Math.min(data.length - off, 1 + ((r() * 200_000) | 0));
      await w.write(data.subarray(off, off + n));
      off += n;
    }
    await w.close();
  })();
  const got = new Uint8Array(data.length);
  let n = 0;
  await until(
    "all bytes and SHUTDOWN(SEND)",
    () => n === data.length && (gs.peerShutdown & SHUTDOWN.SEND) !== 0,
    () => {
      g.poll(); // MockGuestSocket throws if the device exceeds its credit
      const chunk = gs.read(1 + ((r() * 150_000) | 0));
      got.set(chunk, n);
      n += chunk.length;
    },
  );
  await writing;
  strictEqual(sha(got), sha(data));
  strictEqual(s.stats.sent, data.length);
});

Deno.test("vsock: 4 MiB guest → host byte-exact in random packets; EOF after SHUTDOWN(SEND)", async () => {
  const { dev, g } = setup();
  const { s, gs } = await guestConnect(dev, g, 2000);
  const data = randomBytes(4 << 20, 3);
  const r = prng(4);
  let off = 0;
  const reading = (async () => {
    const parts: Uint8Array[] = [];
    for await (const c of s.readable) parts.push(c);
    const all = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    return all;
  })();
  await until("guest sent everything", () => off === data.length, () => {
    g.poll();
    off += gs.write(data.subarray(off), () => 1 + ((r() * 70_000) | 0));
    ok(s.stats.buffered <= dev.bufferSize);
  });
  gs.sendControl(OP.SHUTDOWN, SHUTDOWN.SEND);
  const got = await reading;
  strictEqual(sha(got), sha(data));
});

Deno.test("vsock: host writes stop at zero guest credit (one CREDIT_REQUEST) and resume on its update", async () => {
  const { dev, g } = setup();
  const { s, gs } = await hostConnect(dev, g, 1024);
  const w = s.writable.getWriter();
  const write = settle(w.write(new Uint8Array(1 << 20).fill(7)));
  await until("guest buffer full", () => gs.unreadBytes === gs.bufAlloc, () => g.poll());
  for (let i = 0; i < 20; i++) {
    g.poll();
    await new Promise((r) => setTimeout(r, 0));
  }
  strictEqual(gs.unreadBytes, gs.bufAlloc, "never more than the credit");
  strictEqual(s.stats.peerCredit, 0);
  strictEqual(s.stats.pendingWrite, (1 << 20) - gs.bufAlloc);
  strictEqual(write.done, false, "the write waits for credit");
  strictEqual(gs.ops.filter((o) => o === OP.CREDIT_REQUEST).length, 1, "asked once");
  let read = 0;
  await until("write completes", () => write.done, () => {
    g.poll();
    read += gs.read().length;
  });
  await until("rest read", () => read === 1 << 20, () => {
    g.poll();
    read += gs.read().length;
  });
});

Deno.test("vsock: a slow host reader stops the guest at buf_alloc; memory stays bounded; credit updates resume it", async () => {
  const bufferSize = 64 * 1024;
  const { dev, g } = setup({ bufferSize });
  const { s, gs } = await guestConnect(dev, g, 2000);
  const data = randomBytes(1 << 20, 5);
  let off = 0;
  // The guest sends until its credit is gone; the host has not read.
  await until("guest credit exhausted", () => gs.credit === 0, () => {
    g.poll();
    off += gs.write(data.subarray(off), () => 3000);
  });
  strictEqual(s.stats.buffered, bufferSize);
  const reader = s.readable.getReader();
  const parts: Uint8Array[] = [];
  let got = 0;
  let maxBuffered = 0;
  let updates = 0;
  while (got < data.length) {
    // Read one chunk at a time; the guest refills as credit updates come in.
    const { value } = await reader.read();
    parts.push(value!);
    got += value!.length;
    const before = gs.peerFwdCnt;
    g.poll();
    if (gs.peerFwdCnt !== before) updates++;
    off += gs.write(data.subarray(off), () => 3000);
    maxBuffered = Math.max(maxBuffered, s.stats.buffered);
    if (off === data.length && got < data.length) g.poll();
  }
  ok(maxBuffered <= bufferSize, `host buffered ${maxBuffered} > ${bufferSize}`);
  ok(updates > 0, "the host sent credit updates");
  const all = new Uint8Array(got);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  strictEqual(sha(all), sha(data));
});

Deno.test("vsock: a guest sending past its credit is reset; buffered bytes stay readable, then an error", async () => {
  const bufferSize = 16 * 1024;
  const { dev, g } = setup({ bufferSize });
  const { s, gs } = await guestConnect(dev, g, 2000);
  const hdr = { srcPort: gs.port, dstPort: 2000, op: OP.RW, bufAlloc: 65536 };
  g.send(hdr, new Uint8Array(bufferSize).fill(1)); // exactly the credit: fine
  g.send(hdr, new Uint8Array(1).fill(2)); // one byte more: a credit lie
  g.poll();
  strictEqual(dev.counters.creditViolations, 1);
  strictEqual(gs.state, "reset", "the guest got RST");
  const reader = s.readable.getReader();
  const first = await reader.read();
  strictEqual(first.value!.length, bufferSize);
  await rejects(reader.read(), (e: VsockError) => e.code === "protocol");
  strictEqual(await s.closed, "reset");
  strictEqual(dev.connectionCount, 0);
});

Deno.test("vsock: closeWrite sends SHUTDOWN(SEND) after the data; the guest's full shutdown gets RST", async () => {
  const { dev, g } = setup();
  const { s, gs } = await hostConnect(dev, g, 1024);
  const w = s.writable.getWriter();
  w.write(new Uint8Array([1, 2, 3]));
  w.releaseLock();
  const closing = settle(s.closeWrite());
  await until("shutdown", () => closing.done, () => g.poll());
  await s.closeWrite(); // idempotent
  deepStrictEqual([...gs.read()], [1, 2, 3]);
  strictEqual(gs.peerShutdown, SHUTDOWN.SEND);
  await rejects(s.writable.getWriter().write(new Uint8Array(1)));
  // The guest sends its last bytes and closes both directions.
  gs.write(new Uint8Array([9]));
  gs.sendControl(OP.SHUTDOWN, SHUTDOWN_BOTH);
  g.poll();
  strictEqual(gs.state, "reset", "RST ends the clean close (§5.10.6.6)");
  const chunks: number[] = [];
  for await (const c of s.readable) chunks.push(...c);
  deepStrictEqual(chunks, [9]);
  strictEqual(await s.closed, "closed");
});

Deno.test("vsock: guest SHUTDOWN(RCV) fails host writes with epipe; cancelling the readable sends SHUTDOWN(RCV)", async () => {
  const { dev, g } = setup();
  const { s, gs } = await hostConnect(dev, g, 1024);
  gs.sendControl(OP.SHUTDOWN, SHUTDOWN.RCV);
  await rejects(
    s.writable.getWriter().write(new Uint8Array(4)),
    (e: VsockError) => e.code === "epipe",
  );
  const b = await hostConnect(dev, g, 1025);
  await b.s.readable.cancel();
  g.poll();
  strictEqual(b.gs.peerShutdown, SHUTDOWN.RCV);
  ok(s.stats.sent === 0);
});

Deno.test("vsock: host close() sends RST; a guest RST errors the reader after its buffered bytes", async () => {
  const { dev, g } = setup();
  const a = await hostConnect(dev, g, 1024);
  a.s.close();
  g.poll();
  strictEqual(a.gs.state, "reset");
  strictEqual(await a.s.closed, "local");
  await rejects(
    a.s.writable.getWriter().write(new Uint8Array(1)),
    (e: VsockError) => e.code === "closed",
  );
  const r = await a.s.readable.getReader().read();
  strictEqual(r.done, true, "a locally closed reader ends");

  const b = await guestConnect(dev, g, 2000);
  b.gs.write(new Uint8Array([5, 6]));
  b.gs.sendControl(OP.RST);
  const reader = b.s.readable.getReader();
  deepStrictEqual([...(await reader.read()).value!], [5, 6]);
  await rejects(reader.read(), (e: VsockError) => e.code === "reset");
  strictEqual(await b.s.closed, "reset");
  // aborting a stream errors both ends with the reason
  const c = await hostConnect(dev, g, 1026);
  c.s.abort(new Error("boom"));
  await rejects(c.s.readable.getReader().read(), /boom/);
  g.poll();
  strictEqual(c.gs.state, "reset");
});

Deno.test("vsock: guest connections: callback listener, backlog, no listener → RST, port in use", async () => {
  const { dev, g } = setup();
  const seen: VsockStream[] = [];
  dev.listen(3000, (s) => seen.push(s));
  throws(() => dev.listen(3000), /already has a listener/);
  g.connect(100, 3000);
  g.poll();
  strictEqual(seen.length, 1);
  strictEqual(seen[0].peerPort, 100);
  strictEqual(g.socket(100, 3000).state, "established");

  g.connect(101, 3001); // nobody listens
  g.poll();
  strictEqual(g.socket(101, 3001).state, "reset");
  strictEqual(dev.counters.refused, 1);

  const l = dev.listen(3002, undefined, { backlog: 2 });
  for (let p = 200; p < 205; p++) g.connect(p, 3002);
  g.poll();
  const states = [200, 201, 202, 203, 204].map((p) => g.socket(p, 3002).state);
  deepStrictEqual(states, ["established", "established", "reset", "reset", "reset"]);
  const got = [];
  for await (const s of l) {
    got.push(s.peerPort);
    if (got.length === 2) l.close();
  }
  deepStrictEqual(got, [200, 201]);
  g.connect(300, 3002);
  g.poll();
  strictEqual(g.socket(300, 3002).state, "reset", "closed listener refuses");
});

Deno.test("vsock: a guest connection that ends before the host accepts it is still accepted (bytes, then EOF or the reset)", async () => {
  // The order behind a rare agent hang: the guest connects to a listener no
  // accept() waits on yet, sends, and closes (SHUTDOWN both, or RST) before
  // the host gets to accept() — with a vCPU running beside the event loop,
  // all of it can happen inside one device pump. accept() must still return
  // it, as accept(2) returns a connection its peer has already closed.
  const { dev, g } = setup({ maxConnections: 2 });
  const l = dev.listen(3000);
  const gs = g.connect(100, 3000);
  g.poll(); // RESPONSE: the device answers for the listener before anyone accepts
  strictEqual(gs.state, "established");
  strictEqual(gs.write(new TextEncoder().encode("21\n")), 3);
  gs.sendControl(OP.SHUTDOWN, SHUTDOWN_BOTH);
  g.poll();
  deepStrictEqual(gs.ops.slice(-1), [OP.RST], "the clean close ends with the host's RST");
  strictEqual(dev.connectionCount, 0);
  // A second one that the guest resets instead.
  const gr = g.connect(101, 3000);
  g.poll();
  gr.write(new TextEncoder().encode("lost?"));
  gr.sendControl(OP.RST);
  g.poll();
  strictEqual(dev.connectionCount, 0);
  // Unaccepted, they still hold host memory: they count against maxConnections.
  g.connect(102, 3000);
  g.poll();
  strictEqual(g.socket(102, 3000).state, "reset");

  const first = settle(l.accept());
  await until("the closed connection is accepted", () => first.done);
  g.connect(103, 3000);
  g.poll();
  strictEqual(g.socket(103, 3000).state, "established", "an accepted one frees its slot");
  const s = first.value!;
  strictEqual(s.peerPort, 100);
  strictEqual(await new Response(s.readable).text(), "21\n");
  strictEqual(await s.closed, "closed");
  const second = settle(l.accept());
  await until("the reset connection is accepted", () => second.done);
  const r = second.value!;
  strictEqual(r.peerPort, 101);
  const reader = r.readable.getReader();
  deepStrictEqual(await reader.read(), { done: false, value: new TextEncoder().encode("lost?") });
  await rejects(reader.read(), (e: VsockError) => e.code === "reset");
  strictEqual(await r.closed, "reset");
});

Deno.test("vsock: hostile packets are dropped or answered with RST and counted; the device keeps working", async () => {
  const { dev, g } = setup();
  const { s, gs } = await guestConnect(dev, g, 2000);
  const c0 = { ...dev.counters };
  g.sendRaw([{ data: new Uint8Array(HEADER_SIZE - 1) }]); // short
  g.send({ srcCid: CID + 1, srcPort: 1, dstPort: 2000, op: OP.REQUEST }); // spoofed source
  g.send({ dstCid: 7, srcPort: 1, dstPort: 2000, op: OP.REQUEST }); // not for the host
  g.send({ srcCid: 2 ** 60, srcPort: 1, dstPort: 2000, op: OP.REQUEST }); // huge CID
  g.send({ srcPort: 9, dstPort: 2000, op: 99 }); // unknown op, no connection
  g.send({ srcPort: 9, dstPort: 2000, op: OP.REQUEST, type: VSOCK_TYPE.SEQPACKET }); // not offered
  g.send({ srcPort: 9, dstPort: 2000, op: OP.RW, len: MAX_PACKET_PAYLOAD + 1 }); // too long
  g.send({ srcPort: 9, dstPort: 2000, op: OP.RW, len: 100 }, new Uint8Array(10)); // len > bytes
  g.send({ srcPort: 9, dstPort: 2000, op: OP.CREDIT_UPDATE }); // unknown connection
  g.send({ srcPort: 9, dstPort: 2000, op: OP.RST }); // RST to nothing: no answer
  g.poll();
  strictEqual(dev.counters.droppedShort - c0.droppedShort, 1);
  strictEqual(dev.counters.droppedCid - c0.droppedCid, 3);
  strictEqual(dev.counters.badType - c0.badType, 1);
  strictEqual(dev.counters.badLength - c0.badLength, 2);
  const rsts = g.stray.filter((p) => p.header.op === OP.RST && p.header.dstPort === 9);
  strictEqual(rsts.length, 5, "RST for the unknown op, bad type, two bad lengths, credit update");
  strictEqual(dev.connectionCount, 1);
  // An unknown op on the open connection resets it.
  gs.sendControl(0);
  g.poll();
  strictEqual(dev.counters.unknownOp, 1);
  strictEqual(gs.state, "reset");
  strictEqual(await s.closed, "reset");
  // A second REQUEST for an open connection, and early data, are protocol errors.
  const b = await guestConnect(dev, g, 2001);
  b.gs.sendControl(OP.REQUEST);
  g.poll();
  strictEqual(b.gs.state, "reset");
  strictEqual(dev.counters.protocolErrors, 1);
  // …and the device still serves new connections.
  const c = await guestConnect(dev, g, 2002);
  c.gs.write(new Uint8Array([1]));
  deepStrictEqual([...(await c.s.readable.getReader().read()).value!], [1]);
});

Deno.test("vsock: a REQUEST flood is bounded: connection limit, RST replies, tx waits for rx buffers", async () => {
  const { dev, g } = setup({ maxConnections: 4, rxBuffers: 0 });
  const accepted: VsockStream[] = [];
  dev.listen(4000, (s) => accepted.push(s));
  // 2000 REQUESTs with no receive buffers posted: replies cannot go out.
  let sent = 0;
  for (let i = 0; i < 2000; i++) {
    if (g.tx.freeDescriptors < 1) {
      g.tx.takeUsed();
      if (g.tx.freeDescriptors < 1) break; // the device stopped taking packets
    }
    g.tx.add([{
      data: encodeHeader(g.header({ srcPort: 10_000 + i, dstPort: 4000, op: OP.REQUEST })),
    }]);
    g.drv.kick(1);
    sent++;
  }
  ok(sent < 2000, `the device kept taking packets (${sent}) while replies piled up`);
  strictEqual(accepted.length, 4, "connection limit");
  ok(dev.counters.refused > 0);
  // Now the guest posts buffers: RSTs and RESPONSEs flow, the tx queue resumes.
  const before = dev.counters.txPackets;
  await until("tx resumed", () => dev.counters.txPackets > before, () => {
    g.postRx(32);
    g.poll();
    g.tx.takeUsed();
    g.drv.kick(1);
  });
  strictEqual(dev.counters.droppedReplies, 0);
});

Deno.test("vsock: a malformed tx ring sets DEVICE_NEEDS_RESET; open streams end with device-reset", async () => {
  const { dev, g } = setup();
  const { s } = await hostConnect(dev, g, 1024);
  // A descriptor chain that loops on itself.
  const tx = g.tx;
  tx.writeDesc(tx.rings.desc, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, 0);
  tx.pushAvail(0);
  g.drv.kick(1);
  ok(g.transport.status & STATUS.DEVICE_NEEDS_RESET);
  strictEqual(await s.closed, "device-reset");
  await rejects(
    s.writable.getWriter().write(new Uint8Array(1)),
    (e: VsockError) => e.code === "device-reset",
  );
  strictEqual(dev.active, false);
});

Deno.test("vsock: transportReset() drops connections and sends TRANSPORT_RESET; listeners stay", async () => {
  const { dev, g } = setup();
  const l = dev.listen(2000);
  const a = await hostConnect(dev, g, 1024);
  dev.transportReset();
  g.poll();
  deepStrictEqual(g.events, [EVENT_TRANSPORT_RESET]);
  strictEqual(await a.s.closed, "device-reset");
  strictEqual(dev.connectionCount, 0);
  strictEqual(dev.counters.transportResets, 1);
  const acc = settle(l.accept());
  g.connect(6000, 2000);
  await until("accepted after reset", () => acc.done, () => g.poll());
});

Deno.test("vsock: save/restore round-trips typed state; a restored device resets the guest's transport", async () => {
  const { dev, g } = setup();
  await hostConnect(dev, g, 1024);
  const saved = JSON.parse(JSON.stringify(g.transport.save()));
  deepStrictEqual(parseVsockState(saved.device), dev.save());
  // A new device and transport over the same guest memory, as after a snapshot restore.
  const dev2 = new VirtioVsock({ guestCid: CID });
  const { VirtioMmioTransport } = await import("../mmio.ts");
  const t2 = new VirtioMmioTransport(dev2, g.mem, () => {});
  t2.restore(saved);
  ok(dev2.active);
  const events = g.eventq.takeUsed().map((u) => new DataView(u.written.buffer).getUint32(0, true));
  deepStrictEqual(events, [EVENT_TRANSPORT_RESET]);
  strictEqual(dev2.connectionCount, 0);
  // The guest's packets for the old connection get RST from the new device.
  throws(() => dev2.restore({ version: 1, guestCid: CID + 1 }), /CID 43/);
  throws(() => parseVsockState({ version: 2, guestCid: CID }), /version 2/);
  throws(() => parseVsockState({ version: 1, guestCid: 1 }), /guest CID 1/);
  throws(() => parseVsockState(null), /not an object/);
});

Deno.test("vsock: with EVENT_IDX the device re-arms avail_event when it waits for rx buffers", async () => {
  const { dev, g } = setup({ rxBuffers: 0 });
  g.listening.add(1024);
  const c = settle(dev.connect(1024));
  // The REQUEST waits for a buffer: the device asked to be notified at the next one.
  strictEqual(g.rx.availEvent, g.rx.availIdx);
  g.postRx(4);
  await until("connected", () => c.done, () => g.poll());
  ok(c.value);
});

Deno.test("vsock: fuzz — 20000 random packets never throw and stay within the device's bounds", async () => {
  const bufferSize = 16 * 1024;
  const { dev, g } = setup({ bufferSize, maxConnections: 8 });
  const r = prng(7);
  const int = (n: number) => Math.floor(r() * n);
  const accepted: VsockStream[] = [];
  dev.listen(1, (s) => accepted.push(s));
  dev.listen(2);
  g.listening.add(100);
  const pick = <T>(xs: T[]) => xs[int(xs.length)];
  for (let i = 0; i < 20_000; i++) {
    const op = int(10) === 0 ? int(65536) : int(9);
    const len = pick([0, 1, 100, 4096, 65536, 65537, int(2 ** 32)]);
    const payload = new Uint8Array(Math.min(len, int(4) === 0 ? 70_000 : 5000));
    g.tx.takeUsed();
    if (g.tx.freeDescriptors < 2) {
      g.poll();
      g.drv.kick(1);
      continue;
    }
    g.send({
      srcCid: int(20) === 0 ? int(10) : CID,
      dstCid: int(20) === 0 ? int(10) : HOST_CID,
      srcPort: pick([100, 101, 102, int(2 ** 32)]),
      dstPort: pick([1, 2, 3, 0x40000000, int(2 ** 32)]),
      type: int(20) === 0 ? int(4) : VSOCK_TYPE.STREAM,
      op,
      len,
      flags: int(8),
      bufAlloc: pick([0, 1, 65536, 0xffffffff, int(2 ** 32)]),
      fwdCnt: int(2 ** 32),
    }, payload);
    if (int(50) === 0) dev.connect(100).catch(() => {});
    if (int(20) === 0 && accepted.length) {
      const s = pick(accepted);
      if (!s.writable.locked) {
        const w = s.writable.getWriter();
        w.write(new Uint8Array(int(100_000))).catch(() => {});
        w.releaseLock();
      }
    }
    if (int(3) === 0) g.poll();
    ok(dev.connectionCount <= 8, `${dev.connectionCount} connections`);
    for (const s of accepted) ok(s.stats.buffered <= bufferSize);
    if (int(200) === 0) await new Promise((r) => setTimeout(r, 0));
  }
  ok(dev.active, "the device survived");
  ok(accepted.length > 0, "some REQUESTs became connections");
  const c = dev.counters;
  ok(c.badLength > 0 && c.unknownOp > 0 && c.droppedCid > 0 && c.refused > 0, JSON.stringify(c));
  for (const s of accepted) s.close();
  // Still works afterwards.
  const fresh = await guestConnect(dev, g, 9000, 7777);
  fresh.gs.write(new Uint8Array([42]));
  deepStrictEqual([...(await fresh.s.readable.getReader().read()).value!], [42]);
});
