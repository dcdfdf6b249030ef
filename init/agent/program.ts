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
  childExec,
  defaultRoute,
  E,
  exit,
  fail,
  type Fragment,
  hostname,
  interfaceAddress,
  jump,
  KMSG,
  label,
  log,
  loopbackUp,
  NET,
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
  type Val,
  type VarRef,
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
  EXEC,
  HOST_CID,
  IO_BUFFER_SIZE,
  KILL,
  KILL_FLAGS,
  KIND,
  LIMITS,
  MAX_BOOT_RECORD,
  MIN_PAYLOAD,
  MOUNT,
  MOUNT_OP,
  NO_ID,
  READ_FILE,
  REQ_HDR,
  REQUEST_MAGIC,
  SETUP,
  SETUP_FLAGS,
  SIGNAL_FRAME_SIZE,
  WRITE_FILE,
  WRITE_FLAGS,
} from "./protocol.ts";

/** Options of {@link agentProgram}. */
export interface AgentOptions {
  /** Test variant that runs as a normal process (see the module doc). */
  native?: {
    /** Directory of the sockets: `agent.sock` and `port-<P>.sock`. */
    dir: string;
    /** Prefix of the pseudo file system mount points (default `<dir>/root`). */
    fsRoot?: string;
  };
  /** Where the boot record is read (VM only; default {@link AGENT_BOOT_PATH}). */
  bootRecordPath?: string;
}

/** Which process runs the code: decides what the error handler does. */
const ROLE = { BOOT: 0, HANDLER: 1, COMMAND: 2 } as const;

/** How often a waiting mount or interface lookup retries (ms). */
const RETRY_MS = 20;

/** errno values the agent names that `init/ir` does not (include/uapi/asm-generic/errno*.h). */
const EX = { EISDIR: 21 } as const;

/** S_IFMT bits (include/uapi/linux/stat.h) and `struct stat` offsets on x86-64. */
const STAT = { SIZE: 144, MODE: 24, ST_SIZE: 48, IFMT: 0o170000, IFREG: 0o100000, IFDIR: 0o040000 };

/** Global variables of the agent (prefixed so they never meet the shared fragments' own). */
const A = {
  role: v("ag_role"),
  conn: v("ag_conn"),
  /** A run-time string the error line appends to the step (a path), or 0. */
  stepArg: v("ag_step_arg"),
  /** 1 once a reply's header went out: later failures must not write an error line into data. */
  replied: v("ag_replied"),
  console: v("ag_console"),
  lfd: v("ag_lfd"),
  cfd: v("ag_cfd"),
  pid: v("ag_pid"),
  r: v("ag_r"),
  t: v("ag_t"),
  kind: v("ag_kind"),
  len: v("ag_len"),
  req: buf("ag_req", LIMITS.MAX_PAYLOAD + 8),
  hdr: buf("ag_hdr", REQ_HDR.SIZE),
  io: buf("ag_io", IO_BUFFER_SIZE),
  line: buf("ag_line", 256),
  errLine: buf("ag_err_line", 2 * LIMITS.MAX_PATH + 1024),
  sigaction: buf("ag_sigaction", SIG.SIGACTION_SIZE),
  sigset: buf("ag_sigset", SIG.SIGSET_SIZE),
};

/** `dst = *(base + offset)` (u32 or u64). */
function load(dst: VarRef, base: Val, offset: number, size: 1 | 2 | 4 | 8 = 8): Fragment {
  return seq({ op: "load", dst, addr: base, offset, size });
}

/** Sets the disposition of signal `sig` (a number or a variable) to SIG_DFL or SIG_IGN. */
function sigDisposition(sig: Val, handler: number, step?: string): Fragment {
  return seq(
    { op: "store", addr: A.sigaction, offset: 0, size: 8, src: handler },
    { op: "store", addr: A.sigaction, offset: 8, size: 8, src: 0 },
    { op: "store", addr: A.sigaction, offset: 16, size: 8, src: 0 },
    { op: "store", addr: A.sigaction, offset: 24, size: 8, src: 0 },
    sys(SYS.rt_sigaction, [sig, A.sigaction, 0, SIG.SIGSET_SIZE], { step }),
  );
}

/** Writes the literal `text` on the control connection (unchecked: a gone host is not an error). */
function reply(text: string): Fragment {
  return seq({
    op: "call",
    routine: "write_all",
    args: [A.conn, str(text), new TextEncoder().encode(text).length],
  });
}

