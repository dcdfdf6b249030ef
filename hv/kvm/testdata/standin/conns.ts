/**
 * The stand-in's vsock connections (virtio 1.2 §5.10.6): the packets from
 * the device (`v_packet`), the connection table, each connection's receive
 * ring — the `buf_alloc` it advertises, so whatever the host sends within
 * its credit fits, and a slow consumer only stops its own connection, never
 * the shared rx queue — and sending within the host's credit (`c_room`,
 * `c_write`). Control packets (REQUEST, RESPONSE, CREDIT_UPDATE, SHUTDOWN,
 * RST) and reply lines are queued on the connection and sent by `c_flush`
 * in that order, SHUTDOWN only after the reply line.
 *
 * A connection closes cleanly (§5.10.6.6): SHUTDOWN with both flags, then
 * it waits in CLOSING for the host's RST; an RST from the host makes it
 * DEAD at once. A DEAD slot is freed once no request handler or process
 * refers to it.
 *
 * @module
 */

import { type Assembler, mem } from "../../../../init/asm/mod.ts";
import { SIZES, STANDIN } from "./layout.ts";
import { at, C, CF, CP, CS, G, g, HDR, MAX_PKT, OP, ROLE, TABLES } from "./structs.ts";
import { AGENT_PORT } from "../../../../init/agent/protocol.ts";

const RING = SIZES.CONN_RING;
/** A CREDIT_UPDATE goes out once this much was consumed since the last credit we sent. */
const CREDIT_STEP = RING / 4;
/** First guest port of connections the stand-in opens to the host. */
export const FIRST_GUEST_PORT = 50000;

