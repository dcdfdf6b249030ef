/**
 * The stand-in's request handler (init/agent/AGENT.md): one state machine
 * per connection to port 1024, stepped every loop turn (`r_step`, rbx = the
 * connection). It reads the 16-byte header and the payload, checks them as
 * the agent does (magic, version, size, the payload's own size field, the
 * kind's minimum size, the relocation table) with the agent's error lines,
 * relocates the payload's pointers, and serves the request:
 *
 * - SETUP: `ok` (nothing to mount or configure here);
 * - EXEC: starts a built-in command (commands.ts); its status comes on this
 *   connection, and signal frames arriving here reach it; EOF here kills it;
 * - KILL: the signal to a running command by pid, `ok` or `error kill: ESRCH`;
 * - WRITE_FILE: the data until EOF into the file table, `ok N` (mode kept);
 * - READ_FILE: `ok N` (or `ok` for an empty file), the bytes, EOF;
 * - POWEROFF: `ok`, then the loop powers off through the ACPI sleep port.
 *
 * @module
 */

import { type Assembler, mem, rip } from "../../../../init/asm/mod.ts";
import { SIZES } from "./layout.ts";
import { at, C, CF, CS, F, G, g, P, PS } from "./structs.ts";
import { StringPool } from "./strings.ts";
import { KIND, MIN_PAYLOAD, REQUEST_MAGIC } from "../../../../init/agent/protocol.ts";
import { RECORD_MAGIC } from "../../../../init/codegen/mod.ts";

/** Request handler phases. */
export const PH = { HDR: 0, PAYLOAD: 1, EXEC: 2, WF_HEAP: 3, WF_DATA: 4, RF_DATA: 5, DONE: 6 };