/** Writes `<prefix><n>\n` on the control connection. */
function replyNumber(prefix: string, n: Val): Fragment {
  const q = v("ag_reply_q");
  return seq(
    { op: "call", routine: "strcpy", args: [A.line, str(prefix)], dst: q },
    { op: "call", routine: "utoa", args: [q, n], dst: q },
    { op: "call", routine: "strcpy", args: [q, str("\n")], dst: q },
    { op: "arith", kind: "sub", dst: q, a: q, b: A.line },
    { op: "call", routine: "write_all", args: [A.conn, A.line, q] },
  );
}

/** The path of host port `port` for the native variant: `<dir>/port-<P>.sock` into `sa`. */
function unixAddress(sa: Val, dir: string, port: Val): Fragment {
  const q = v("ag_sun_q");
  const f = seq();
  for (let i = 0; i < SOCK.SOCKADDR_UN_SIZE - 6; i += 8) {
    f.push({ op: "store", addr: sa, offset: i, size: 8, src: 0 });
  }
  return f.push(
    { op: "store", addr: sa, offset: SOCK.SOCKADDR_UN_SIZE - 8, size: 8, src: 0 },
    { op: "store", addr: sa, offset: 0, size: 2, src: SOCK.AF_UNIX },
    { op: "arith", kind: "add", dst: q, a: sa, b: 2 },
    { op: "call", routine: "strcpy", args: [q, str(`${dir}/port-`)], dst: q },
    { op: "call", routine: "utoa", args: [q, port], dst: q },
    { op: "call", routine: "strcpy", args: [q, str(".sock")] },
  );
}

/** The static `sockaddr_un` of `path`. */
function unixSockaddr(path: string): Uint8Array {
  const p = new TextEncoder().encode(path);
  if (p.length > 107) {
    throw new Error(`socket path too long for sockaddr_un (${p.length} > 107): ${path}`);
  }
  const sa = new Uint8Array(SOCK.SOCKADDR_UN_SIZE);
  new DataView(sa.buffer).setUint16(0, SOCK.AF_UNIX, true);
  sa.set(p, 2);
  return sa;
}

/** The static `sockaddr_vm` for (cid, port) (include/uapi/linux/vm_sockets.h). */
function vsockSockaddr(cid: number, port: number): Uint8Array {
  const sa = new Uint8Array(SOCK.SOCKADDR_VM_SIZE);
  const d = new DataView(sa.buffer);
  d.setUint16(0, SOCK.AF_VSOCK, true);
  d.setUint32(4, port, true);
  d.setUint32(8, cid, true);
  return sa;
}

/**
 * Connects to host port `port` (a run-time value) into `fd`: AF_VSOCK to
 * (CID 2, port), or the native variant's unix socket. Checked as `step`.
 */
function connectHost(o: AgentOptions, fd: VarRef, port: Val, step: string): Fragment {
  if (o.native) {
    const sa = buf("ag_sun", SOCK.SOCKADDR_UN_SIZE);
    return seq(
      unixAddress(sa, o.native.dir, port),
      sys(SYS.socket, [SOCK.AF_UNIX, SOCK.SOCK_STREAM | SOCK.SOCK_CLOEXEC, 0], { step, dst: fd }),
      sys(SYS.connect, [fd, sa, SOCK.SOCKADDR_UN_SIZE], { step }),
    );
  }
  const sa = buf("ag_svm", SOCK.SOCKADDR_VM_SIZE);
  return seq(
    { op: "store", addr: sa, offset: 0, size: 8, src: SOCK.AF_VSOCK },
    { op: "store", addr: sa, offset: 8, size: 8, src: 0 },
    { op: "store", addr: sa, offset: 4, size: 4, src: port },
    { op: "store", addr: sa, offset: 8, size: 4, src: HOST_CID },
    sys(SYS.socket, [SOCK.AF_VSOCK, SOCK.SOCK_STREAM | SOCK.SOCK_CLOEXEC, 0], { step, dst: fd }),
    sys(SYS.connect, [fd, sa, SOCK.SOCKADDR_VM_SIZE], { step }),
  );
}

/** Jumps to `target` when the u64 at `*(base + offset)` is a pointer to an empty string (or 0). */
function ifEmptyString(ptr: Val, target: string): Fragment {
  const c = v("ag_c");
  return seq(
    branch("eq", ptr, 0, target),
    { op: "load", dst: c, addr: ptr, offset: 0, size: 1 },
    branch("eq", c, 0, target),
  );
}

