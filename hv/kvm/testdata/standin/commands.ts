/**
 * The stand-in's commands: EXEC starts one of these built-ins as a
 * "process" (a slot stepped every loop turn, `p_step`, r12 = the slot) with
 * its stdin, stdout and stderr as vsock connections it opened to the host
 * ports the request named (0 = /dev/null; stderr = stdout shares it). It
 * answers `pid N` once they are all accepted (`error connect stdout:
 * ECONNREFUSED` when the host refuses one), and `exit N` or `signal N` when
 * it ends, after closing its streams (SHUTDOWN: the host reads EOF).
 *
 * | argv                  | does                                                           |
 * | --------------------- | -------------------------------------------------------------- |
 * | `true`, `false`       | exit 0, exit 1                                                 |
 * | `exit N`              | exit N (0–255)                                                 |
 * | `echo ARGS…`          | ARGS joined by spaces and a newline on stdout                  |
 * | `echo-err ARGS…`      | the same on stderr                                             |
 * | `cat`                 | stdin to stdout until EOF, within the host's credit            |
 * | `lines P N`           | N rounds of `P out I` on stdout and `P err I` on stderr        |
 * | `wait-signal`         | nothing until a signal ends it                                 |
 * | `mode PATH`           | the file's mode bits in octal on stdout (exit 1: no such file) |
 * | anything else         | `skiff: CMD: command not found` on stderr, exit 127            |
 *
 * A signal (a frame on the control connection or KILL) ends the command with
 * `signal N`, except those whose default action is not to terminate
 * (SIGCHLD, SIGCONT, SIGURG, SIGWINCH, and the stop signals: nothing stops
 * here). Writing to a stream the host shut (or reset) ends it with SIGPIPE,
 * as for a real command.
 *
 * @module
 */

import { type Assembler, mem, rip } from "../../../../init/asm/mod.ts";
import { SIZES } from "./layout.ts";
import { at, C, CF, CS, F, G, g, HDR, OP, P, PROC_BUF, PS, TABLES } from "./structs.ts";
import type { StringPool } from "./strings.ts";
import { PH } from "./requests.ts";

/** Command kinds. */
const K = { CODE: 1, TEXT: 2, CAT: 3, LINES: 4, WAIT: 5 } as const;
/** Signals whose default action does not terminate (signal(7)): ignored here. */
const HARMLESS = [0, 17, 18, 19, 20, 21, 22, 23, 28];
const SIGPIPE = 13;