/** Emits the connection routines and the per-turn passes `run_conns`, `flush_conns`, `sweep`. */
export function emitConns(a: Assembler): void {
  const c = (off: number, size: 8 | 16 | 32 | 64 = 32) => at("rbx", off, size);

  // v_packet(rdi buf, esi used length): one packet from the rx queue.
  a.label("v_packet");
  a.push("rbx");
  a.push("r12");
  a.push("r13");
  a.push("r14");
  a.mov("r12", "rdi");
  a.mov("r14d", "esi");
  a.cmp("r14d", HDR.SIZE);
  a.jb("v_done");
  a.cmp(at("r12", HDR.TYPE, 16), 1); // STREAM only
  a.jne("v_done");
  a.movzx("r13d", at("r12", HDR.OP, 16));
  a.mov("edi", at("r12", HDR.DST_PORT));
  a.mov("esi", at("r12", HDR.SRC_PORT));
  a.call("c_find");
  a.test("rax", "rax");
  a.jnz("v_have");
  a.cmp("r13d", OP.REQUEST);
  a.jne("v_unknown");
  a.cmp(at("r12", HDR.DST_PORT), AGENT_PORT);
  a.jne("v_reply_rst");
  a.call("c_alloc");
  a.test("rax", "rax");
  a.jz("v_reply_rst");
  a.mov("rbx", "rax");
  a.mov(c(C.STATE), CS.OPEN);
  a.mov(c(C.LPORT), AGENT_PORT);
  a.mov("eax", at("r12", HDR.SRC_PORT));
  a.mov(c(C.PPORT), "eax");
  a.mov(c(C.ROLE), ROLE.REQUEST);
  a.mov(c(C.PENDING), CP.RESPONSE);
  a.jmp("v_credit");
  a.label("v_unknown");
  a.cmp("r13d", OP.RST); // never answer an RST
  a.je("v_done");
  a.label("v_reply_rst");
  a.call("tx_get");
  a.test("rax", "rax");
  a.jz("v_done");
  a.mov("eax", at("r12", HDR.DST_PORT));
  a.mov(g(G.RAW_CONN + C.LPORT), "eax");
  a.mov("eax", at("r12", HDR.SRC_PORT));
  a.mov(g(G.RAW_CONN + C.PPORT), "eax");
  a.mov(g(G.RAW_CONN + C.FWD_CNT), 0);
  a.mov("edi", STANDIN.GLOBALS + G.RAW_CONN);
  a.mov("esi", OP.RST);
  a.xor("edx", "edx");
  a.xor("ecx", "ecx");
  a.call("tx_put");
  a.jmp("v_done");

  a.label("v_have");
  a.mov("rbx", "rax");
  a.cmp("r13d", OP.RST);
  a.je("v_rst");
  a.label("v_credit");
  a.mov("eax", at("r12", HDR.BUF_ALLOC));
  a.mov(c(C.PEER_BUF), "eax");
  a.mov("eax", at("r12", HDR.FWD_CNT));
  a.mov(c(C.PEER_FWD), "eax");
  a.cmp("r13d", OP.REQUEST);
  a.je("v_request");
  a.cmp("r13d", OP.RESPONSE);
  a.je("v_response");
  a.cmp("r13d", OP.SHUTDOWN);
  a.je("v_shutdown");
  a.cmp("r13d", OP.RW);
  a.je("v_rw");
  a.cmp("r13d", OP.CREDIT_UPDATE);
  a.je("v_done");
  a.cmp("r13d", OP.CREDIT_REQUEST);
  a.je("v_creq");
  a.jmp("v_proto"); // an unknown op
  a.label("v_request");
  // A new host connection (its REQUEST took the slot just now) — or a second REQUEST.
  a.cmp(c(C.PENDING), CP.RESPONSE);
  a.je("v_done");
  a.jmp("v_proto");
  a.label("v_response");
  a.cmp(c(C.STATE), CS.CONNECTING);
  a.jne("v_proto");
  a.test(c(C.PENDING), CP.REQUEST);
  a.jnz("v_proto");
  a.mov(c(C.STATE), CS.OPEN);
  a.jmp("v_done");
  a.label("v_shutdown");
  a.mov("eax", at("r12", HDR.FLAGS));
  a.and("eax", CF.PEER_RCV | CF.PEER_SEND);
  a.or(c(C.FLAGS), "eax");
  a.jmp("v_done");
  a.label("v_creq");
  a.or(c(C.PENDING), CP.CREDIT);
  a.jmp("v_done");
  a.label("v_rst");
  a.mov(c(C.STATE), CS.DEAD);
  a.or(c(C.FLAGS), CF.RESET);
  a.mov(c(C.PENDING), 0);
  a.jmp("v_done");
  a.label("v_rw");
  a.cmp(c(C.STATE), CS.CONNECTING);
  a.je("v_proto");
  a.mov("edx", at("r12", HDR.LEN));
  a.lea("eax", mem({ base: "rdx", disp: HDR.SIZE }));
  a.cmp("eax", "r14d"); // the payload must be in the buffer
  a.ja("v_proto");
  a.cmp("edx", MAX_PKT);
  a.ja("v_proto");
  a.mov("eax", c(C.RX_CNT));
  a.sub("eax", c(C.FWD_CNT));
  a.mov("ecx", RING);
  a.sub("ecx", "eax");
  a.cmp("edx", "ecx"); // within the credit we gave
  a.ja("v_proto");
  a.mov("rdi", "rbx");
  a.lea("rsi", at("r12", HDR.SIZE));
  a.call("c_ring_put");
  a.jmp("v_done");
  a.label("v_proto");
  a.or(c(C.PENDING), CP.RST);
  a.label("v_done");
  a.mov(g(G.PROGRESS), 1);
  a.pop("r14");
  a.pop("r13");
  a.pop("r12");
  a.pop("rbx");
  a.ret();

  // c_find(edi local port, esi peer port) → rax: the live connection, or 0.
  a.label("c_find");
  a.mov("eax", TABLES.CONNS);
  a.mov("ecx", SIZES.CONNS);
  a.label("c_find_l");
  a.mov("edx", at("rax", C.STATE));
  a.cmp("edx", CS.FREE);
  a.je("c_find_n");
  a.cmp("edx", CS.DEAD);
  a.je("c_find_n");
  a.cmp(at("rax", C.LPORT), "edi");
  a.jne("c_find_n");
  a.cmp(at("rax", C.PPORT), "esi");
  a.je("c_find_ret");
  a.label("c_find_n");
  a.add("rax", SIZES.CONN);
  a.dec("ecx");
  a.jnz("c_find_l");
  a.xor("eax", "eax");
  a.label("c_find_ret");
  a.ret();

  // c_alloc → rax: a cleared FREE slot with its ring and request buffer (the caller sets
  // its state before allocating again), or 0.
  a.label("c_alloc");
  a.mov("eax", TABLES.CONNS);
  a.xor("ecx", "ecx");
  a.label("c_alloc_l");
  a.cmp(at("rax", C.STATE), CS.FREE);
  a.je("c_alloc_got");
  a.add("rax", SIZES.CONN);
  a.inc("ecx");
  a.cmp("ecx", SIZES.CONNS);
  a.jb("c_alloc_l");
  a.xor("eax", "eax");
  a.ret();
  a.label("c_alloc_got");
  a.mov("r8", "rax");
  a.mov("r9d", "ecx");
  a.mov("rdi", "rax");
  a.xor("eax", "eax");
  a.mov("ecx", C.LINE / 8);
  a.cld();
  a.repStosq();
  a.mov("rax", "r8");
  a.mov(at("rax", C.INDEX), "r9d");
  a.mov("edx", "r9d");
  a.imul("edx", "edx", RING);
  a.add("edx", STANDIN.RINGS);
  a.mov(at("rax", C.RING, 64), "rdx");
  a.mov("edx", "r9d");
  a.imul("edx", "edx", SIZES.REQ_BUF);
  a.add("edx", STANDIN.REQ_BUFS);
  a.mov(at("rax", C.REQBUF, 64), "rdx");
  a.ret();

  // c_connect(edi host port, rsi process) → rax: a connection to the host, REQUEST queued; or 0.
  a.label("c_connect");
  a.push("rdi");
  a.push("rsi");
  a.call("c_alloc");
  a.pop("rsi");
  a.pop("rdi");
  a.test("rax", "rax");
  a.jz("c_connect_ret");
  a.mov(at("rax", C.STATE), CS.CONNECTING);
  a.mov(at("rax", C.PPORT), "edi");
  a.mov("ecx", g(G.NEXT_PORT));
  a.mov(at("rax", C.LPORT), "ecx");
  a.inc("ecx");
  a.mov(g(G.NEXT_PORT), "ecx");
  a.mov(at("rax", C.PENDING), CP.REQUEST);
  a.mov(at("rax", C.PROC, 64), "rsi");
  a.label("c_connect_ret");
  a.ret();

  // c_ring_put(rdi conn, rsi src, edx n): n bytes into the receive ring (room checked).
  // c_ring_get(rdi conn, rsi dst, edx n): n bytes out of it (available checked).
  for (const dir of ["put", "get"] as const) {
    const cnt = dir === "put" ? C.RX_CNT : C.FWD_CNT;
    a.label(`c_ring_${dir}`);
    a.mov("r8", "rdi");
    a.mov("r9d", "edx");
    a.mov("eax", at("r8", cnt));
    a.and("eax", RING - 1);
    a.mov("ecx", RING);
    a.sub("ecx", "eax");
    a.cmp("edx", "ecx");
    a.cmov("b", "ecx", "edx"); // first part: up to the end of the ring
    a.mov("r10d", "ecx");
    a.mov("r11", at("r8", C.RING, 64));
    a.add("r11", "rax");
    if (dir === "put") a.mov("rdi", "r11");
    else {
      a.mov("rdi", "rsi");
      a.mov("rsi", "r11");
    }
    a.cld();
    a.repMovsb();
    a.mov("ecx", "r9d");
    a.sub("ecx", "r10d");
    if (dir === "put") a.mov("rdi", at("r8", C.RING, 64));
    else a.mov("rsi", at("r8", C.RING, 64));
    a.repMovsb();
    a.add(at("r8", cnt), "r9d");
    a.ret();
  }

  // c_avail(rdi conn) → eax bytes waiting in the receive ring.
  a.label("c_avail");
  a.mov("eax", at("rdi", C.RX_CNT));
  a.sub("eax", at("rdi", C.FWD_CNT));
  a.ret();

  // c_read(rdi conn, rsi dst, edx n): takes n waiting bytes; a CREDIT_UPDATE is queued once
  // enough was consumed since the last credit the host saw.
  a.label("c_read");
  a.push("rdi");
  a.call("c_ring_get");
  a.pop("rdi");
  a.mov("eax", at("rdi", C.FWD_CNT));
  a.sub("eax", at("rdi", C.LAST_FWD));
  a.cmp("eax", CREDIT_STEP);
  a.jb("c_read_ret");
  a.or(at("rdi", C.PENDING), CP.CREDIT);
  a.label("c_read_ret");
  a.mov(g(G.PROGRESS), 1);
  a.ret();

  // c_room(rdi conn) → eax: bytes one RW packet may carry now (host credit, a free tx slot).
  a.label("c_room");
  a.cmp(at("rdi", C.STATE), CS.OPEN);
  a.jne("c_room_zero");
  a.test(at("rdi", C.FLAGS), CF.PEER_RCV);
  a.jnz("c_room_zero");
  a.cmp(g(G.TX_NFREE), 0);
  a.je("c_room_zero");
  a.mov("eax", at("rdi", C.PEER_BUF));
  a.mov("ecx", at("rdi", C.TX_CNT));
  a.sub("ecx", at("rdi", C.PEER_FWD));
  a.sub("eax", "ecx"); // peer_buf_alloc − (tx_cnt − peer_fwd_cnt) (§5.10.6.3)
  a.jle("c_room_zero");
  a.mov("ecx", MAX_PKT);
  a.cmp("eax", "ecx");
  a.cmov("a", "eax", "ecx");
  a.ret();
  a.label("c_room_zero");
  a.xor("eax", "eax");
  a.ret();

  // c_write(rdi conn or 0, rsi src, edx n) → eax bytes sent now (all of them for conn 0: /dev/null).
  a.label("c_write");
  a.push("rbx");
  a.push("r12");
  a.push("r13");
  a.push("r14");
  a.push("r15");
  a.mov("rbx", "rdi");
  a.mov("r12", "rsi");
  a.mov("r13d", "edx");
  a.xor("r14d", "r14d");
  a.test("rbx", "rbx");
  a.jnz("c_write_l");
  a.mov("r14d", "r13d");
  a.label("c_write_l");
  a.cmp("r14d", "r13d");
  a.jae("c_write_done");
  a.mov("rdi", "rbx");
  a.call("c_room");
  a.test("eax", "eax");
  a.jz("c_write_done");
  a.mov("ecx", "r13d");
  a.sub("ecx", "r14d");
  a.cmp("eax", "ecx");
  a.cmov("a", "eax", "ecx");
  a.mov("r15d", "eax");
  a.call("tx_get");
  a.lea("rdi", at("rax", HDR.SIZE));
  a.lea("rsi", mem({ base: "r12", index: "r14" }));
  a.mov("edx", "r15d");
  a.call("u_memcpy");
  a.mov("rdi", "rbx");
  a.mov("esi", OP.RW);
  a.xor("edx", "edx");
  a.mov("ecx", "r15d");
  a.call("tx_put");
  a.add("r14d", "r15d");
  a.jmp("c_write_l");
  a.label("c_write_done");
  a.mov("eax", "r14d");
  a.pop("r15");
  a.pop("r14");
  a.pop("r13");
  a.pop("r12");
  a.pop("rbx");
  a.ret();

  // c_line_str(rdi conn, rsi string): appends to the reply line (cut at its capacity).
  a.label("c_line_str");
  a.mov("ecx", at("rdi", C.LINE_LEN));
  a.label("c_line_str_l");
  a.mov("al", mem({ base: "rsi", size: 8 }));
  a.test("al", "al");
  a.je("c_line_str_d");
  a.cmp("ecx", C.LINE_MAX);
  a.jae("c_line_str_d");
  a.mov(mem({ base: "rdi", index: "rcx", disp: C.LINE, size: 8 }), "al");
  a.inc("ecx");
  a.inc("rsi");
  a.jmp("c_line_str_l");
  a.label("c_line_str_d");
  a.mov(at("rdi", C.LINE_LEN), "ecx");
  a.mov(g(G.PROGRESS), 1);
  a.ret();

  // c_line_num(rdi conn, rsi value): appends the decimal value (the line has room for it:
  // callers add a number only to short lines).
  a.label("c_line_num");
  a.push("rbx");
  a.mov("rbx", "rdi");
  a.mov("eax", c(C.LINE_LEN));
  a.lea("rdi", mem({ base: "rbx", index: "rax", disp: C.LINE }));
  a.mov("edx", 10);
  a.call("u_utoa");
  a.add(c(C.LINE_LEN), "eax");
  a.pop("rbx");
  a.ret();

  // c_close(rdi conn or 0): SHUTDOWN (after the reply line) when open, RST when connecting.
  a.label("c_close");
  a.test("rdi", "rdi");
  a.jz("c_close_ret");
  a.mov(g(G.PROGRESS), 1);
  a.cmp(at("rdi", C.STATE), CS.OPEN);
  a.jne("c_close_2");
  a.or(at("rdi", C.PENDING), CP.SHUTDOWN);
  a.ret();
  a.label("c_close_2");
  a.cmp(at("rdi", C.STATE), CS.CONNECTING);
  a.jne("c_close_ret");
  a.or(at("rdi", C.PENDING), CP.RST);
  a.label("c_close_ret");
  a.ret();

  // c_ctl(rdi conn, esi op, edx flags) → eax 1 when the control packet went out.
  a.label("c_ctl");
  a.push("rdi");
  a.push("rsi");
  a.push("rdx");
  a.call("tx_get");
  a.pop("rdx");
  a.pop("rsi");
  a.pop("rdi");
  a.test("rax", "rax");
  a.jz("c_ctl_ret");
  a.xor("ecx", "ecx");
  a.call("tx_put");
  a.mov("eax", 1);
  a.label("c_ctl_ret");
  a.ret();

  // c_flush(rbx conn): its queued control packets and reply line, in protocol order.
  const ctl = (op: number, flags = 0) => {
    a.mov("rdi", "rbx");
    a.mov("esi", op);
    a.mov("edx", flags);
    a.call("c_ctl");
    a.test("eax", "eax");
    a.jz("c_flush_ret");
  };
  a.label("c_flush");
  a.test(c(C.PENDING), CP.REQUEST);
  a.jz("c_flush_1");
  ctl(OP.REQUEST);
  a.and(c(C.PENDING), ~CP.REQUEST);
  a.label("c_flush_1");
  a.test(c(C.PENDING), CP.RESPONSE);
  a.jz("c_flush_2");
  ctl(OP.RESPONSE);
  a.and(c(C.PENDING), ~CP.RESPONSE);
  a.label("c_flush_2");
  a.cmp(c(C.STATE), CS.OPEN);
  a.jne("c_flush_4");
  a.mov("eax", c(C.LINE_OFF));
  a.cmp("eax", c(C.LINE_LEN));
  a.jae("c_flush_3");
  a.mov("rdi", "rbx");
  a.lea("rsi", mem({ base: "rbx", index: "rax", disp: C.LINE }));
  a.mov("edx", c(C.LINE_LEN));
  a.sub("edx", "eax");
  a.call("c_write");
  a.add(c(C.LINE_OFF), "eax");
  a.mov("eax", c(C.LINE_OFF));
  a.cmp("eax", c(C.LINE_LEN));
  a.jb("c_flush_3");
  a.mov(c(C.LINE_LEN), 0);
  a.mov(c(C.LINE_OFF), 0);
  a.label("c_flush_3");
  a.test(c(C.PENDING), CP.CREDIT);
  a.jz("c_flush_sd");
  ctl(OP.CREDIT_UPDATE); // tx_put clears the flag
  a.label("c_flush_sd");
  a.test(c(C.PENDING), CP.SHUTDOWN);
  a.jz("c_flush_4");
  a.cmp(c(C.LINE_LEN), 0);
  a.jne("c_flush_4");
  ctl(OP.SHUTDOWN, CF.PEER_RCV | CF.PEER_SEND); // same bits: RCV 1, SEND 2
  a.and(c(C.PENDING), ~CP.SHUTDOWN);
  a.mov(c(C.STATE), CS.CLOSING);
  a.label("c_flush_4");
  a.test(c(C.PENDING), CP.RST);
  a.jz("c_flush_ret");
  ctl(OP.RST);
  a.mov(c(C.PENDING), 0);
  a.mov(c(C.STATE), CS.DEAD);
  a.label("c_flush_ret");
  a.ret();

  // c_transport_reset: the device dropped every connection (§5.10.6.4).
  a.label("c_transport_reset");
  a.mov("eax", TABLES.CONNS);
  a.mov("ecx", SIZES.CONNS);
  a.label("c_treset_l");
  a.cmp(at("rax", C.STATE), CS.FREE);
  a.je("c_treset_n");
  a.mov(at("rax", C.STATE), CS.DEAD);
  a.or(at("rax", C.FLAGS), CF.RESET);
  a.mov(at("rax", C.PENDING), 0);
  a.label("c_treset_n");
  a.add("rax", SIZES.CONN);
  a.dec("ecx");
  a.jnz("c_treset_l");
  a.ret();

  // run_conns: each request connection's handler (r_step, rbx = connection).
  // flush_conns: c_flush on each live connection. sweep: frees DEAD slots nobody refers to.
  const each = (name: string, body: () => void) => {
    a.label(name);
    a.push("rbx");
    a.push("r12");
    a.mov("ebx", TABLES.CONNS);
    a.mov("r12d", SIZES.CONNS);
    a.label(`${name}_l`);
    body();
    a.label(`${name}_n`);
    a.add("rbx", SIZES.CONN);
    a.dec("r12d");
    a.jnz(`${name}_l`);
    a.pop("r12");
    a.pop("rbx");
    a.ret();
  };
  each("run_conns", () => {
    a.cmp(c(C.STATE), CS.FREE);
    a.je("run_conns_n");
    a.cmp(c(C.ROLE), ROLE.REQUEST);
    a.jne("run_conns_n");
    a.call("r_step");
  });
  each("flush_conns", () => {
    a.cmp(c(C.STATE), CS.FREE);
    a.je("flush_conns_n");
    a.cmp(c(C.STATE), CS.DEAD);
    a.je("flush_conns_n");
    a.call("c_flush");
  });
  each("sweep", () => {
    a.cmp(c(C.STATE), CS.DEAD);
    a.jne("sweep_n");
    a.cmp(c(C.ROLE), ROLE.NONE);
    a.jne("sweep_n");
    a.cmp(c(C.PROC, 64), 0);
    a.jne("sweep_n");
    a.mov(c(C.STATE), CS.FREE);
  });
}