/** chroot(root) + chdir("/") unless root is empty; steps name the root. */
function enterRoot(root: VarRef): Fragment {
  const skip = uniqueLabel("ag_noroot");
  return seq(
    ifEmptyString(root, skip),
    set(A.stepArg, root),
    sys(SYS.chroot, [root], { step: "chroot" }),
    sys(SYS.chdir, [str("/")], { step: "chdir" }),
    set(A.stepArg, 0),
    label(skip),
  );
}

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
    setup(),
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

/** SETUP: the mount entries in order, the host name, the network; then `ok`. */
function setup(): Fragment {
  const req = A.req;
  const p = v("ag_m_p");
  const i = v("ag_m_i");
  const n = v("ag_m_n");
  const src = v("ag_m_src");
  const tgt = v("ag_m_tgt");
  const fst = v("ag_m_type");
  const flags = v("ag_m_flags");
  const data = v("ag_m_data");
  const op = v("ag_m_op");
  const waitMs = v("ag_m_wait");
  const waited = v("ag_m_waited");
  const r = v("ag_m_r");
  const loop = uniqueLabel("ag_mounts");
  const done = uniqueLabel("ag_mountsdone");
  const again = uniqueLabel("ag_mountagain");
  const next = uniqueLabel("ag_mountnext");
  const failed = uniqueLabel("ag_mountfail");
  const retry = uniqueLabel("ag_mountretry");
  const f = seq(
    load(p, req, SETUP.MOUNTS),
    load(n, req, SETUP.NMOUNTS),
    set(i, 0),
    label(loop),
    branch("geu", i, n, done),
    load(src, p, MOUNT.SOURCE),
    load(tgt, p, MOUNT.TARGET),
    load(fst, p, MOUNT.FSTYPE),
    load(flags, p, MOUNT.FLAGS),
    load(data, p, MOUNT.DATA),
    load(op, p, MOUNT.OP, 4),
    load(waitMs, p, MOUNT.WAIT_MS, 4),
    set(A.stepArg, tgt),
    { op: "call", routine: "mkdir_p", args: [tgt], dst: r },
    checkNeg(r, "mkdir"),
    { op: "arith", kind: "and", dst: A.t, a: op, b: MOUNT_OP.MKDIR_ONLY },
    branch("ne", A.t, 0, next),
    set(waited, 0),
    label(again),
    sys(SYS.mount, [src, tgt, fst, flags, data], { dst: r }),
    branch("eq", r, 0, next),
    { op: "arith", kind: "and", dst: A.t, a: op, b: MOUNT_OP.WAIT },
    branch("eq", A.t, 0, failed),
    branch("geu", waited, waitMs, failed),
    branch("eq", r, -E.ENOENT, retry),
    branch("eq", r, -E.ENODEV, retry),
    branch("eq", r, -E.ENXIO, retry),
    jump(failed),
    label(retry),
    { op: "call", routine: "sleep_ms", args: [RETRY_MS] },
    { op: "arith", kind: "add", dst: waited, a: waited, b: RETRY_MS },
    jump(again),
    label(failed),
    { op: "arith", kind: "sub", dst: r, a: 0, b: r },
    fail("mount", r),
    label(next),
    set(A.stepArg, 0),
    { op: "arith", kind: "add", dst: p, a: p, b: MOUNT.SIZE },
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    jump(loop),
    label(done),
  );
  // ---- host name
  const noName = uniqueLabel("ag_nohostname");
  const sflags = v("ag_s_flags");
  f.push(
    load(sflags, req, SETUP.FLAGS),
    { op: "arith", kind: "and", dst: A.t, a: sflags, b: SETUP_FLAGS.HOSTNAME },
    branch("eq", A.t, 0, noName),
    load(v("ag_s_name"), req, SETUP.HOSTNAME),
    hostname(v("ag_s_name")),
    label(noName),
  );
  // ---- network: wait for the interface, address, netmask, up, default route
  const noNet = uniqueLabel("ag_nonet");
  const ifname = v("ag_n_if");
  const sock = v("ag_n_sock");
  const ifreq = buf("__ifreq", NET.IFREQ_SIZE);
  const ifAgain = uniqueLabel("ag_ifagain");
  const ifFound = uniqueLabel("ag_iffound");
  const ifFail = uniqueLabel("ag_iffail");
  const noRoute = uniqueLabel("ag_noroute");
  const gw = v("ag_n_gw");
  f.push(
    { op: "arith", kind: "and", dst: A.t, a: sflags, b: SETUP_FLAGS.NET },
    branch("eq", A.t, 0, noNet),
    load(ifname, req, SETUP.NET_IFNAME),
    load(waitMs, req, SETUP.NET_WAIT_MS, 4),
    set(A.stepArg, ifname),
    sys(SYS.socket, [NET.AF_INET, NET.SOCK_DGRAM | NET.SOCK_CLOEXEC, 0], {
      step: "socket",
      dst: sock,
    }),
    set(waited, 0),
    label(ifAgain),
  );
  for (let off = 0; off < NET.IFREQ_SIZE; off += 8) {
    f.push({ op: "store", addr: ifreq, offset: off, size: 8, src: 0 });
  }
  f.push(
    { op: "call", routine: "strcpy", args: [ifreq, ifname] },
    sys(SYS.ioctl, [sock, NET.SIOCGIFFLAGS, ifreq], { dst: r }),
    branch("eq", r, 0, ifFound),
    branch("ne", r, -E.ENODEV, ifFail),
    branch("geu", waited, waitMs, ifFail),
    { op: "call", routine: "sleep_ms", args: [RETRY_MS] },
    { op: "arith", kind: "add", dst: waited, a: waited, b: RETRY_MS },
    jump(ifAgain),
    label(ifFail),
    { op: "arith", kind: "sub", dst: r, a: 0, b: r },
    fail("find interface", r),
    label(ifFound),
    sys(SYS.close, [sock]),
    load(v("ag_n_addr"), req, SETUP.NET_ADDRESS, 4),
    load(v("ag_n_mask"), req, SETUP.NET_NETMASK, 4),
    interfaceAddress(ifname, v("ag_n_addr"), v("ag_n_mask")),
    set(A.stepArg, 0),
    load(gw, req, SETUP.NET_GATEWAY, 4),
    branch("eq", gw, 0, noRoute),
    defaultRoute(gw),
    label(noRoute),
    label(noNet),
    reply("ok\n"),
    exit(0),
  );
  return f;
}

