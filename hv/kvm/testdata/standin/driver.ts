/**
 * The stand-in's virtio-vsock driver, in user mode: finds the device among
 * the virtio-mmio windows, initialises it (virtio 1.2 §3.1.1 and §4.2.3:
 * reset, ACKNOWLEDGE, DRIVER, VERSION_1 and EVENT_IDX, FEATURES_OK, three
 * split virtqueues of {@link SIZES.QUEUE} entries, DRIVER_OK), routes its
 * interrupt through the IOAPIC, and moves buffers: rx and event buffers
 * stay posted (re-posted as soon as their packet is copied out), tx slots
 * come from a free stack.
 *
 * Notifications follow EVENT_IDX both ways (§2.7.10): the driver notifies
 * only when its new avail index passes the device's `avail_event`
 * (`vring_need_event`), and it moves `used_event` to what it has consumed
 * only before it goes idle — a busy driver polls and asks for no
 * interrupts. A notification costs a guest exit (~40 µs from CPL3 here,
 * hv/kvm/standin_speed_bench.ts), so this keeps them to about one per batch.
 *
 * @module
 */

import { type Assembler, mem } from "../../../../init/asm/mod.ts";
import { LAYOUT } from "../../../boot/layout.ts";
import { MMIO, MMIO_MAGIC } from "../../../../devices/virtio/mmio_regs.ts";
import { DEVICE_ID, STATUS } from "../../../../devices/virtio/device.ts";
import { SIZES, STANDIN } from "./layout.ts";
import { C, CP, G, g, HDR, VQ, vq } from "./structs.ts";
import { VEC } from "./ring3.ts";

const Q = SIZES.QUEUE;
/** virtio-mmio windows scanned for the vsock device. */
const SCAN = 32;
/** Feature bits (§6): VIRTIO_F_VERSION_1 is bit 32, VIRTIO_F_EVENT_IDX bit 29. */
const F_VERSION_1_HI = 1;
const F_EVENT_IDX = 1 << 29;
/** §2.7.5 descriptor flag: device writes (rx and event buffers). */
const DESC_F_WRITE = 2;
/** IOAPIC (82093AA): index and data registers; redirection entries from index 0x10. */
const IOREGSEL = LAYOUT.IOAPIC_ADDR;
const IOWIN = LAYOUT.IOAPIC_ADDR + 0x10;
/** The guest's CID and the host's (linux/vm_sockets.h). */
const GUEST_CID = 3;
const HOST_CID = 2;
/** VIRTIO_VSOCK_TYPE_STREAM. */
const STREAM = 1;

/** `[queue q's avail ring + off]`. */
function avail(q: number, off: number, size: 16 | 32 = 16, index?: "rcx" | "rax" | "rdx") {
  return mem({ disp: vq(q) + VQ.AVAIL + off, size, index, scale: index ? 2 : 1 });
}

