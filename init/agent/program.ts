/**
 * The guest agent as IR: skiff's long-lived init. It boots (pseudo file
 * systems, kernel modules from its boot record, loopback), listens on vsock
 * port {@link AGENT_PORT}, writes {@link AGENT_READY_MARKER} to the console
 * and then serves requests (`AGENT.md`) for as long as the VM lives.
 *
 * Process structure: PID 1 only accepts and forks — it never reads from a
 * client, so no client can block it. Each connection is served by a forked
 * handler; an EXEC handler is the command's **supervisor**: it connects the
 * command's stdio to the host, forks the command, replies its pid, and waits
 * for it or for the host to drop the connection (then it kills the command's
 * process group). PID 1 ignores SIGCHLD, so the kernel reaps its children
 * and every orphan; supervisors restore SIGCHLD to default so they can wait.
 *
 * The {@link AgentOptions.native} variant runs as a normal process (tests):
 * AF_UNIX instead of AF_VSOCK — it listens on `<dir>/agent.sock` and reaches
 * host port P at `<dir>/port-<P>.sock` —, pseudo file systems under a
 * prefix, no modules, READY on stdout and boot errors on stderr. It refuses
 * to run unless it is PID 1 (of a PID namespace): POWEROFF's reboot(2) then
 * ends the namespace (kernel/pid_namespace.c `reboot_pid_ns`), never the host.
 *
 * @module
 */

import { ERR_NO, ERR_STEP, type Program } from "../codegen/mod.ts";
import {
  branch,
  buf,
  bytes,
  checkNeg,
  E,
  exit,
  fail,
  type Fragment,
  jump,
  KMSG,
  label,
  log,
  loopbackUp,
  O,
  REBOOT,
  seq,
  set,
  SIG,
  SOCK,
  str,
  SYS,
  sys,
  uniqueLabel,
  v,
} from "../ir/mod.ts";
import { earlyMounts, errorStatusLine, loadModuleList } from "../boot_program.ts";
import { REC } from "../record.ts";
import {
  AGENT_BOOT_ERROR_PREFIX,
  AGENT_BOOT_PATH,
  AGENT_PORT,
  AGENT_PROTOCOL_VERSION,
  AGENT_READY_MARKER,
  BOOT,
  KIND,
  LIMITS,
  MAX_BOOT_RECORD,
  MIN_PAYLOAD,
  REQ_HDR,
  REQUEST_MAGIC,
} from "./protocol.ts";
import {
  A,
  type AgentOptions,
  load,
  reply,
  ROLE,
  sigDisposition,
  unixSockaddr,
  vsockSockaddr,
} from "./state.ts";
import { execRequest } from "./exec_request.ts";
import { killRequest, readFileRequest, setup, writeFileRequest } from "./requests.ts";

export type { AgentOptions } from "./state.ts";

/** Boot: PID 1's setup up to (and including) the listening socket and READY. */
function boot(o: AgentOptions): Fragment {
  const f = seq(
    set(A.role, ROLE.BOOT),
    set(A.conn, -1),
    set(A.stepArg, 0),
    set(A.replied, 0),
  );
  if (o.native) {
    const pid1 = uniqueLabel("ag_pid1");
    f.push(
      set(A.console, 1),
      sys(SYS.getpid, [], { dst: A.t }),
      branch("eq", A.t, 1, pid1),
      fail("native agent runs only as PID 1 of a PID namespace (unshare --pid --fork)", E.EPERM),
      label(pid1),
      earlyMounts(o.native.fsRoot ?? `${o.native.dir}/root`),
    );
  } else {
    const rec = buf("ag_boot", MAX_BOOT_RECORD);
    const whole = uniqueLabel("ag_bootwhole");
    const bad = uniqueLabel("ag_bootbad");
    const ver = uniqueLabel("ag_bootver");
    const path = o.bootRecordPath ?? AGENT_BOOT_PATH;
    f.push(
      set(A.console, -1),
      earlyMounts(""),
      sys(SYS.open, [str("/dev/console"), O.WRONLY | O.NOCTTY | O.CLOEXEC, 0], { dst: A.console }),
      { op: "call", routine: "read_file", args: [str(path), rec, MAX_BOOT_RECORD], dst: A.r },
      checkNeg(A.r, `read ${path}`),
      load(A.t, rec, REC.SIZE, 4),
      branch("leu", A.t, A.r, whole),
      fail(`read ${path}`, E.EINVAL),
      label(whole),
      branch("ltu", A.t, BOOT.SIZE, bad),
      { op: "call", routine: "relocate", args: [rec], dst: A.r },
      checkNeg(A.r, `relocate ${path}`),
      load(A.t, rec, REC.VERSION, 4),
      branch("eq", A.t, AGENT_PROTOCOL_VERSION, ver),
      label(bad),
      fail(`read ${path}`, E.EINVAL),
      label(ver),
      load(A.t, rec, BOOT.MODULES),
      loadModuleList(A.t, A.stepArg),
    );
  }
  f.push(
    loopbackUp(),
    // The kernel reaps PID 1's children (and every orphan) itself.
    sigDisposition(SIG.CHLD, SIG.IGN, "ignore SIGCHLD"),
    // A write to a dropped connection returns EPIPE instead of killing the handler.
    sigDisposition(SIG.PIPE, SIG.IGN, "ignore SIGPIPE"),
  );
  if (o.native) {
    const path = `${o.native.dir}/agent.sock`;
    const sa = unixSockaddr(path);
    f.push(
      sys(SYS.unlink, [str(path)]),
      sys(SYS.socket, [SOCK.AF_UNIX, SOCK.SOCK_STREAM | SOCK.SOCK_CLOEXEC, 0], {
        step: "agent socket",
        dst: A.lfd,
      }),
      sys(SYS.bind, [A.lfd, bytes(sa), sa.length], { step: `bind ${path}` }),
    );
  } else {
    // bind/listen need only vsock.ko and the virtio transport, no device: the
    // qemu engine hot-plugs the vsock device after READY.
    const sa = vsockSockaddr(SOCK.VMADDR_CID_ANY, AGENT_PORT);
    f.push(
      sys(SYS.socket, [SOCK.AF_VSOCK, SOCK.SOCK_STREAM | SOCK.SOCK_CLOEXEC, 0], {
        step: "vsock socket",
        dst: A.lfd,
      }),
      sys(SYS.bind, [A.lfd, bytes(sa), sa.length], { step: `bind vsock port ${AGENT_PORT}` }),
    );
  }
  f.push(
    sys(SYS.listen, [A.lfd, 128], { step: "listen" }),
    log(A.console, `\n${AGENT_READY_MARKER}\n`),
  );
  return f;
}