/** EXEC: the supervisor (see the module doc). */
function execRequest(o: AgentOptions): Fragment {
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
    sys(SYS.setgroups, [0, 0], { step: "setgroups" }),
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

/** KILL: signal a pid (> 1) or its process group. */
function killRequest(): Fragment {
  const req = A.req;
  const pid = v("ag_k_pid");
  const sig = v("ag_k_sig");
  const target = v("ag_k_target");
  const ok = uniqueLabel("ag_killpid");
  const single = uniqueLabel("ag_killone");
  return seq(
    load(pid, req, KILL.PID, 4),
    load(sig, req, KILL.SIGNAL, 4),
    // Never 0 (own group), 1 (init), or a value that is negative as pid_t (-1: everything).
    branch("ltu", pid, 2, ok + ".bad"),
    branch("ltu", pid, 0x8000_0000, ok),
    label(ok + ".bad"),
    fail("kill", E.EINVAL),
    label(ok),
    set(target, pid),
    load(A.t, req, KILL.FLAGS),
    { op: "arith", kind: "and", dst: A.t, a: A.t, b: KILL_FLAGS.GROUP },
    branch("eq", A.t, 0, single),
    { op: "arith", kind: "sub", dst: target, a: 0, b: pid },
    label(single),
    sys(SYS.kill, [target, sig], { step: "kill" }),
    reply("ok\n"),
    exit(0),
  );
}

/** WRITE_FILE: create/truncate, owner, exact mode, then copy the connection into it until EOF. */
function writeFileRequest(): Fragment {
  const req = A.req;
  const root = v("ag_w_root");
  const path = v("ag_w_path");
  const mode = v("ag_w_mode");
  const uid = v("ag_w_uid");
  const gid = v("ag_w_gid");
  const fd = v("ag_w_fd");
  const n = v("ag_w_n");
  const total = v("ag_w_total");
  const noReplace = uniqueLabel("ag_noreplace");
  const noChown = uniqueLabel("ag_nochown");
  const loop = uniqueLabel("ag_wloop");
  const done = uniqueLabel("ag_wdone");
  const chown = uniqueLabel("ag_chown");
  return seq(
    load(root, req, WRITE_FILE.ROOT),
    enterRoot(root),
    load(path, req, WRITE_FILE.PATH),
    load(mode, req, WRITE_FILE.MODE, 4),
    { op: "arith", kind: "and", dst: mode, a: mode, b: 0o7777 },
    load(uid, req, WRITE_FILE.UID, 4),
    load(gid, req, WRITE_FILE.GID, 4),
    set(A.stepArg, path),
    load(A.t, req, WRITE_FILE.FLAGS, 4),
    { op: "arith", kind: "and", dst: A.t, a: A.t, b: WRITE_FLAGS.REPLACE },
    branch("eq", A.t, 0, noReplace),
    sys(SYS.unlink, [path], { step: "unlink", allow: [E.ENOENT] }),
    label(noReplace),
    sys(SYS.open, [path, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, mode], {
      step: "open",
      dst: fd,
    }),
    branch("ne", uid, NO_ID, chown),
    branch("eq", gid, NO_ID, noChown),
    label(chown),
    sys(SYS.fchown, [fd, uid, gid], { step: "chown" }),
    label(noChown),
    // After chown (which clears set-id bits) and regardless of the umask.
    sys(SYS.fchmod, [fd, mode], { step: "chmod" }),
    set(total, 0),
    label(loop),
    sys(SYS.read, [A.conn, A.io, IO_BUFFER_SIZE], { dst: n }),
    branch("eq", n, -E.EINTR, loop),
    branch("eq", n, 0, done),
    checkNeg(n, "receive"),
    { op: "call", routine: "write_all", args: [fd, A.io, n], dst: A.r },
    checkNeg(A.r, "write"),
    { op: "arith", kind: "add", dst: total, a: total, b: n },
    jump(loop),
    label(done),
    // close reports delayed write errors of some file systems (virtio-fs write-back, NFS).
    sys(SYS.close, [fd], { step: "close" }),
    set(A.stepArg, 0),
    replyNumber("ok ", total),
    exit(0),
  );
}

/**
 * READ_FILE: `ok N` (a regular file of N > 0 bytes; exactly N follow) or
 * `ok` (procfs and other files whose size is unknown: bytes until EOF), then
 * the bytes, then the agent closes. A read error after the header ends the
 * data early; with `ok N` the host sees the short count.
 */
function readFileRequest(): Fragment {
  const req = A.req;
  const root = v("ag_r_root");
  const path = v("ag_r_path");
  const fd = v("ag_r_fd");
  const n = v("ag_r_n");
  const left = v("ag_r_left");
  const want = v("ag_r_want");
  const fmt = v("ag_r_fmt");
  const stat = buf("ag_stat", STAT.SIZE);
  const notDir = uniqueLabel("ag_notdir");
  const unknown = uniqueLabel("ag_unknownsize");
  const headerSent = uniqueLabel("ag_rhdr");
  const loop = uniqueLabel("ag_rloop");
  const whole = uniqueLabel("ag_rwhole");
  const done = uniqueLabel("ag_rdone");
  return seq(
    load(root, req, READ_FILE.ROOT),
    enterRoot(root),
    load(path, req, READ_FILE.PATH),
    set(A.stepArg, path),
    sys(SYS.open, [path, O.RDONLY | O.CLOEXEC, 0], { step: "open", dst: fd }),
    sys(SYS.fstat, [fd, stat], { step: "stat" }),
    load(fmt, stat, STAT.MODE, 4),
    { op: "arith", kind: "and", dst: fmt, a: fmt, b: STAT.IFMT },
    branch("ne", fmt, STAT.IFDIR, notDir),
    fail("read", EX.EISDIR),
    label(notDir),
    set(A.stepArg, 0),
    set(left, -1),
    branch("ne", fmt, STAT.IFREG, unknown),
    load(left, stat, STAT.ST_SIZE),
    branch("eq", left, 0, unknown + ".zero"),
    replyNumber("ok ", left),
    jump(headerSent),
    label(unknown + ".zero"),
    set(left, -1),
    label(unknown),
    reply("ok\n"),
    label(headerSent),
    set(A.replied, 1),
    label(loop),
    set(want, IO_BUFFER_SIZE),
    branch("geu", left, IO_BUFFER_SIZE, whole),
    set(want, left),
    label(whole),
    branch("eq", want, 0, done),
    sys(SYS.read, [fd, A.io, want], { dst: n }),
    branch("eq", n, -E.EINTR, loop),
    branch("eq", n, 0, done),
    checkNeg(n, "read"),
    { op: "call", routine: "write_all", args: [A.conn, A.io, n], dst: A.r },
    checkNeg(A.r, "send"),
    { op: "arith", kind: "sub", dst: left, a: left, b: n },
    jump(loop),
    label(done),
    exit(0),
  );
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
