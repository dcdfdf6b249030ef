// L0: the generic vhost-user adapter driven by a fake front-end over a
// socketpair (memfd guest memory, eventfds passed with SCM_RIGHTS), serving
// the virtio-vsock device: config through GET_CONFIG, activation when the
// rings go live, kicks, call eventfd interrupts, reset on GET_VRING_BASE,
// bad requests answered, nothing left open after the disconnect.
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { RegionMemory } from "../../hv/memory.ts";
import { EFD, eventfd, libc } from "../../kvm_ffi/libc.ts";
import { MockQueueDriver } from "../virtio/mock_driver.ts";
import { VirtioVsock } from "../virtio/vsock/device.ts";
import {
  encodeHeader,
  HEADER_SIZE,
  HOST_CID,
  OP,
  parseHeader,
  VSOCK_TYPE,
} from "../virtio/vsock/packet.ts";
import { CONFIG_HEADER_SIZE, FLAG_NEED_REPLY, HEADER_SIZE as MSG_HEADER, Req } from "./protocol.ts";
import { UnixConn } from "./socket.ts";
import { StopSignal } from "../../kvm_ffi/eventfd.ts";
import { VhostUserVirtioBackend } from "./virtio_backend.ts";

const sys = Deno.dlopen("libc.so.6", {
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
});

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const USER_BASE = 0x7f00_0000_0000n;
const MEM = 4 << 20;
const CID = 42;

function ptr(b: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
}

/**
 * What each open fd of this process is: its link target, plus the eventfd's
 * id for an eventfd (fdinfo, Linux 6.0+). Other tests run in this process
 * at the same time, so a leak is checked by identity, not by count.
 */
function fdIdentities(): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const link = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      const id = /eventfd-id:\s*(\d+)/.exec(Deno.readTextFileSync(`/proc/self/fdinfo/${e.name}`));
      out.push(id ? `eventfd ${id[1]}` : link);
    } catch {
      // closed meanwhile (another test's fd)
    }
  }
  return out;
}

/** The front-end's end of the socket: requests with fds, replies read back. */
class FakeFrontEnd {
  readonly fd: number;
  readonly conn: UnixConn;
  readonly stop = new StopSignal();
  constructor(fd: number) {
    this.fd = fd;
    this.conn = new UnixConn(fd);
  }

  /** Sends one message; `fds` go along (SCM_RIGHTS) and are closed here. */
  send(req: number, payload: Uint8Array, fds: number[] = [], flags = 1): void {
    const msg = new Uint8Array(MSG_HEADER + payload.length);
    const dv = new DataView(msg.buffer);
    dv.setUint32(0, req, true);
    dv.setUint32(4, flags, true);
    dv.setUint32(8, payload.length, true);
    msg.set(payload, MSG_HEADER);
    const iov = new Uint8Array(16);
    new DataView(iov.buffer).setBigUint64(0, ptr(msg), true);
    new DataView(iov.buffer).setBigUint64(8, BigInt(msg.length), true);
    const control = new Uint8Array(fds.length ? 16 + ((4 * fds.length + 7) & ~7) : 0);
    if (fds.length) {
      const c = new DataView(control.buffer);
      c.setBigUint64(0, BigInt(16 + 4 * fds.length), true);
      c.setInt32(8, 1, true); // SOL_SOCKET
      c.setInt32(12, 1, true); // SCM_RIGHTS
      fds.forEach((fd, i) => c.setInt32(16 + 4 * i, fd, true));
    }
    const hdr = new Uint8Array(56);
    const h = new DataView(hdr.buffer);
    h.setBigUint64(16, ptr(iov), true);
    h.setBigUint64(24, 1n, true);
    if (fds.length) {
      h.setBigUint64(32, ptr(control), true);
      h.setBigUint64(40, BigInt(control.length), true);
    }
    const n = Number(sys.symbols.sendmsg(this.fd, hdr, 0));
    // The receiver has its own copies now; a front-end hands its fds over.
    for (const fd of fds) libc.close(fd);
    if (n !== msg.length) throw new Error(`sendmsg sent ${n} of ${msg.length}`);
  }

  async reply(): Promise<{ request: number; payload: Uint8Array }> {
    const head = await this.conn.recvExact(MSG_HEADER, this.stop);
    if (!head) throw new Error("back-end closed the connection");
    const dv = new DataView(head.bytes.buffer);
    const size = dv.getUint32(8, true);
    const body = size ? await this.conn.recvExact(size, this.stop) : null;
    return { request: dv.getUint32(0, true), payload: body?.bytes ?? new Uint8Array(0) };
  }

  async call(req: number, payload = new Uint8Array(0), fds: number[] = []): Promise<Uint8Array> {
    this.send(req, payload, fds);
    const r = await this.reply();
    strictEqual(r.request, req);
    return r.payload;
  }

