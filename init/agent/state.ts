/**
 * The agent program's shared pieces: its global variables and buffers (one
 * copy per process after fork), the role that decides what the error handler
 * does, and small IR helpers — replies, signal dispositions, sockets to the
 * host (AF_VSOCK, or AF_UNIX in the native variant), chroot.
 *
 * @module
 */

import {
  branch,
  buf,
  type Fragment,
  label,
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
import { HOST_CID, IO_BUFFER_SIZE, LIMITS, REQ_HDR } from "./protocol.ts";
/** Options of {@link agentProgram}. */
export interface AgentOptions {
  /** Test variant that runs as a normal process (see the module doc). */
  native?: {
    /** Directory of the sockets: `agent.sock` and `port-<P>.sock`. */
    dir: string;
    /** Prefix of the pseudo file system mount points (default `<dir>/root`). */
    fsRoot?: string;
  };
  /** Where the boot record is read (VM only; default `AGENT_BOOT_PATH`). */
  bootRecordPath?: string;
}

/** Which process runs the code: decides what the error handler does. */
export const ROLE = { BOOT: 0, HANDLER: 1, COMMAND: 2 } as const;

/**
 * How often a waiting mount or interface lookup retries (ms). Short: on a
 * cache hit the session's SETUP waits for the hot-plugged file-system device
 * this way, and every ms of the interval is on the way to the first command;
 * a failed attempt (an unknown virtio-fs tag, a missing interface) costs the
 * guest far less than the interval.
 */
export const RETRY_MS = 2;

/** errno values the agent names that `init/ir` does not (include/uapi/asm-generic/errno*.h). */
export const EX = { EISDIR: 21 } as const;

/** S_IFMT bits (include/uapi/linux/stat.h) and `struct stat` offsets on x86-64. */
export const STAT = {
  SIZE: 144,
  MODE: 24,
  ST_SIZE: 48,
  IFMT: 0o170000,
  IFREG: 0o100000,
  IFDIR: 0o040000,
};

/** Global variables of the agent (prefixed so they never meet the shared fragments' own). */
export const A = {
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
export function load(dst: VarRef, base: Val, offset: number, size: 1 | 2 | 4 | 8 = 8): Fragment {
  return seq({ op: "load", dst, addr: base, offset, size });
}

/** Sets the disposition of signal `sig` (a number or a variable) to SIG_DFL or SIG_IGN. */
export function sigDisposition(sig: Val, handler: number, step?: string): Fragment {
  return seq(
    { op: "store", addr: A.sigaction, offset: 0, size: 8, src: handler },
    { op: "store", addr: A.sigaction, offset: 8, size: 8, src: 0 },
    { op: "store", addr: A.sigaction, offset: 16, size: 8, src: 0 },
    { op: "store", addr: A.sigaction, offset: 24, size: 8, src: 0 },
    sys(SYS.rt_sigaction, [sig, A.sigaction, 0, SIG.SIGSET_SIZE], { step }),
  );
}

/** Writes the literal `text` on the control connection (unchecked: a gone host is not an error). */
export function reply(text: string): Fragment {
  return seq({
    op: "call",
    routine: "write_all",
    args: [A.conn, str(text), new TextEncoder().encode(text).length],
  });
}

/** Writes `<prefix><n>\n` on the control connection. */
export function replyNumber(prefix: string, n: Val): Fragment {
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
export function unixAddress(sa: Val, dir: string, port: Val): Fragment {
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
export function unixSockaddr(path: string): Uint8Array {
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
export function vsockSockaddr(cid: number, port: number): Uint8Array {
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
export function connectHost(o: AgentOptions, fd: VarRef, port: Val, step: string): Fragment {
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
export function ifEmptyString(ptr: Val, target: string): Fragment {
  const c = v("ag_c");
  return seq(
    branch("eq", ptr, 0, target),
    { op: "load", dst: c, addr: ptr, offset: 0, size: 1 },
    branch("eq", c, 0, target),
  );
}

/** chroot(root) + chdir("/") unless root is empty; steps name the root. */
export function enterRoot(root: VarRef): Fragment {
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