/** PID 1's loop: accept, fork a handler, close its copy, again. Never blocks on a client. */
function acceptLoop(handler: string): Fragment {
  const loop = uniqueLabel("ag_accept");
  const backoff = uniqueLabel("ag_backoff");
  const forkFailed = uniqueLabel("ag_forkfail");
  return seq(
    label(loop),
    sys(SYS.accept4, [A.lfd, 0, 0, SOCK.SOCK_CLOEXEC], { dst: A.cfd }),
    branch("lt", A.cfd, 0, backoff),
    sys(SYS.fork, [], { dst: A.pid }),
    branch("eq", A.pid, 0, handler),
    branch("lt", A.pid, 0, forkFailed),
    sys(SYS.close, [A.cfd]),
    jump(loop),
    label(forkFailed),
    // The host sees the connection end without a reply.
    sys(SYS.close, [A.cfd]),
    // EMFILE, ENOMEM, EAGAIN…: back off instead of spinning, never exit.
    label(backoff),
    { op: "call", routine: "sleep_ms", args: [10] },
    jump(loop),
  );
}

/** A handler: read and check the request, relocate it, dispatch on its kind. */
function handler(o: AgentOptions, name: string): Fragment {
  const req = A.req;
  const labels = {
    SETUP: uniqueLabel("ag_setup"),
    EXEC: uniqueLabel("ag_exec"),
    KILL: uniqueLabel("ag_kill"),
    WRITE_FILE: uniqueLabel("ag_write"),
    READ_FILE: uniqueLabel("ag_read"),
    POWEROFF: uniqueLabel("ag_poweroff"),
  };
  const magicOk = uniqueLabel("ag_magic");
  const versionOk = uniqueLabel("ag_version");
  const fits = uniqueLabel("ag_fits");
  const bigEnough = uniqueLabel("ag_bigenough");
  const gotHeader = uniqueLabel("ag_gothdr");
  const gotPayload = uniqueLabel("ag_gotpayload");
  const sizeOk = uniqueLabel("ag_sizeok");
  const payloadVersionOk = uniqueLabel("ag_payloadver");
  const quiet = uniqueLabel("ag_quiet");
  const f = seq(
    label(name),
    set(A.role, ROLE.HANDLER),
    set(A.conn, A.cfd),
    sys(SYS.close, [A.lfd]),
    { op: "call", routine: "read_full", args: [A.conn, A.hdr, REQ_HDR.SIZE], dst: A.r },
    branch("eq", A.r, REQ_HDR.SIZE, gotHeader),
    // Nothing at all: a probe or a host that gave up; leave quietly.
    branch("eq", A.r, 0, quiet),
    fail("request header", E.EPROTO),
    label(gotHeader),
    load(A.t, A.hdr, REQ_HDR.MAGIC, 4),
    branch("eq", A.t, REQUEST_MAGIC, magicOk),
    fail("request magic", E.EPROTO),
    label(magicOk),
    load(A.t, A.hdr, REQ_HDR.VERSION, 2),
    branch("eq", A.t, AGENT_PROTOCOL_VERSION, versionOk),
    fail("request version", E.EPROTONOSUPPORT),
    label(versionOk),
    load(A.kind, A.hdr, REQ_HDR.KIND, 2),
    load(A.len, A.hdr, REQ_HDR.LENGTH, 4),
    branch("leu", A.len, LIMITS.MAX_PAYLOAD, fits),
    fail("request", E.E2BIG),
    label(fits),
    branch("geu", A.len, REC.RELOCS + 4, bigEnough),
    fail("request", E.EINVAL),
    label(bigEnough),
    { op: "call", routine: "read_full", args: [A.conn, req, A.len], dst: A.r },
    branch("eq", A.r, A.len, gotPayload),
    fail("request payload", E.EPROTO),
    label(gotPayload),
    load(A.t, req, REC.SIZE, 4),
    branch("eq", A.t, A.len, sizeOk),
    fail("request payload", E.EINVAL),
    label(sizeOk),
    load(A.t, req, REC.VERSION, 4),
    branch("eq", A.t, AGENT_PROTOCOL_VERSION, payloadVersionOk),
    fail("request version", E.EPROTONOSUPPORT),
    label(payloadVersionOk),
    { op: "call", routine: "relocate", args: [req], dst: A.r },
    checkNeg(A.r, "relocate request"),
  );
  for (const [kind, target] of Object.entries(labels) as [keyof typeof KIND, string][]) {
    const next = uniqueLabel("ag_kindnext");
    f.push(
      branch("ne", A.kind, KIND[kind], next),
      branch("geu", A.len, MIN_PAYLOAD[kind], target),
      fail("request payload", E.EINVAL),
      label(next),
    );
  }
  f.push(
    fail("request kind", E.EINVAL),
    label(labels.SETUP),
    setup({ clock: !o.native }),
    label(labels.EXEC),
    execRequest(o),
    label(labels.KILL),
    killRequest(),
    label(labels.WRITE_FILE),
    writeFileRequest(),
    label(labels.READ_FILE),
    readFileRequest(),
    label(labels.POWEROFF),
    sys(SYS.sync, []),
    reply("ok\n"),
    sys(SYS.shutdown, [A.conn, SOCK.SHUT_WR]),
    // In a PID namespace (the native variant) this ends the namespace's init instead.
    sys(SYS.reboot, [REBOOT.MAGIC1, REBOOT.MAGIC2, REBOOT.CMD_POWER_OFF, 0], { step: "power off" }),
    exit(0),
    // Nothing at all on the connection (a probe, or a host that gave up): leave quietly.
    label(quiet),
    exit(0),
  );
  return f;
}