  /** A request with NEED_REPLY: resolves to the REPLY_ACK status (0 = success). */
  async acked(req: number, payload: Uint8Array, fds: number[] = []): Promise<bigint> {
    this.send(req, payload, fds, 1 | FLAG_NEED_REPLY);
    const r = await this.reply();
    return new DataView(r.payload.buffer).getBigUint64(0, true);
  }
}

function u64(v: bigint): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

function state(index: number, num: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, index, true);
  new DataView(b.buffer).setUint32(4, num, true);
  return b;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 20_000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error(`never happened: ${what}`);
}

function counter(fd: number): bigint {
  const b = new Uint8Array(8);
  return Number(libc.read(fd, b, 8n)) === 8 ? new DataView(b.buffer).getBigUint64(0, true) : 0n;
}

function kick(fd: number): void {
  libc.write(fd, u64(1n), 8n);
}

Deno.test("vhost-user adapter (L0): vsock over a fake front-end — config, live rings, kicks, calls, stop, bad requests", async () => {
  const pair = new Int32Array(2);
  strictEqual(
    sys.symbols.socketpair(
      AF_UNIX,
      SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
      0,
      new Uint8Array(pair.buffer),
    ),
    0,
  );
  const logs: string[] = [];
  const device = new VirtioVsock({ guestCid: CID });
  const backend = new VhostUserVirtioBackend(device, { log: (m) => logs.push(m) });
  const backendConn = new UnixConn(pair[1]);
  const backendStop = new StopSignal();
  const serving = backend.serve(backendConn, backendStop);
  const fe = new FakeFrontEnd(pair[0]);
  const memName = `vu-test-${crypto.randomUUID()}`;
  const mem = RegionMemory.memfd([{ guestAddr: 0, size: MEM }], memName);
  // What this test creates, and so what must be gone at the end (the
  // back-end's SCM_RIGHTS copies of them included).
  const mine = new Set<string>([`/memfd:${memName} (deleted)`]);
  for (const fd of pair) mine.add(Deno.readLinkSync(`/proc/self/fd/${fd}`));
  const evs: number[] = [];
  const ev = () => {
    const fd = eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
    evs.push(fd);
    mine.add(
      `eventfd ${/eventfd-id:\s*(\d+)/.exec(Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`))![1]}`,
    );
    return fd;
  };
  try {
    const features = new DataView((await fe.call(Req.GET_FEATURES)).buffer).getBigUint64(0, true);
    ok(
      features & (1n << 32n) && features & (1n << 29n) && features & (1n << 30n),
      "VERSION_1, EVENT_IDX, PROTOCOL_FEATURES",
    );
    const proto = new DataView((await fe.call(Req.GET_PROTOCOL_FEATURES)).buffer).getBigUint64(
      0,
      true,
    );
    ok(proto & (1n << 9n), "CONFIG offered");
    fe.send(Req.SET_PROTOCOL_FEATURES, u64(proto));
    fe.send(Req.SET_OWNER, new Uint8Array(0));
    strictEqual(new DataView((await fe.call(Req.GET_QUEUE_NUM)).buffer).getBigUint64(0, true), 3n);

    // GET_CONFIG as QEMU's vhost-user-vsock asks: offset 0, 8 bytes, reply of 12 + 8.
    const get = new Uint8Array(CONFIG_HEADER_SIZE + 8);
    new DataView(get.buffer).setUint32(4, 8, true);
    const cfg = await fe.call(Req.GET_CONFIG, get);
    strictEqual(cfg.length, CONFIG_HEADER_SIZE + 8);
    strictEqual(new DataView(cfg.buffer).getBigUint64(CONFIG_HEADER_SIZE, true), BigInt(CID));
    strictEqual(await fe.acked(Req.SET_CONFIG, get), 0n, "SET_CONFIG acked (ignored: read-only)");

    fe.send(Req.SET_FEATURES, u64((1n << 32n) | (1n << 29n) | (1n << 30n)));
    const table = new Uint8Array(8 + 32);
    const t = new DataView(table.buffer);
    t.setUint32(0, 1, true);
    t.setBigUint64(8, 0n, true);
    t.setBigUint64(16, BigInt(MEM), true);
    t.setBigUint64(24, USER_BASE, true);
    t.setBigUint64(32, 0n, true);
    strictEqual(await fe.acked(Req.SET_MEM_TABLE, table, [libc.dup(mem.regions[0].fd!)]), 0n);

    // The guest's rx and tx rings (QEMU keeps the event queue: ring 2 stays unused).
    const rx = new MockQueueDriver(mem, 64, 0x10000, 0x100000, 0x80000);
    const tx = new MockQueueDriver(mem, 64, 0x20000, 0x200000, 0x80000);
    const kicks = [ev(), ev()];
    const calls = [ev(), ev()];
    for (const [i, q] of [rx, tx].entries()) {
      fe.send(Req.SET_VRING_NUM, state(i, 64));
      const a = new Uint8Array(40);
      const d = new DataView(a.buffer);
      d.setUint32(0, i, true);
      d.setBigUint64(8, USER_BASE + BigInt(q.rings.desc), true);
      d.setBigUint64(16, USER_BASE + BigInt(q.rings.used), true);
      d.setBigUint64(24, USER_BASE + BigInt(q.rings.avail), true);
      fe.send(Req.SET_VRING_ADDR, a);
      fe.send(Req.SET_VRING_BASE, state(i, 0));
      fe.send(Req.SET_VRING_CALL, u64(BigInt(i)), [libc.dup(calls[i])]);
      fe.send(Req.SET_VRING_KICK, u64(BigInt(i)), [libc.dup(kicks[i])]);
    }
    strictEqual(
      await fe.acked(Req.GET_FEATURES + 100, new Uint8Array(0)),
      1n,
      "unknown request fails",
    );
    strictEqual(backend.active, false, "rings start disabled with PROTOCOL_FEATURES");
    strictEqual(await fe.acked(Req.SET_VRING_ENABLE, state(0, 1)), 0n);
    strictEqual(await fe.acked(Req.SET_VRING_ENABLE, state(1, 1)), 0n);
    strictEqual(backend.active, true);
    strictEqual(await fe.acked(Req.SET_VRING_NUM, state(9, 64)), 1n, "bad ring index fails");

    // Host connects: the REQUEST lands in a posted rx buffer and the call eventfd fires.
    for (let i = 0; i < 8; i++) rx.add([{ writable: HEADER_SIZE }, { writable: 4096 }]);
    kick(kicks[0]);
    let stream = null as Awaited<ReturnType<VirtioVsock["connect"]>> | null;
    device.connect(1234).then((s) => stream = s);
    let req = null as ReturnType<typeof parseHeader> | null;
    await until("REQUEST in rx", () => {
      const u = rx.takeUsed();
      if (u.length) req = parseHeader(u[0].written);
      return req !== null;
    });
    strictEqual(req!.op, OP.REQUEST);
    strictEqual(req!.dstCid, CID);
    ok(counter(calls[0]) > 0n, "rx call eventfd signalled");
    rx.add([{ writable: HEADER_SIZE }, { writable: 4096 }]);
    // The guest answers on the tx ring and kicks its eventfd.
    tx.add([{
      data: encodeHeader({
        srcCid: CID,
        dstCid: HOST_CID,
        srcPort: 1234,
        dstPort: req!.srcPort,
        len: 0,
        type: VSOCK_TYPE.STREAM,
        op: OP.RESPONSE,
        flags: 0,
        bufAlloc: 65536,
        fwdCnt: 0,
      }),
    }]);
    kick(kicks[1]);
    await until("connected", () => stream !== null);
    await until("tx used", () => tx.takeUsed().length === 1);
    ok(counter(calls[1]) > 0n, "tx call eventfd signalled");
    const w = stream!.writable.getWriter();
    w.write(new Uint8Array([1, 2, 3]));
    let data: number[] = [];
    await until("data in rx", () => {
      for (const u of rx.takeUsed()) {
        data = [...u.written.subarray(HEADER_SIZE, u.len)];
      }
      return data.length > 0;
    });
    deepStrictEqual(data, [1, 2, 3]);

    // GET_VRING_BASE stops the ring and resets the device: the stream ends.
    const base = await fe.call(Req.GET_VRING_BASE, state(0, 0));
    // Two rx buffers were used (REQUEST, then the data); the rest stay posted.
    deepStrictEqual([...base], [...state(0, 2)]);
    strictEqual(backend.active, false);
    strictEqual(await stream!.closed, "device-reset");
    // Restarting the ring (new kick fd, enabled) activates it again.
    fe.send(Req.SET_VRING_BASE, state(0, 2));
    fe.send(Req.SET_VRING_KICK, u64(0n), [libc.dup(kicks[0])]);
    await until("re-activated", () => backend.active);
  } finally {
    fe.conn[Symbol.dispose]();
    await serving;
    backendConn[Symbol.dispose]();
    backendStop[Symbol.dispose]();
    fe.stop[Symbol.dispose]();
    for (const fd of evs) libc.close(fd);
    mem[Symbol.dispose]();
  }
  strictEqual(backend.active, false, "disconnect resets the device");
  strictEqual(backend.memory, null);
  deepStrictEqual(fdIdentities().filter((f) => mine.has(f)), [], "every fd closed");
  deepStrictEqual(logs.filter((l) => !/unsupported request|ring index 9/.test(l)), []);
});
