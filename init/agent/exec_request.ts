/**
 * The agent's EXEC request: the handler becomes the command's supervisor —
 * it connects the command's stdio to the host ports, forks the command (own
 * session, default signals, chroot, cwd, ids, execvp), replies its pid, and
 * waits for the command or for the host to drop the control connection.
 *
 * @module
 */

import { ERR_NO } from "../codegen/mod.ts";
import {
  branch,
  buf,
  childExec,
  E,
  exit,
  fail,
  type Fragment,
  jump,
  label,
  O,
  seq,
  set,
  SIG,
  SOCK,
  str,
  SYS,
  sys,
  uniqueLabel,
  v,
  type VarRef,
} from "../ir/mod.ts";
import { EXEC, KILL_FLAGS, NO_ID, SIGNAL_FRAME_SIZE } from "./protocol.ts";
import {
  A,
  type AgentOptions,
  connectHost,
  enterRoot,
  load,
  replyNumber,
  ROLE,
  sigDisposition,
} from "./state.ts";

/** EXEC: the supervisor (see the module doc). */
export function execRequest(o: AgentOptions): Fragment {
  const req = A.req;
  const fds = { in: v("ag_x_in"), out: v("ag_x_out"), err: v("ag_x_err") };
  const port = v("ag_x_port");
  const pidfd = v("ag_x_pidfd");
  const child = uniqueLabel("ag_cmd");
  const openStd = (fd: VarRef, at: number, what: string): Fragment => {
    const nul = uniqueLabel("ag_null");
    const done = uniqueLabel("ag_stdopen");
    return seq(
      load(port, req, at, 4),
      branch("eq", port, 0, nul),
      connectHost(o, fd, port, `connect ${what}`),
      jump(done),
      label(nul),
      sys(SYS.open, [str("/dev/null"), O.RDWR | O.CLOEXEC, 0], { step: "open /dev/null", dst: fd }),
      label(done),
    );
  };
  const sameErr = uniqueLabel("ag_sameerr");
  const errOpen = uniqueLabel("ag_erropen");
  const errDone = uniqueLabel("ag_errdone");
  const shared = uniqueLabel("ag_errshared");
  return seq(
    openStd(fds.in, EXEC.STDIN, "stdin"),
    openStd(fds.out, EXEC.STDOUT, "stdout"),
    // stderr on stdout's port shares stdout's connection.
    load(port, req, EXEC.STDERR, 4),
    load(A.t, req, EXEC.STDOUT, 4),
    branch("eq", port, 0, errOpen),
    branch("eq", port, A.t, sameErr),
    label(errOpen),
    openStd(fds.err, EXEC.STDERR, "stderr"),
    jump(errDone),
    label(sameErr),
    set(fds.err, fds.out),
    label(errDone),
    // Restore SIGCHLD (ignored in PID 1, inherited) so the command can be waited for.
    sigDisposition(SIG.CHLD, SIG.DFL, "reset SIGCHLD"),
    sys(SYS.fork, [], { step: "fork", dst: A.pid }),
    branch("eq", A.pid, 0, child),
    // ---- supervisor: drop its copies so EOF reaches the host when the command ends
    sys(SYS.close, [fds.in]),
    sys(SYS.close, [fds.out]),
    branch("eq", fds.err, fds.out, shared),
    sys(SYS.close, [fds.err]),
    label(shared),
    supervise(pidfd),
    // ---- the command
    label(child),
    command(fds),
  );
}

/**
 * The supervisor's wait: reply the pid, then poll the control connection and
 * a pidfd of the command. A signal frame on the connection signals the
 * command (or its group); EOF or an error means the host dropped it: SIGKILL
 * to the process group. When the command ends: reap it, reply its status, exit.
 */