/**
 * The error handler, by role: a handler replies `error STEP[ ARG]: ERRNO`
 * (unless a reply header went out) and exits 1; the command child writes
 * `skiff-agent: error …` on its stderr and exits 126; boot writes it to the
 * console and /dev/kmsg and powers off (native: stderr, exit 1).
 */
function onError(o: AgentOptions): Fragment {
  const line = A.errLine;
  const start = v("ag_e_start");
  const end = v("ag_e_end");
  const len = v("ag_e_len");
  const notHandler = uniqueLabel("ag_e_nothandler");
  const notCommand = uniqueLabel("ag_e_notcommand");
  const quiet = uniqueLabel("ag_e_quiet");
  // "<3>" (KERN_ERR) for /dev/kmsg; the rest is the line for everyone else.
  const prefix = "<3>" + AGENT_BOOT_ERROR_PREFIX.slice(0, -"error ".length);
  const f = seq(
    { op: "call", routine: "strcpy", args: [line, str(prefix)], dst: start },
    errorStatusLine(start, ERR_STEP, ERR_NO, end, A.stepArg),
    branch("ne", A.role, ROLE.HANDLER, notHandler),
    branch("ne", A.replied, 0, quiet),
    { op: "arith", kind: "sub", dst: len, a: end, b: start },
    { op: "call", routine: "write_all", args: [A.conn, start, len] },
    label(quiet),
    exit(1),
    label(notHandler),
    { op: "arith", kind: "add", dst: start, a: line, b: 3 },
    branch("ne", A.role, ROLE.COMMAND, notCommand),
    log(2, start),
    exit(126),
    label(notCommand),
  );
  if (o.native) {
    f.push(log(2, start), exit(1));
  } else {
    f.push(
      log(KMSG, line),
      log(A.console, start),
      sys(SYS.sync, []),
      sys(SYS.reboot, [REBOOT.MAGIC1, REBOOT.MAGIC2, REBOOT.CMD_POWER_OFF, 0]),
      exit(1),
    );
  }
  return f;
}

/** The whole agent program. */
export function agentProgram(o: AgentOptions = {}): Program {
  const handlerLabel = uniqueLabel("ag_handler");
  const body = seq(
    boot(o),
    acceptLoop(handlerLabel),
    handler(o, handlerLabel),
  );
  return { body, onError: onError(o) };
}