/** Emits `exec_start`, `p_alloc`, `p_by_pid`, `p_signal`, `p_step`, `run_procs` and helpers. */
export function emitCommands(a: Assembler, s: StringPool): void {
  const p = (off: number, size: 8 | 16 | 32 | 64 = 32) => at("r12", off, size);
  const str = (reg: "rsi" | "rdi" | "rdx" | "rcx", text: string) => a.lea(reg, rip(s.label(text)));

  // exec_start(rbx control connection, r12 relocated EXEC payload)
  a.label("exec_start");
  a.push("r13");
  a.push("r14");
  a.mov("rax", at("r12", 24, 64)); // argv
  a.test("rax", "rax");
  a.jz("exec_inval");
  a.mov("rax", at("rax", 0, 64));
  a.test("rax", "rax");
  a.jz("exec_inval");
  a.cmp(at("rax", 0, 8), 0);
  a.je("exec_inval");
  a.call("p_alloc");
  a.test("rax", "rax");
  a.jnz("exec_1");
  a.mov("rdi", "rbx");
  str("rsi", "error fork: EAGAIN\n");
  a.call("r_fail");
  a.jmp("exec_ret");
  a.label("exec_inval");
  a.mov("rdi", "rbx");
  str("rsi", "error request payload: EINVAL\n");
  a.call("r_fail");
  a.jmp("exec_ret");
  a.label("exec_1");
  a.mov("r13", "rax");
  a.mov("eax", g(G.NEXT_PID));
  a.mov(at("r13", P.PID), "eax");
  a.inc("eax");
  a.mov(g(G.NEXT_PID), "eax");
  a.mov(at("r13", P.CTL, 64), "rbx");
  a.mov(at("rbx", C.PROC, 64), "r13");
  a.mov(at("rbx", C.PHASE), PH.EXEC);
  a.mov("rax", at("r12", 24, 64));
  a.mov(at("r13", P.ARGV, 64), "rax");
  a.mov(at("r13", P.STATE), PS.CONNECTING);
  // stdin, stdout; stderr shares stdout's connection when the ports are equal.
  for (const [field, off] of [[P.IN, 72], [P.OUT, 76]] as const) {
    const skip = a.newLabel("stdio");
    a.mov("edi", at("r12", off));
    a.test("edi", "edi");
    a.jz(skip);
    a.mov("rsi", "r13");
    a.call("c_connect");
    a.test("rax", "rax");
    a.jz("exec_nomem");
    a.mov(at("r13", field, 64), "rax");
    a.label(skip);
  }
  a.mov("edi", at("r12", 80));
  a.test("edi", "edi");
  a.jz("exec_2");
  a.cmp("edi", at("r12", 76));
  a.jne("exec_err_own");
  a.mov("rax", at("r13", P.OUT, 64));
  a.mov(at("r13", P.ERR, 64), "rax");
  a.jmp("exec_2");
  a.label("exec_err_own");
  a.mov("rsi", "r13");
  a.call("c_connect");
  a.test("rax", "rax");
  a.jz("exec_nomem");
  a.mov(at("r13", P.ERR, 64), "rax");
  a.label("exec_2");
  a.mov("rdi", "r13");
  a.call("p_classify");
  a.jmp("exec_ret");
  a.label("exec_nomem");
  // No connection slot left: the command ends at once (its supervisor would fail the same way).
  a.mov(at("r13", P.SIGNAL), 9);
  a.label("exec_ret");
  a.mov(g(G.PROGRESS), 1);
  a.pop("r14");
  a.pop("r13");
  a.ret();

  // p_alloc → rax: a cleared process slot with its scratch buffer, or 0.
  a.label("p_alloc");
  a.mov("eax", TABLES.PROCS);
  a.xor("ecx", "ecx");
  a.label("p_alloc_l");
  a.cmp(at("rax", P.STATE), PS.FREE);
  a.je("p_alloc_got");
  a.add("rax", SIZES.PROC);
  a.inc("ecx");
  a.cmp("ecx", SIZES.PROCS);
  a.jb("p_alloc_l");
  a.xor("eax", "eax");
  a.ret();
  a.label("p_alloc_got");
  a.mov("r8", "rax");
  a.mov("rdi", "rax");
  a.mov("edx", "ecx");
  a.xor("eax", "eax");
  a.mov("ecx", SIZES.PROC / 8);
  a.cld();
  a.repStosq();
  a.imul("edx", "edx", PROC_BUF);
  a.add("edx", TABLES.PROC_BUFS);
  a.mov(at("r8", P.BUF, 64), "rdx");
  a.mov("rax", "r8");
  a.ret();

  // p_by_pid(edi pid) → rax: the live process, or 0.
  a.label("p_by_pid");
  a.mov("eax", TABLES.PROCS);
  a.mov("ecx", SIZES.PROCS);
  a.label("p_by_pid_l");
  a.cmp(at("rax", P.STATE), PS.FREE);
  a.je("p_by_pid_n");
  a.cmp(at("rax", P.PID), "edi");
  a.je("p_by_pid_ret");
  a.label("p_by_pid_n");
  a.add("rax", SIZES.PROC);
  a.dec("ecx");
  a.jnz("p_by_pid_l");
  a.xor("eax", "eax");
  a.label("p_by_pid_ret");
  a.ret();

  // p_signal(rdi process, esi signal): the first terminating signal is the one it dies of.
  a.label("p_signal");
  for (const sig of HARMLESS) {
    a.cmp("esi", sig);
    a.je("p_signal_ret");
  }
  a.cmp("esi", 64);
  a.ja("p_signal_ret");
  a.cmp(at("rdi", P.SIGNAL), 0);
  a.jne("p_signal_ret");
  a.mov(at("rdi", P.SIGNAL), "esi");
  a.mov(g(G.PROGRESS), 1);
  a.label("p_signal_ret");
  a.ret();

  // p_arg(rdi process, esi i) → rax: argv[i], or "" past the end.
  a.label("p_arg");
  a.mov("rax", at("rdi", P.ARGV, 64));
  a.label("p_arg_l");
  a.cmp(at("rax", 0, 64), 0);
  a.je("p_arg_none");
  a.test("esi", "esi");
  a.jz("p_arg_got");
  a.add("rax", 8);
  a.dec("esi");
  a.jmp("p_arg_l");
  a.label("p_arg_got");
  a.mov("rax", at("rax", 0, 64));
  a.ret();
  a.label("p_arg_none");
  a.lea("rax", rip(s.label("")));
  a.ret();

  // p_text_str(rdi process, rsi string), p_text_num(rdi process, rsi value, edx base):
  // append to the text in its scratch buffer (cut at its size).
  a.label("p_text_str");
  a.mov("ecx", at("rdi", P.TEXT_LEN));
  a.mov("r8", at("rdi", P.BUF, 64));
  a.label("p_text_str_l");
  a.mov("al", mem({ base: "rsi", size: 8 }));
  a.test("al", "al");
  a.je("p_text_str_d");
  a.cmp("ecx", PROC_BUF);
  a.jae("p_text_str_d");
  a.mov(mem({ base: "r8", index: "rcx", size: 8 }), "al");
  a.inc("ecx");
  a.inc("rsi");
  a.jmp("p_text_str_l");
  a.label("p_text_str_d");
  a.mov(at("rdi", P.TEXT_LEN), "ecx");
  a.mov(g(G.PROGRESS), 1);
  a.ret();
  a.label("p_text_num");
  a.push("rbx");
  a.mov("rbx", "rdi");
  a.mov("eax", at("rbx", P.TEXT_LEN));
  a.cmp("eax", PROC_BUF - 64);
  a.ja("p_text_num_ret");
  a.mov("rdi", at("rbx", P.BUF, 64));
  a.add("rdi", "rax");
  a.call("u_utoa");
  a.add(at("rbx", P.TEXT_LEN), "eax");
  a.label("p_text_num_ret");
  a.pop("rbx");
  a.ret();

  // p_classify(rdi process): what argv[0] is, and the state it starts with.
  const text = (t: string) => {
    a.mov("rdi", "r12");
    str("rsi", t);
    a.call("p_text_str");
  };
  const textArg = (i: number) => {
    a.mov("rdi", "r12");
    a.mov("esi", i);
    a.call("p_arg");
    a.mov("rdi", "r12");
    a.mov("rsi", "rax");
    a.call("p_text_str");
  };
  a.label("p_classify");
  a.push("r12");
  a.push("r13");
  a.push("r14");
  a.mov("r12", "rdi");
  a.mov("rax", p(P.ARGV, 64));
  a.mov("r13", at("rax", 0, 64));
  const names = [
    "true",
    "false",
    "exit",
    "echo",
    "echo-err",
    "cat",
    "lines",
    "wait-signal",
    "mode",
  ];
  for (const name of names) {
    a.mov("rdi", "r13");
    str("rsi", name);
    a.call("u_streq");
    a.test("eax", "eax");
    a.jnz(`pc_${name}`);
  }
  text("skiff: ");
  a.mov("rdi", "r12");
  a.mov("rsi", "r13");
  a.call("p_text_str");
  text(": command not found\n");
  a.mov("rax", p(P.ERR, 64));
  a.mov(p(P.TEXT_CONN, 64), "rax");
  a.mov(p(P.CODE), 127);
  a.mov(p(P.KIND), K.TEXT);
  a.jmp("pc_ret");
  a.label("pc_true");
  a.mov(p(P.CODE), 0);
  a.mov(p(P.KIND), K.CODE);
  a.jmp("pc_ret");
  a.label("pc_false");
  a.mov(p(P.CODE), 1);
  a.mov(p(P.KIND), K.CODE);
  a.jmp("pc_ret");
  a.label("pc_exit");
  a.mov("rdi", "r12");
  a.mov("esi", 1);
  a.call("p_arg");
  a.mov("rdi", "rax");
  a.call("u_atou");
  a.and("eax", 255);
  a.mov(p(P.CODE), "eax");
  a.mov(p(P.KIND), K.CODE);
  a.jmp("pc_ret");
  for (const [name, stream] of [["echo", P.OUT], ["echo-err", P.ERR]] as const) {
    a.label(`pc_${name}`);
    a.mov("r14d", 1);
    a.label(`pc_${name}_l`);
    a.mov("rax", p(P.ARGV, 64));
    a.cmp(mem({ base: "rax", index: "r14", scale: 8, size: 64 }), 0);
    a.je(`pc_${name}_d`);
    a.cmp("r14d", 1);
    a.je(`pc_${name}_1`);
    text(" ");
    a.label(`pc_${name}_1`);
    a.mov("rax", p(P.ARGV, 64));
    a.mov("rsi", mem({ base: "rax", index: "r14", scale: 8, size: 64 }));
    a.mov("rdi", "r12");
    a.call("p_text_str");
    a.inc("r14d");
    a.jmp(`pc_${name}_l`);
    a.label(`pc_${name}_d`);
    text("\n");
    a.mov("rax", p(stream, 64));
    a.mov(p(P.TEXT_CONN, 64), "rax");
    a.mov(p(P.CODE), 0);
    a.mov(p(P.KIND), K.TEXT);
    a.jmp("pc_ret");
  }
  a.label("pc_cat");
  a.mov(p(P.KIND), K.CAT);
  a.jmp("pc_ret");
  a.label("pc_lines");
  a.mov("rdi", "r12");
  a.mov("esi", 2);
  a.call("p_arg");
  a.mov("rdi", "rax");
  a.call("u_atou");
  a.mov(p(P.COUNT, 64), "rax");
  a.mov(p(P.KIND), K.LINES);
  a.jmp("pc_ret");
  a.label("pc_wait-signal");
  a.mov(p(P.KIND), K.WAIT);
  a.jmp("pc_ret");
  a.label("pc_mode");
  a.mov("rdi", "r12");
  a.mov("esi", 1);
  a.call("p_arg");
  a.mov("r14", "rax");
  a.mov("rdi", "rax");
  a.call("f_find");
  a.test("rax", "rax");
  a.jz("pc_mode_none");
  a.mov("esi", at("rax", F.MODE));
  a.mov("rdi", "r12");
  a.mov("edx", 8);
  a.call("p_text_num");
  text("\n");
  a.mov("rax", p(P.OUT, 64));
  a.mov(p(P.TEXT_CONN, 64), "rax");
  a.mov(p(P.CODE), 0);
  a.mov(p(P.KIND), K.TEXT);
  a.jmp("pc_ret");
  a.label("pc_mode_none");
  text("mode: ");
  a.mov("rdi", "r12");
  a.mov("rsi", "r14");
  a.call("p_text_str");
  text(": No such file or directory\n");
  a.mov("rax", p(P.ERR, 64));
  a.mov(p(P.TEXT_CONN, 64), "rax");
  a.mov(p(P.CODE), 1);
  a.mov(p(P.KIND), K.TEXT);
  a.label("pc_ret");
  a.pop("r14");
  a.pop("r13");
  a.pop("r12");
  a.ret();

  // p_release(r12): its streams closed (SHUTDOWN: EOF for the host), references dropped, slot freed.
  a.label("p_release");
  for (const field of [P.IN, P.OUT, P.ERR]) {
    const skip = a.newLabel("rel");
    a.mov("rdi", p(field, 64));
    a.test("rdi", "rdi");
    a.jz(skip);
    a.call("c_close");
    a.mov("rdi", p(field, 64));
    a.mov(at("rdi", C.PROC, 64), 0);
    a.label(skip);
  }
  a.mov("rdi", p(P.CTL, 64));
  a.mov(at("rdi", C.PROC, 64), 0);
  a.mov(p(P.STATE), PS.FREE);
  a.mov(g(G.PROGRESS), 1);
  a.ret();

  // p_end(r12, esi 1 exit / 2 signal, edx code): streams first, then the status line and the
  // control connection's close.
  a.label("p_end");
  a.push("rbx");
  a.push("r13");
  a.push("r14");
  a.mov("r13d", "esi");
  a.mov("r14d", "edx");
  for (const field of [P.IN, P.OUT, P.ERR]) {
    a.mov("rdi", p(field, 64));
    a.call("c_close");
  }
  a.mov("rbx", p(P.CTL, 64));
  a.cmp(at("rbx", C.STATE), CS.OPEN);
  a.jne("p_end_1");
  a.mov("rdi", "rbx");
  str("rsi", "exit ");
  a.cmp("r13d", 1);
  a.je("p_end_2");
  str("rsi", "signal ");
  a.label("p_end_2");
  a.call("c_line_str");
  a.mov("rdi", "rbx");
  a.mov("esi", "r14d");
  a.call("c_line_num");
  a.mov("rdi", "rbx");
  str("rsi", "\n");
  a.call("c_line_str");
  a.mov("rdi", "rbx");
  a.call("c_close");
  a.label("p_end_1");
  a.call("p_release");
  a.pop("r14");
  a.pop("r13");
  a.pop("rbx");
  a.ret();

  // p_text_flush(r12) → eax 1 written, 0 still pending, 2 broken pipe.
  a.label("p_text_flush");
  a.mov("rdi", p(P.TEXT_CONN, 64));
  a.test("rdi", "rdi");
  a.jz("p_tf_write");
  a.cmp(at("rdi", C.STATE), CS.OPEN);
  a.jne("p_tf_pipe");
  a.test(at("rdi", C.FLAGS), CF.PEER_RCV);
  a.jnz("p_tf_pipe");
  a.label("p_tf_write");
  a.mov("eax", p(P.TEXT_OFF));
  a.mov("edx", p(P.TEXT_LEN));
  a.sub("edx", "eax");
  a.jz("p_tf_done");
  a.mov("rsi", p(P.BUF, 64));
  a.add("rsi", "rax");
  a.call("c_write");
  a.add(p(P.TEXT_OFF), "eax");
  a.mov("eax", p(P.TEXT_OFF));
  a.cmp("eax", p(P.TEXT_LEN));
  a.jae("p_tf_done");
  a.xor("eax", "eax");
  a.ret();
  a.label("p_tf_done");
  a.mov(p(P.TEXT_OFF), 0);
  a.mov(p(P.TEXT_LEN), 0);
  a.mov("eax", 1);
  a.ret();
  a.label("p_tf_pipe");
  a.mov("eax", 2);
  a.ret();

  // p_step(r12 process)
  const end = (kind: 1 | 2, code: number | "code" | "signal") => {
    a.mov("esi", kind);
    if (code === "code") a.mov("edx", p(P.CODE));
    else if (code === "signal") a.mov("edx", p(P.SIGNAL));
    else a.mov("edx", code);
    a.call("p_end");
    a.jmp("p_step_ret");
  };
  a.label("p_step");
  a.push("rbx");
  a.push("r13");
  a.push("r14");
  a.push("r15");
  a.cmp(p(P.STATE), PS.CONNECTING);
  a.je("p_connecting");
  a.cmp(p(P.SIGNAL), 0);
  a.je("p_run");
  end(2, "signal");
  a.label("p_run");
  a.mov("eax", p(P.KIND));
  a.cmp("eax", K.CODE);
  a.je("p_k_code");
  a.cmp("eax", K.TEXT);
  a.je("p_k_text");
  a.cmp("eax", K.CAT);
  a.je("p_k_cat");
  a.cmp("eax", K.LINES);
  a.je("p_k_lines");
  a.label("p_step_ret");
  a.pop("r15");
  a.pop("r14");
  a.pop("r13");
  a.pop("rbx");
  a.ret();

  // Connecting its streams: `pid N` once the host accepted all of them.
  a.label("p_connecting");
  a.cmp(p(P.SIGNAL), 0);
  a.je("p_conn_1");
  end(2, "signal");
  a.label("p_conn_1");
  a.xor("r13d", "r13d"); // streams still connecting
  for (const [field, name] of [[P.IN, "stdin"], [P.OUT, "stdout"], [P.ERR, "stderr"]] as const) {
    const next = a.newLabel("conn");
    a.mov("rax", p(field, 64));
    a.test("rax", "rax");
    a.jz(next);
    a.cmp(at("rax", C.STATE), CS.CONNECTING);
    a.jne(`p_conn_${name}_1`);
    a.inc("r13d");
    a.label(`p_conn_${name}_1`);
    a.cmp(at("rax", C.STATE), CS.DEAD);
    a.jne(next);
    a.mov("rdi", p(P.CTL, 64));
    str("rsi", `error connect ${name}: ECONNREFUSED\n`);
    a.call("c_line_str");
    a.jmp("p_conn_fail");
    a.label(next);
  }
  a.test("r13d", "r13d");
  a.jnz("p_step_ret");
  a.mov(p(P.STATE), PS.RUNNING);
  a.mov("rdi", p(P.CTL, 64));
  str("rsi", "pid ");
  a.call("c_line_str");
  a.mov("rdi", p(P.CTL, 64));
  a.mov("esi", p(P.PID));
  a.call("c_line_num");
  a.mov("rdi", p(P.CTL, 64));
  str("rsi", "\n");
  a.call("c_line_str");
  a.jmp("p_step_ret");
  a.label("p_conn_fail");
  a.mov("rdi", p(P.CTL, 64));
  a.call("c_close");
  a.call("p_release");
  a.jmp("p_step_ret");

  a.label("p_k_code");
  end(1, "code");

  a.label("p_k_text");
  a.call("p_text_flush");
  a.cmp("eax", 1);
  a.jb("p_step_ret");
  a.je("p_k_text_done");
  end(2, SIGPIPE);
  a.label("p_k_text_done");
  end(1, "code");

  // cat: stdin's ring straight into stdout packets.
  a.label("p_k_cat");
  a.mov("rbx", p(P.IN, 64));
  a.test("rbx", "rbx");
  a.jz("p_cat_end");
  a.mov("rdi", "rbx");
  a.call("c_avail");
  a.test("eax", "eax");
  a.jnz("p_cat_data");
  a.test(at("rbx", C.FLAGS), CF.PEER_SEND | CF.RESET);
  a.jnz("p_cat_end");
  a.jmp("p_step_ret");
  a.label("p_cat_data");
  a.mov("r13d", "eax");
  a.mov("r14", p(P.OUT, 64));
  a.test("r14", "r14");
  a.jnz("p_cat_out");
  // stdout is /dev/null: consume.
  a.add(at("rbx", C.FWD_CNT), "r13d");
  a.or(at("rbx", C.PENDING), 4 /* CP.CREDIT */);
  a.mov(g(G.PROGRESS), 1);
  a.jmp("p_k_cat");
  a.label("p_cat_out");
  a.cmp(at("r14", C.STATE), CS.OPEN);
  a.jne("p_cat_pipe");
  a.test(at("r14", C.FLAGS), CF.PEER_RCV);
  a.jnz("p_cat_pipe");
  a.mov("rdi", "r14");
  a.call("c_room");
  a.test("eax", "eax");
  a.jz("p_step_ret");
  a.cmp("eax", "r13d");
  a.cmov("a", "eax", "r13d");
  a.mov("r13d", "eax");
  a.call("tx_get");
  a.mov("r15", "rax");
  a.mov("rdi", "rbx");
  a.lea("rsi", at("r15", HDR.SIZE));
  a.mov("edx", "r13d");
  a.call("c_read");
  a.mov("rdi", "r14");
  a.mov("esi", OP.RW);
  a.xor("edx", "edx");
  a.mov("ecx", "r13d");
  a.call("tx_put");
  a.jmp("p_k_cat");
  a.label("p_cat_pipe");
  end(2, SIGPIPE);
  a.label("p_cat_end");
  end(1, 0);

  // lines P N: one line per turn, so concurrent commands' output interleaves.
  a.label("p_k_lines");
  a.call("p_text_flush");
  a.cmp("eax", 1);
  a.jb("p_step_ret");
  a.je("p_lines_next");
  end(2, SIGPIPE);
  a.label("p_lines_next");
  a.mov("eax", p(P.STAGE));
  a.cmp("eax", 2);
  a.jne("p_lines_1");
  a.inc(p(P.I, 64));
  a.mov(p(P.STAGE), 0);
  a.xor("eax", "eax");
  a.label("p_lines_1");
  a.test("eax", "eax");
  a.jnz("p_lines_err");
  a.mov("rax", p(P.I, 64));
  a.cmp("rax", p(P.COUNT, 64));
  a.jb("p_lines_out");
  end(1, 0);
  for (const [stage, name, stream] of [[0, "out", P.OUT], [1, "err", P.ERR]] as const) {
    a.label(`p_lines_${name}`);
    textArg(1);
    text(` ${name} `);
    a.mov("rdi", "r12");
    a.mov("rsi", p(P.I, 64));
    a.mov("edx", 10);
    a.call("p_text_num");
    text("\n");
    a.mov("rax", p(stream, 64));
    a.mov(p(P.TEXT_CONN, 64), "rax");
    a.mov(p(P.STAGE), stage + 1);
    a.call("p_text_flush");
    a.jmp("p_step_ret");
  }

  // run_procs: p_step on each live process.
  a.label("run_procs");
  a.push("r12");
  a.push("r13");
  a.mov("r12d", TABLES.PROCS);
  a.mov("r13d", SIZES.PROCS);
  a.label("run_procs_l");
  a.cmp(p(P.STATE), PS.FREE);
  a.je("run_procs_n");
  a.call("p_step");
  a.label("run_procs_n");
  a.add("r12", SIZES.PROC);
  a.dec("r13d");
  a.jnz("run_procs_l");
  a.pop("r13");
  a.pop("r12");
  a.ret();
}