/** Emits `d_find`, `d_init`, `tx_get`, `tx_put`, `tx_reap`, `rx_poll`, `ev_poll`, `d_kick`, `d_arm`, `d_pending`. */
export function emitDriver(a: Assembler): void {
  // d_find → eax 1 (G.DEV_BASE, G.DEV_GSI set) or 0. Windows are allocated from slot 0
  // on (hv/kvm/device_manager.ts), slot i with GSI DEVICE_IRQ_FIRST + i; an empty window
  // reads all ones.
  a.label("d_find");
  a.xor("ecx", "ecx");
  a.mov("r8d", LAYOUT.VIRTIO_MMIO_START);
  a.label("d_find_l");
  a.mov("eax", mem({ base: "r8", disp: MMIO.MAGIC_VALUE, size: 32 }));
  a.cmp("eax", MMIO_MAGIC);
  a.jne("d_find_none");
  a.mov("eax", mem({ base: "r8", disp: MMIO.DEVICE_ID, size: 32 }));
  a.cmp("eax", DEVICE_ID.VSOCK);
  a.je("d_find_yes");
  a.add("r8", LAYOUT.VIRTIO_MMIO_STRIDE);
  a.inc("ecx");
  a.cmp("ecx", SCAN);
  a.jb("d_find_l");
  a.label("d_find_none");
  a.xor("eax", "eax");
  a.ret();
  a.label("d_find_yes");
  a.mov(g(G.DEV_BASE, 64), "r8");
  a.lea("eax", mem({ base: "rcx", disp: LAYOUT.DEVICE_IRQ_FIRST }));
  a.mov(g(G.DEV_GSI), "eax");
  a.mov("eax", 1);
  a.ret();

  // d_init → eax 1, or 0 when the device refuses (the caller reports it).
  const reg = (off: number) => mem({ base: "rbx", disp: off, size: 32 });
  a.label("d_init");
  a.push("rbx");
  a.mov("rbx", g(G.DEV_BASE, 64));
  a.mov(reg(MMIO.STATUS), 0); // reset (§4.2.3.1)
  a.mov(reg(MMIO.STATUS), STATUS.ACKNOWLEDGE);
  a.mov(reg(MMIO.STATUS), STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  a.mov(reg(MMIO.DEVICE_FEATURES_SEL), 1);
  a.mov("eax", reg(MMIO.DEVICE_FEATURES));
  a.test("eax", F_VERSION_1_HI);
  a.jz("d_init_fail");
  a.mov(reg(MMIO.DEVICE_FEATURES_SEL), 0);
  a.mov("eax", reg(MMIO.DEVICE_FEATURES));
  a.test("eax", F_EVENT_IDX);
  a.jz("d_init_fail");
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 1);
  a.mov(reg(MMIO.DRIVER_FEATURES), F_VERSION_1_HI);
  a.mov(reg(MMIO.DRIVER_FEATURES_SEL), 0);
  a.mov(reg(MMIO.DRIVER_FEATURES), F_EVENT_IDX);
  a.mov(reg(MMIO.STATUS), STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  a.mov("eax", reg(MMIO.STATUS));
  a.test("eax", STATUS.FEATURES_OK);
  a.jz("d_init_fail");
  // Descriptors: rx buffer i and event buffer i for descriptor i (all posted); tx slot i
  // (length set per packet) with every slot on the free stack.
  a.xor("ecx", "ecx");
  a.label("d_init_desc");
  a.mov("eax", "ecx");
  a.shl("eax", 4);
  a.imul("edx", "ecx", SIZES.RX_SLOT);
  a.add("edx", STANDIN.RX_BUFS);
  a.mov(mem({ base: "rax", disp: vq(VQ.RX) + VQ.DESC, size: 64 }), "rdx");
  a.mov(mem({ base: "rax", disp: vq(VQ.RX) + VQ.DESC + 8, size: 32 }), SIZES.RX_SLOT);
  a.mov(mem({ base: "rax", disp: vq(VQ.RX) + VQ.DESC + 12, size: 16 }), DESC_F_WRITE);
  a.lea("edx", mem({ index: "rcx", scale: 8, disp: vq(VQ.EVENT) + VQ.EVENT_BUFS }));
  a.mov(mem({ base: "rax", disp: vq(VQ.EVENT) + VQ.DESC, size: 64 }), "rdx");
  a.mov(mem({ base: "rax", disp: vq(VQ.EVENT) + VQ.DESC + 8, size: 32 }), 8);
  a.mov(mem({ base: "rax", disp: vq(VQ.EVENT) + VQ.DESC + 12, size: 16 }), DESC_F_WRITE);
  a.imul("edx", "ecx", SIZES.TX_SLOT);
  a.add("edx", STANDIN.TX_BUFS);
  a.mov(mem({ base: "rax", disp: vq(VQ.TX) + VQ.DESC, size: 64 }), "rdx");
  a.mov(avail(VQ.RX, 4, 16, "rcx"), "cx");
  a.mov(avail(VQ.EVENT, 4, 16, "rcx"), "cx");
  a.mov(mem({ index: "rcx", scale: 4, disp: STANDIN.GLOBALS + G.TX_FREE, size: 32 }), "ecx");
  a.inc("ecx");
  a.cmp("ecx", Q);
  a.jb("d_init_desc");
  a.mov(g(G.TX_NFREE), Q);
  for (const q of [VQ.RX, VQ.EVENT]) {
    a.mov(avail(q, 2), Q);
    a.mov(g(G.AVAIL + 4 * q), Q);
  }
  for (const q of [VQ.RX, VQ.TX, VQ.EVENT]) {
    a.mov(reg(MMIO.QUEUE_SEL), q);
    a.mov("eax", reg(MMIO.QUEUE_NUM_MAX));
    a.cmp("eax", Q);
    a.jb("d_init_fail");
    a.mov(reg(MMIO.QUEUE_NUM), Q);
    a.mov(reg(MMIO.QUEUE_DESC_LOW), vq(q) + VQ.DESC);
    a.mov(reg(MMIO.QUEUE_DESC_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DRIVER_LOW), vq(q) + VQ.AVAIL);
    a.mov(reg(MMIO.QUEUE_DRIVER_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_DEVICE_LOW), vq(q) + VQ.USED);
    a.mov(reg(MMIO.QUEUE_DEVICE_HIGH), 0);
    a.mov(reg(MMIO.QUEUE_READY), 1);
  }
  a.mov(
    reg(MMIO.STATUS),
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK,
  );
  // Its GSI: edge-triggered, active high, fixed delivery to APIC 0 at VEC.DEVICE, unmasked.
  a.mov("r8d", IOREGSEL);
  a.mov("ecx", g(G.DEV_GSI));
  a.lea("ecx", mem({ base: "rcx", index: "rcx", disp: 0x10 }));
  a.mov(mem({ base: "r8", size: 32 }), "ecx");
  a.mov(mem({ base: "r8", disp: IOWIN - IOREGSEL, size: 32 }), VEC.DEVICE);
  a.inc("ecx");
  a.mov(mem({ base: "r8", size: 32 }), "ecx");
  a.mov(mem({ base: "r8", disp: IOWIN - IOREGSEL, size: 32 }), 0);
  // The rx and event buffers are there: tell the device (DRIVER_OK is set).
  a.mov(reg(MMIO.QUEUE_NOTIFY), VQ.RX);
  a.mov(reg(MMIO.QUEUE_NOTIFY), VQ.EVENT);
  a.mov(g(G.KICKED + 4 * VQ.RX), Q);
  a.mov(g(G.KICKED + 4 * VQ.EVENT), Q);
  a.mov("eax", 1);
  a.pop("rbx");
  a.ret();
  a.label("d_init_fail");
  a.mov(reg(MMIO.STATUS), STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FAILED);
  a.xor("eax", "eax");
  a.pop("rbx");
  a.ret();

  // tx_get → rax: the buffer of the slot tx_put will use next, or 0 when none is free.
  a.label("tx_get");
  a.mov("eax", g(G.TX_NFREE));
  a.test("eax", "eax");
  a.jz("tx_get_ret");
  a.mov("eax", mem({ index: "rax", scale: 4, disp: STANDIN.GLOBALS + G.TX_FREE - 4, size: 32 }));
  a.imul("eax", "eax", SIZES.TX_SLOT);
  a.add("eax", STANDIN.TX_BUFS);
  a.label("tx_get_ret");
  a.ret();

  // tx_put(rdi conn, esi op, edx flags, ecx len): sends the slot tx_get gave (its payload
  // already written at +44) as a packet of `conn` — every header carries our credit
  // (§5.10.6.3). The caller checked tx_get first.
  a.label("tx_put");
  a.mov("r8d", g(G.TX_NFREE));
  a.dec("r8d");
  a.mov(g(G.TX_NFREE), "r8d");
  a.mov("r9d", mem({ index: "r8", scale: 4, disp: STANDIN.GLOBALS + G.TX_FREE, size: 32 }));
  a.imul("r10d", "r9d", SIZES.TX_SLOT);
  a.add("r10d", STANDIN.TX_BUFS);
  const h = (off: number, size: 16 | 32 | 64 = 32) => mem({ base: "r10", disp: off, size });
  a.mov(h(HDR.SRC_CID, 64), GUEST_CID);
  a.mov(h(HDR.DST_CID, 64), HOST_CID);
  a.mov("eax", mem({ base: "rdi", disp: C.LPORT, size: 32 }));
  a.mov(h(HDR.SRC_PORT), "eax");
  a.mov("eax", mem({ base: "rdi", disp: C.PPORT, size: 32 }));
  a.mov(h(HDR.DST_PORT), "eax");
  a.mov(h(HDR.LEN), "ecx");
  a.mov(h(HDR.TYPE, 16), STREAM);
  a.mov(h(HDR.OP, 16), "si");
  a.mov(h(HDR.FLAGS), "edx");
  a.mov(h(HDR.BUF_ALLOC), SIZES.CONN_RING);
  a.mov("eax", mem({ base: "rdi", disp: C.FWD_CNT, size: 32 }));
  a.mov(h(HDR.FWD_CNT), "eax");
  a.mov(mem({ base: "rdi", disp: C.LAST_FWD, size: 32 }), "eax");
  a.and(mem({ base: "rdi", disp: C.PENDING, size: 32 }), ~CP.CREDIT);
  a.add(mem({ base: "rdi", disp: C.TX_CNT, size: 32 }), "ecx");
  a.mov("r11d", "r9d");
  a.shl("r11d", 4);
  a.lea("eax", mem({ base: "rcx", disp: HDR.SIZE }));
  a.mov(mem({ base: "r11", disp: vq(VQ.TX) + VQ.DESC + 8, size: 32 }), "eax");
  a.mov("eax", g(G.AVAIL + 4 * VQ.TX));
  a.mov("r11d", "eax");
  a.and("r11d", Q - 1);
  a.mov(mem({ index: "r11", scale: 2, disp: vq(VQ.TX) + VQ.AVAIL + 4, size: 16 }), "r9w");
  a.inc("eax");
  a.mov(g(G.AVAIL + 4 * VQ.TX), "eax");
  // The index after the entry and the header: x86 keeps stores in order.
  a.mov(avail(VQ.TX, 2), "ax");
  a.mov(g(G.PROGRESS), 1);
  a.ret();

  // tx_reap: used tx slots back on the free stack.
  const usedIdx = (q: number) => mem({ disp: vq(q) + VQ.USED + 2, size: 16 });
  const usedElem = (q: number, off: 0 | 4) =>
    mem({ index: "rcx", scale: 8, disp: vq(q) + VQ.USED + 4 + off, size: 32 });
  a.label("tx_reap");
  a.movzx("eax", usedIdx(VQ.TX));
  a.mov("ecx", g(G.SEEN + 4 * VQ.TX));
  a.cmp("ax", "cx");
  a.je("tx_reap_done");
  a.and("ecx", Q - 1);
  a.mov("edx", usedElem(VQ.TX, 0));
  a.and("edx", Q - 1);
  a.mov("eax", g(G.TX_NFREE));
  a.mov(mem({ index: "rax", scale: 4, disp: STANDIN.GLOBALS + G.TX_FREE, size: 32 }), "edx");
  a.inc("eax");
  a.mov(g(G.TX_NFREE), "eax");
  a.inc(g(G.SEEN + 4 * VQ.TX));
  a.mov(g(G.PROGRESS), 1);
  a.jmp("tx_reap");
  a.label("tx_reap_done");
  a.ret();

  // rx_poll: each used rx buffer to v_packet (which copies what it keeps), then re-posted.
  a.label("rx_poll");
  a.push("r12");
  a.label("rx_poll_l");
  a.movzx("eax", usedIdx(VQ.RX));
  a.mov("ecx", g(G.SEEN + 4 * VQ.RX));
  a.cmp("ax", "cx");
  a.je("rx_poll_done");
  a.and("ecx", Q - 1);
  a.mov("r12d", usedElem(VQ.RX, 0));
  a.and("r12d", Q - 1);
  a.mov("esi", usedElem(VQ.RX, 4));
  a.imul("edi", "r12d", SIZES.RX_SLOT);
  a.add("edi", STANDIN.RX_BUFS);
  a.call("v_packet");
  a.mov("eax", g(G.AVAIL + 4 * VQ.RX));
  a.mov("ecx", "eax");
  a.and("ecx", Q - 1);
  a.mov(avail(VQ.RX, 4, 16, "rcx"), "r12w");
  a.inc("eax");
  a.mov(g(G.AVAIL + 4 * VQ.RX), "eax");
  a.mov(avail(VQ.RX, 2), "ax");
  a.inc(g(G.SEEN + 4 * VQ.RX));
  a.mov(g(G.PROGRESS), 1);
  a.jmp("rx_poll_l");
  a.label("rx_poll_done");
  a.pop("r12");
  a.ret();

  // ev_poll: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0, §5.10.6.4) resets every connection.
  a.label("ev_poll");
  a.push("r12");
  a.label("ev_poll_l");
  a.movzx("eax", usedIdx(VQ.EVENT));
  a.mov("ecx", g(G.SEEN + 4 * VQ.EVENT));
  a.cmp("ax", "cx");
  a.je("ev_poll_done");
  a.and("ecx", Q - 1);
  a.mov("r12d", usedElem(VQ.EVENT, 0));
  a.and("r12d", Q - 1);
  a.cmp(mem({ index: "r12", scale: 8, disp: vq(VQ.EVENT) + VQ.EVENT_BUFS, size: 32 }), 0);
  a.jne("ev_poll_repost");
  a.call("c_transport_reset");
  a.label("ev_poll_repost");
  a.mov("eax", g(G.AVAIL + 4 * VQ.EVENT));
  a.mov("ecx", "eax");
  a.and("ecx", Q - 1);
  a.mov(avail(VQ.EVENT, 4, 16, "rcx"), "r12w");
  a.inc("eax");
  a.mov(g(G.AVAIL + 4 * VQ.EVENT), "eax");
  a.mov(avail(VQ.EVENT, 2), "ax");
  a.inc(g(G.SEEN + 4 * VQ.EVENT));
  a.mov(g(G.PROGRESS), 1);
  a.jmp("ev_poll_l");
  a.label("ev_poll_done");
  a.pop("r12");
  a.ret();

  // d_kick: notify each queue whose new buffers pass its avail_event (vring_need_event).
  a.label("d_kick");
  a.mfence(); // our avail index stores before the avail_event loads
  for (const q of [VQ.RX, VQ.TX, VQ.EVENT]) {
    const next = a.newLabel("kick");
    a.mov("eax", g(G.AVAIL + 4 * q));
    a.mov("ecx", g(G.KICKED + 4 * q));
    a.cmp("eax", "ecx");
    a.je(next);
    a.mov(g(G.KICKED + 4 * q), "eax");
    a.movzx("edx", mem({ disp: vq(q) + VQ.USED + 4 + 8 * Q, size: 16 }));
    a.mov("r8d", "eax");
    a.sub("r8d", "edx");
    a.dec("r8d");
    a.and("r8d", 0xffff);
    a.mov("r9d", "eax");
    a.sub("r9d", "ecx");
    a.and("r9d", 0xffff);
    a.cmp("r8d", "r9d");
    a.jae(next);
    a.mov("rdx", g(G.DEV_BASE, 64));
    a.mov(mem({ base: "rdx", disp: MMIO.QUEUE_NOTIFY, size: 32 }), q);
    a.label(next);
  }
  a.ret();

  // d_arm: ask for an interrupt at the next used buffer of every queue (used_event).
  a.label("d_arm");
  for (const q of [VQ.RX, VQ.TX, VQ.EVENT]) {
    a.mov("eax", g(G.SEEN + 4 * q));
    a.mov(avail(q, 4 + 2 * Q), "ax");
  }
  a.mfence(); // used_event stores before the used index loads of d_pending
  a.ret();

  // d_pending → eax 1 when any queue has used buffers not yet seen.
  a.label("d_pending");
  for (const q of [VQ.RX, VQ.TX, VQ.EVENT]) {
    a.movzx("eax", usedIdx(q));
    a.cmp("ax", g(G.SEEN + 4 * q, 16));
    a.jne("d_pending_yes");
  }
  a.xor("eax", "eax");
  a.ret();
  a.label("d_pending_yes");
  a.mov("eax", 1);
  a.ret();
}