function supervise(pidfd: VarRef): Fragment {
  const pfd = buf("ag_pollfds", 2 * SOCK.POLLFD_SIZE);
  const frame = buf("ag_frame", SIGNAL_FRAME_SIZE);
  const status = buf("ag_wstatus", 8);
  const connPoll = v("ag_p_conn");
  const n = v("ag_p_n");
  const sig = v("ag_p_sig");
  const target = v("ag_p_target");
  const st = v("ag_p_st");
  const loop = uniqueLabel("ag_poll");
  const reap = uniqueLabel("ag_reap");
  const connEvent = uniqueLabel("ag_connevent");
  const dropped = uniqueLabel("ag_dropped");
  const pollFailed = uniqueLabel("ag_pollfail");
  const negPid = v("ag_p_negpid");
  const pidfdOk = uniqueLabel("ag_pidfdok");
  const signalled = uniqueLabel("ag_signalled");
  const single = uniqueLabel("ag_single");
  return seq(
    sys(SYS.pidfd_open, [A.pid, 0], { dst: pidfd }),
    branch("ge", pidfd, 0, pidfdOk),
    // Cannot watch it: do not leave it running unsupervised.
    sys(SYS.kill, [A.pid, SIG.KILL]),
    { op: "arith", kind: "sub", dst: A.t, a: 0, b: pidfd },
    fail("pidfd_open", A.t),
    label(pidfdOk),
    replyNumber("pid ", A.pid),
    set(A.replied, 1),
    set(connPoll, A.conn),
    label(loop),
    { op: "store", addr: pfd, offset: 0, size: 4, src: connPoll },
    { op: "store", addr: pfd, offset: 4, size: 4, src: SOCK.POLLIN },
    { op: "store", addr: pfd, offset: 8, size: 4, src: pidfd },
    { op: "store", addr: pfd, offset: 12, size: 4, src: SOCK.POLLIN },
    sys(SYS.poll, [pfd, 2, -1], { dst: n }),
    branch("eq", n, -E.EINTR, loop),
    branch("lt", n, 0, pollFailed),
    load(A.t, pfd, 14, 2),
    branch("ne", A.t, 0, reap),
    load(A.t, pfd, 6, 2),
    branch("ne", A.t, 0, connEvent),
    jump(loop),
    label(connEvent),
    { op: "call", routine: "read_full", args: [A.conn, frame, SIGNAL_FRAME_SIZE], dst: n },
    branch("ne", n, SIGNAL_FRAME_SIZE, dropped),
    load(sig, frame, 0, 4),
    load(A.t, frame, 4, 4),
    set(target, A.pid),
    { op: "arith", kind: "and", dst: A.t, a: A.t, b: KILL_FLAGS.GROUP },
    branch("eq", A.t, 0, single),
    { op: "arith", kind: "sub", dst: target, a: 0, b: A.pid },
    label(single),
    sys(SYS.kill, [target, sig]),
    jump(loop),
    label(dropped),
    // The host is gone: no orphans. The group may not exist yet (the command
    // not past setsid), so the pid too. Then wait for it without the connection.
    { op: "arith", kind: "sub", dst: negPid, a: 0, b: A.pid },
    sys(SYS.kill, [negPid, SIG.KILL]),
    sys(SYS.kill, [A.pid, SIG.KILL]),
    set(connPoll, -1),
    jump(loop),
    // poll itself failed (it should not): kill, then a blocking wait.
    label(pollFailed),
    { op: "arith", kind: "sub", dst: negPid, a: 0, b: A.pid },
    sys(SYS.kill, [negPid, SIG.KILL]),
    sys(SYS.kill, [A.pid, SIG.KILL]),
    label(reap),
    sys(SYS.wait4, [A.pid, status, 0, 0], { dst: n }),
    branch("eq", n, -E.EINTR, reap),
    load(st, status, 0, 4),
    // wait status (include/uapi/linux/wait.h semantics): low 7 bits = signal, bits 8–15 = exit code.
    { op: "arith", kind: "and", dst: sig, a: st, b: 0x7f },
    branch("ne", sig, 0, signalled),
    { op: "arith", kind: "shr", dst: st, a: st, b: 8 },
    { op: "arith", kind: "and", dst: st, a: st, b: 0xff },
    replyNumber("exit ", st),
    exit(0),
    label(signalled),
    replyNumber("signal ", sig),
    exit(0),
  );
}

/** The command child: session, signals, stdio, root, directory, ids, exec. */
function command(fds: { in: VarRef; out: VarRef; err: VarRef }): Fragment {
  const req = A.req;
  const root = v("ag_c_root");
  const cwd = v("ag_c_cwd");
  const id = v("ag_c_id");
  const s = v("ag_c_sig");
  const sigLoop = uniqueLabel("ag_sigs");
  const noGid = uniqueLabel("ag_nogid");
  const noUid = uniqueLabel("ag_nouid");
  const execFailed = uniqueLabel("ag_execfail");
  const f = seq(
    set(A.role, ROLE.COMMAND),
    // Its own session and process group: the supervisor kills the group; no controlling tty.
    sys(SYS.setsid, [], { step: "setsid" }),
    // Every disposition back to default (SIGCHLD and SIGPIPE were ignored,
    // and exec keeps "ignored"), and nothing blocked.
    set(s, 1),
    label(sigLoop),
    sigDisposition(s, SIG.DFL),
    { op: "arith", kind: "add", dst: s, a: s, b: 1 },
    branch("leu", s, SIG.MAX, sigLoop),
    { op: "store", addr: A.sigset, offset: 0, size: 8, src: 0 },
    sys(SYS.rt_sigprocmask, [SIG.SETMASK, A.sigset, 0, SIG.SIGSET_SIZE], { step: "sigprocmask" }),
    sys(SYS.dup2, [fds.in, 0], { step: "dup2 stdin" }),
    sys(SYS.dup2, [fds.out, 1], { step: "dup2 stdout" }),
    sys(SYS.dup2, [fds.err, 2], { step: "dup2 stderr" }),
    load(root, req, EXEC.ROOT),
    enterRoot(root),
    load(cwd, req, EXEC.CWD),
    set(A.stepArg, cwd),
    sys(SYS.chdir, [cwd], { step: "chdir" }),
    set(A.stepArg, 0),
    load(id, req, EXEC.GID, 4),
    branch("eq", id, NO_ID, noGid),
    load(v("ag_c_ngroups"), req, EXEC.NGROUPS),
    load(v("ag_c_groups"), req, EXEC.GROUPS),
    sys(SYS.setgroups, [v("ag_c_ngroups"), v("ag_c_groups")], { step: "setgroups" }),
    sys(SYS.setgid, [id], { step: "setgid" }),
    label(noGid),
    load(id, req, EXEC.UID, 4),
    branch("eq", id, NO_ID, noUid),
    sys(SYS.setuid, [id], { step: "setuid" }),
    label(noUid),
    load(v("ag_c_argv"), req, EXEC.ARGV),
    load(v("ag_c_envp"), req, EXEC.ENVP),
    load(v("ag_c_path"), req, EXEC.PATH),
    childExec(
      { argv: v("ag_c_argv"), envp: v("ag_c_envp"), path: v("ag_c_path") },
      execFailed,
      true,
    ),
    label(execFailed),
    fail("exec", ERR_NO),
  );
  return f;
}