/** Emits `r_step`, `r_fail`, `r_fail_path`, `r_relocate`. */
export function emitRequests(a: Assembler, s: StringPool): void {
  const c = (off: number, size: 8 | 16 | 32 | 64 = 32) => at("rbx", off, size);
  const line = (text: string) => {
    a.mov("rdi", "rbx");
    a.lea("rsi", rip(s.label(text)));
    a.call("c_line_str");
  };
  const close = (phase = PH.DONE) => {
    a.mov("rdi", "rbx");
    a.call("c_close");
    a.mov(c(C.PHASE), phase);
  };
  const fail = (text: string) => {
    a.mov("rdi", "rbx");
    a.lea("rsi", rip(s.label(text)));
    a.call("r_fail");
    a.jmp("r_ret");
  };
  /** "error STEP PATH: ERRNO" with the path in rdx. */
  const failPath = (step: string, errno: string) => {
    a.mov("rdi", "rbx");
    a.lea("rsi", rip(s.label(`error ${step} `)));
    a.lea("rcx", rip(s.label(`: ${errno}\n`)));
    a.call("r_fail_path");
    a.jmp("r_ret");
  };

  // r_fail(rdi conn, rsi line): the error line, close, done.
  a.label("r_fail");
  a.push("rdi");
  a.call("c_line_str");
  a.pop("rdi");
  a.call("c_close");
  a.mov(at("rdi", C.PHASE), PH.DONE);
  a.ret();
  // r_fail_path(rdi conn, rsi prefix, rdx path, rcx suffix)
  a.label("r_fail_path");
  a.push("rbx");
  a.push("r12");
  a.push("r13");
  a.mov("rbx", "rdi");
  a.mov("r12", "rdx");
  a.mov("r13", "rcx");
  a.call("c_line_str");
  a.mov("rdi", "rbx");
  a.mov("rsi", "r12");
  a.call("c_line_str");
  a.mov("rdi", "rbx");
  a.mov("rsi", "r13");
  a.call("r_fail");
  a.pop("r13");
  a.pop("r12");
  a.pop("rbx");
  a.ret();

  // r_relocate(rdi payload, esi size) → eax 1, or 0 for a bad table (init/RECORD.md: every
  // slot must lie inside the payload; a zero slot stays NULL).
  a.label("r_relocate");
  a.mov("ecx", at("rdi", 16));
  a.mov("edx", at("rdi", 20));
  a.lea("rax", mem({ base: "rdx", index: "rcx", scale: 4 }));
  a.cmp("rax", "rsi");
  a.ja("r_reloc_bad");
  a.test("ecx", "ecx");
  a.jz("r_reloc_ok");
  a.label("r_reloc_l");
  a.mov("r8d", mem({ base: "rdi", index: "rdx", size: 32 }));
  a.lea("r9", mem({ base: "r8", disp: 8 }));
  a.cmp("r9", "rsi");
  a.ja("r_reloc_bad");
  a.mov("r10", mem({ base: "rdi", index: "r8", size: 64 }));
  a.test("r10", "r10");
  a.jz("r_reloc_n");
  a.add("r10", "rdi");
  a.mov(mem({ base: "rdi", index: "r8", size: 64 }), "r10");
  a.label("r_reloc_n");
  a.add("edx", 4);
  a.dec("ecx");
  a.jnz("r_reloc_l");
  a.label("r_reloc_ok");
  a.mov("eax", 1);
  a.ret();
  a.label("r_reloc_bad");
  a.xor("eax", "eax");
  a.ret();

  // r_step(rbx conn)
  a.label("r_step");
  a.push("r12");
  a.push("r13");
  a.cmp(c(C.STATE), CS.DEAD);
  a.je("r_dead");
  a.cmp(c(C.STATE), CS.OPEN);
  a.jne("r_ret");
  a.mov("eax", c(C.PHASE));
  for (
    const [ph, l] of [
      [PH.HDR, "r_hdr"],
      [PH.PAYLOAD, "r_payload"],
      [PH.EXEC, "r_exec"],
      [PH.WF_HEAP, "r_wf_heap"],
      [PH.WF_DATA, "r_wf_data"],
      [PH.RF_DATA, "r_rf_data"],
    ] as const
  ) {
    a.cmp("eax", ph);
    a.je(l);
  }
  a.label("r_ret");
  a.pop("r13");
  a.pop("r12");
  a.ret();

  // The host reset the connection (or the device did): a command it started is killed,
  // a file it was writing keeps what arrived; the slot is freed once nothing refers to it.
  a.label("r_dead");
  a.mov("rdi", c(C.PROC, 64));
  a.test("rdi", "rdi");
  a.jz("r_dead_1");
  a.mov("esi", 9);
  a.call("p_signal");
  a.label("r_dead_1");
  a.cmp(g(G.HEAP_OWNER, 64), "rbx");
  a.jne("r_dead_2");
  a.mov("rdi", c(C.FILE, 64));
  a.call("f_release_heap");
  a.label("r_dead_2");
  a.mov(c(C.ROLE), 0);
  a.mov(g(G.PROGRESS), 1);
  a.jmp("r_ret");

  // Header: 16 bytes (or EOF: silently closed when nothing came at all).
  a.label("r_hdr");
  a.mov("rdi", "rbx");
  a.call("c_avail");
  a.cmp("eax", 16);
  a.jae("r_hdr_read");
  a.test(c(C.FLAGS), CF.PEER_SEND);
  a.jz("r_ret");
  a.test("eax", "eax");
  a.jnz("r_hdr_short");
  close();
  a.jmp("r_ret");
  a.label("r_hdr_short");
  fail("error request header: EPROTO\n");
  a.label("r_hdr_read");
  a.mov("rdi", "rbx");
  a.mov("rsi", c(C.REQBUF, 64));
  a.mov("edx", 16);
  a.call("c_read");
  a.mov("rsi", c(C.REQBUF, 64));
  a.cmp(at("rsi", 0), REQUEST_MAGIC);
  a.je("r_hdr_1");
  fail("error request magic: EPROTO\n");
  a.label("r_hdr_1");
  a.cmp(at("rsi", 4, 16), 1);
  a.je("r_hdr_2");
  fail("error request version: EPROTONOSUPPORT\n");
  a.label("r_hdr_2");
  a.mov("eax", at("rsi", 8));
  a.cmp("eax", SIZES.REQ_BUF - 16);
  a.jbe("r_hdr_3");
  fail("error request: E2BIG\n");
  a.label("r_hdr_3");
  a.mov(c(C.REQ_LEN), "eax");
  a.movzx("eax", at("rsi", 6, 16));
  a.mov(c(C.REQ_KIND), "eax");
  a.mov(c(C.PHASE), PH.PAYLOAD);

  // Payload: all of it, checked, relocated, then the kind.
  a.label("r_payload");
  a.mov("rdi", "rbx");
  a.call("c_avail");
  a.cmp("eax", c(C.REQ_LEN));
  a.jae("r_pl_read");
  a.test(c(C.FLAGS), CF.PEER_SEND);
  a.jz("r_ret");
  fail("error request payload: EPROTO\n");
  a.label("r_pl_read");
  a.mov("rdi", "rbx");
  a.mov("rsi", c(C.REQBUF, 64));
  a.add("rsi", 16);
  a.mov("edx", c(C.REQ_LEN));
  a.call("c_read");
  a.mov("r12", c(C.REQBUF, 64));
  a.add("r12", 16);
  a.mov("r13d", c(C.REQ_LEN));
  a.cmp("r13d", 24);
  a.jb("r_pl_inval");
  a.movabs("rax", RECORD_MAGIC);
  a.cmp(at("r12", 0, 64), "rax");
  a.jne("r_pl_inval");
  a.cmp(at("r12", 12), "r13d");
  a.jne("r_pl_inval");
  a.mov("eax", c(C.REQ_KIND));
  for (const [name, k] of Object.entries(KIND)) {
    const next = a.newLabel("kind");
    a.cmp("eax", k);
    a.jne(next);
    a.cmp("r13d", MIN_PAYLOAD[name as keyof typeof KIND]);
    a.jb("r_pl_inval");
    a.jmp("r_pl_ok");
    a.label(next);
  }
  fail("error request kind: EINVAL\n");
  a.label("r_pl_inval");
  fail("error request payload: EINVAL\n");
  a.label("r_pl_ok");
  a.mov("rdi", "r12");
  a.mov("esi", "r13d");
  a.call("r_relocate");
  a.test("eax", "eax");
  a.jnz("r_pl_reloc");
  fail("error relocate request: EINVAL\n");
  a.label("r_pl_reloc");
  a.mov("eax", c(C.REQ_KIND));
  a.cmp("eax", KIND.SETUP);
  a.je("r_setup");
  a.cmp("eax", KIND.EXEC);
  a.je("r_exec_start");
  a.cmp("eax", KIND.KILL);
  a.je("r_kill");
  a.cmp("eax", KIND.WRITE_FILE);
  a.je("r_wf_start");
  a.cmp("eax", KIND.READ_FILE);
  a.je("r_rf_start");
  // POWEROFF: answer, then the loop powers off once this turn's packets are out.
  line("ok\n");
  close();
  a.mov(g(G.POWEROFF), 1);
  a.jmp("r_ret");

  a.label("r_setup");
  line("ok\n");
  close();
  a.jmp("r_ret");

  a.label("r_kill");
  a.mov("edi", at("r12", 24));
  a.cmp("edi", 2);
  a.jb("r_kill_inval");
  a.cmp("edi", 0x7fffffff);
  a.ja("r_kill_inval");
  a.call("p_by_pid");
  a.test("rax", "rax");
  a.jnz("r_kill_ok");
  fail("error kill: ESRCH\n");
  a.label("r_kill_inval");
  fail("error kill: EINVAL\n");
  a.label("r_kill_ok");
  a.mov("rdi", "rax");
  a.mov("esi", at("r12", 28));
  a.call("p_signal");
  line("ok\n");
  close();
  a.jmp("r_ret");

  // EXEC: the command starts connecting its stdio (commands.ts); this connection then carries
  // its signal frames in, its status out. EOF here means the host dropped it: SIGKILL.
  a.label("r_exec_start");
  a.call("exec_start");
  a.jmp("r_ret");
  a.label("r_exec");
  a.mov("r12", c(C.PROC, 64));
  a.test("r12", "r12");
  a.jnz("r_exec_run");
  a.mov(c(C.PHASE), PH.DONE);
  a.jmp("r_ret");
  a.label("r_exec_run");
  // Signal frames and EOF count once the command runs (its supervisor reads this connection only
  // after `pid N`; a refused stream is answered first).
  a.cmp(at("r12", P.STATE), PS.RUNNING);
  a.jne("r_ret");
  a.label("r_exec_l");
  a.mov("rdi", "rbx");
  a.call("c_avail");
  a.cmp("eax", 8);
  a.jb("r_exec_eof");
  a.mov("rdi", "rbx");
  a.lea("rsi", g(G.NUMBUF));
  a.mov("edx", 8);
  a.call("c_read");
  a.mov("rdi", "r12");
  a.mov("esi", g(G.NUMBUF));
  a.call("p_signal");
  a.jmp("r_exec_l");
  a.label("r_exec_eof");
  a.test(c(C.FLAGS), CF.PEER_SEND);
  a.jz("r_ret");
  a.cmp(c(C.EOF_KILLED), 0);
  a.jne("r_ret");
  a.mov(c(C.EOF_KILLED), 1);
  a.mov("rdi", "r12");
  a.mov("esi", 9);
  a.call("p_signal");
  a.jmp("r_ret");

  // WRITE_FILE: find or make the entry, set its mode; then wait for the allocator's top.
  a.label("r_wf_start");
  a.mov("rdi", at("r12", 24, 64));
  a.test("rdi", "rdi");
  a.jz("r_pl_inval");
  a.call("u_strlen");
  a.cmp("rax", SIZES.FILE_PATH - 1);
  a.jb("r_wf_1");
  a.mov("rdx", at("r12", 24, 64));
  failPath("open", "ENAMETOOLONG");
  a.label("r_wf_1");
  a.mov("rdi", at("r12", 24, 64));
  a.call("f_find");
  a.test("rax", "rax");
  a.jnz("r_wf_2");
  a.mov("rdi", at("r12", 24, 64));
  a.call("f_create");
  a.test("rax", "rax");
  a.jnz("r_wf_2");
  a.mov("rdx", at("r12", 24, 64));
  failPath("open", "ENOSPC");
  a.label("r_wf_2");
  a.mov(c(C.FILE, 64), "rax");
  a.mov("ecx", at("r12", 40));
  a.and("ecx", 0o7777);
  a.mov(at("rax", F.MODE), "ecx");
  a.mov(c(C.PHASE), PH.WF_HEAP);
  a.label("r_wf_heap");
  a.mov("rax", g(G.HEAP_OWNER, 64));
  a.test("rax", "rax");
  a.jz("r_wf_take");
  a.cmp("rax", "rbx");
  a.jne("r_ret");
  a.label("r_wf_take");
  a.mov(g(G.HEAP_OWNER, 64), "rbx");
  a.mov("rsi", c(C.FILE, 64));
  // Truncate: the old bytes are reused when they end the allocator's used part.
  a.mov("rax", at("rsi", F.DATA, 64));
  a.test("rax", "rax");
  a.jz("r_wf_fresh");
  a.add("rax", at("rsi", F.CAP, 64));
  a.add("rax", 4095);
  a.and("rax", -4096);
  a.cmp("rax", g(G.HEAP_TOP, 64));
  a.jne("r_wf_fresh");
  a.mov("rax", at("rsi", F.DATA, 64));
  a.mov(g(G.HEAP_TOP, 64), "rax");
  a.label("r_wf_fresh");
  a.mov("rax", g(G.HEAP_TOP, 64));
  a.mov(at("rsi", F.DATA, 64), "rax");
  a.mov(at("rsi", F.SIZE, 64), 0);
  a.mov(at("rsi", F.CAP, 64), 0);
  a.mov(c(C.PHASE), PH.WF_DATA);
  a.mov(g(G.PROGRESS), 1);
  a.label("r_wf_data");
  a.mov("rdi", "rbx");
  a.call("c_avail");
  a.test("eax", "eax");
  a.jz("r_wf_eof");
  a.mov("r13d", "eax");
  a.mov("rax", c(C.FILE, 64));
  a.mov("rsi", at("rax", F.DATA, 64));
  a.add("rsi", at("rax", F.SIZE, 64));
  a.lea("rcx", mem({ base: "rsi", index: "r13" }));
  a.cmp("rcx", g(G.HEAP_END, 64));
  a.ja("r_wf_nospc");
  a.mov("rdi", "rbx");
  a.mov("edx", "r13d");
  a.call("c_read");
  a.mov("rax", c(C.FILE, 64));
  a.add(at("rax", F.SIZE, 64), "r13");
  a.jmp("r_wf_data");
  a.label("r_wf_eof");
  a.test(c(C.FLAGS), CF.PEER_SEND);
  a.jz("r_ret");
  a.mov("rdi", c(C.FILE, 64));
  a.call("f_release_heap");
  line("ok ");
  a.mov("rdi", "rbx");
  a.mov("rax", c(C.FILE, 64));
  a.mov("rsi", at("rax", F.SIZE, 64));
  a.call("c_line_num");
  line("\n");
  close();
  a.jmp("r_ret");
  a.label("r_wf_nospc");
  a.mov("rdi", c(C.FILE, 64));
  a.call("f_release_heap");
  a.mov("rdx", c(C.FILE, 64));
  a.add("rdx", F.PATH);
  failPath("write", "ENOSPC");

  // READ_FILE: `ok N` (`ok` when empty), then the bytes as the host's credit allows, then EOF.
  a.label("r_rf_start");
  a.mov("rdi", at("r12", 24, 64));
  a.test("rdi", "rdi");
  a.jz("r_pl_inval");
  a.call("f_find");
  a.test("rax", "rax");
  a.jnz("r_rf_1");
  a.mov("rdx", at("r12", 24, 64));
  failPath("open", "ENOENT");
  a.label("r_rf_1");
  a.mov(c(C.FILE, 64), "rax");
  a.mov(c(C.OFF, 64), 0);
  line("ok");
  a.mov("rax", c(C.FILE, 64));
  a.cmp(at("rax", F.SIZE, 64), 0);
  a.je("r_rf_2");
  line(" ");
  a.mov("rdi", "rbx");
  a.mov("rax", c(C.FILE, 64));
  a.mov("rsi", at("rax", F.SIZE, 64));
  a.call("c_line_num");
  a.label("r_rf_2");
  line("\n");
  a.mov(c(C.PHASE), PH.RF_DATA);
  a.jmp("r_ret");
  a.label("r_rf_data");
  a.cmp(c(C.LINE_LEN), 0); // the reply line goes first
  a.jne("r_ret");
  a.mov("rax", c(C.FILE, 64));
  a.mov("rdx", at("rax", F.SIZE, 64));
  a.sub("rdx", c(C.OFF, 64));
  a.jbe("r_rf_done");
  a.mov("rsi", at("rax", F.DATA, 64));
  a.add("rsi", c(C.OFF, 64));
  a.mov("rdi", "rbx");
  a.call("c_write");
  a.add(c(C.OFF, 64), "rax");
  a.jmp("r_ret");
  a.label("r_rf_done");
  close();
  a.jmp("r_ret");
}
