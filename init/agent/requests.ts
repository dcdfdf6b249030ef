/**
 * The agent's SETUP, KILL, WRITE_FILE and READ_FILE requests as IR. Each runs
 * in a forked handler with the relocated payload at {@link A.req}; a failing
 * step is replied as `error STEP: ERRNO` by the program's error handler.
 *
 * @module
 */

import {
  branch,
  buf,
  checkNeg,
  defaultRoute,
  E,
  exit,
  fail,
  type Fragment,
  hostname,
  interfaceAddress,
  jump,
  label,
  NET,
  O,
  seq,
  set,
  setClock,
  SYS,
  sys,
  uniqueLabel,
  v,
  type Val,
  type VarRef,
} from "../ir/mod.ts";
import {
  IO_BUFFER_SIZE,
  KILL,
  KILL_FLAGS,
  MNT_DETACH,
  MOUNT,
  MOUNT_OP,
  NO_ID,
  READ_FILE,
  SETUP,
  SETUP_FILE,
  SETUP_FLAGS,
  WRITE_FILE,
  WRITE_FLAGS,
} from "./protocol.ts";
import { A, enterRoot, EX, load, reply, replyNumber, RETRY_MS, STAT } from "./state.ts";

/**
 * SETUP: the clock, the mount entries in order with the files written when
 * FILES_AT of them are done, the host name, the network; then `ok`.
 */
export function setup(o: { clock: boolean }): Fragment {
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
  const noClock = uniqueLabel("ag_noclock");
  const mountIt = uniqueLabel("ag_mountit");
  const filesAt = v("ag_m_filesat");
  const files = uniqueLabel("ag_setupfiles");
  const filesBack = uniqueLabel("ag_setupfilesback");
  const f = seq(
    // The clock first: a restored VM wakes with its capture's wall-clock time.
    // The native variant ignores it: CLOCK_REALTIME has no namespace, it is the host's.
    ...(o.clock
      ? [
        load(A.t, req, SETUP.FLAGS),
        { op: "arith", kind: "and", dst: A.t, a: A.t, b: SETUP_FLAGS.CLOCK } as const,
        branch("eq", A.t, 0, noClock),
        load(v("ag_s_sec"), req, SETUP.CLOCK_SEC),
        load(v("ag_s_nsec"), req, SETUP.CLOCK_NSEC),
        setClock(v("ag_s_sec"), v("ag_s_nsec")),
        label(noClock),
      ]
      : []),
    load(p, req, SETUP.MOUNTS),
    load(n, req, SETUP.NMOUNTS),
    load(filesAt, req, SETUP.FILES_AT),
    set(i, 0),
    label(loop),
    // The files, out of line (below), once: i counts up by one and reaches n.
    branch("ne", i, filesAt, filesBack + ".not"),
    jump(files),
    label(filesBack),
    label(filesBack + ".not"),
    branch("geu", i, n, done),
    load(src, p, MOUNT.SOURCE),
    load(tgt, p, MOUNT.TARGET),
    load(fst, p, MOUNT.FSTYPE),
    load(flags, p, MOUNT.FLAGS),
    load(data, p, MOUNT.DATA),
    load(op, p, MOUNT.OP, 4),
    load(waitMs, p, MOUNT.WAIT_MS, 4),
    set(A.stepArg, tgt),
    { op: "arith", kind: "and", dst: A.t, a: op, b: MOUNT_OP.UMOUNT },
    branch("eq", A.t, 0, mountIt),
    sys(SYS.umount2, [tgt, MNT_DETACH], { step: "umount", allow: [E.EINVAL, E.ENOENT] }),
    jump(next),
    label(mountIt),
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
    // virtio-fs: "tag not found" is EINVAL (fs/fuse/virtio_fs.c virtio_fs_get_tree).
    branch("eq", r, -E.EINVAL, retry),
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
    label(files),
    setupFiles(),
    jump(filesBack),
  );
  return f;
}

/**
 * SETUP's files (after FILES_AT mount entries, so into a root the mounts
 * assembled, or into an overlay's upper before the overlay is mounted):
 * chroot into their root, then each as WRITE_FILE writes one — unlink first
 * with REPLACE, create/truncate, the exact mode, the bytes, close (which
 * reports delayed write errors). The handler exits after SETUP, so its
 * chroot ends with it; a non-empty root therefore comes with FILES_AT at the
 * end (wire.ts checks it).
 */
function setupFiles(): Fragment {
  const req = A.req;
  const n = v("ag_f_n");
  const p = v("ag_f_p");
  const i = v("ag_f_i");
  const root = v("ag_f_root");
  const path = v("ag_f_path");
  const data = v("ag_f_data");
  const len = v("ag_f_len");
  const mode = v("ag_f_mode");
  const fd = v("ag_f_fd");
  const loop = uniqueLabel("ag_files");
  const done = uniqueLabel("ag_filesdone");
  return seq(
    load(n, req, SETUP.NFILES),
    branch("eq", n, 0, done),
    load(root, req, SETUP.FILES_ROOT),
    enterRoot(root),
    load(p, req, SETUP.FILES),
    set(i, 0),
    label(loop),
    branch("geu", i, n, done),
    load(path, p, SETUP_FILE.PATH),
    load(data, p, SETUP_FILE.DATA),
    load(len, p, SETUP_FILE.LENGTH),
    load(mode, p, SETUP_FILE.MODE, 4),
    { op: "arith", kind: "and", dst: mode, a: mode, b: 0o7777 },
    set(A.stepArg, path),
    openForWrite(path, mode, fd, p, SETUP_FILE.FLAGS),
    // Regardless of the umask.
    sys(SYS.fchmod, [fd, mode], { step: "chmod" }),
    { op: "call", routine: "write_all", args: [fd, data, len], dst: A.r },
    checkNeg(A.r, "write"),
    sys(SYS.close, [fd], { step: "close" }),
    set(A.stepArg, 0),
    { op: "arith", kind: "add", dst: p, a: p, b: SETUP_FILE.SIZE },
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    jump(loop),
    label(done),
  );
}

/**
 * Creates or truncates `path` for writing with `mode` into `fd`; with
 * WRITE_FLAGS.REPLACE in the u32 flags at `flagsAt` + `flagsOffset`, unlinks
 * it first (a new file, not a write through the old one's other links).
 * SETUP's files and WRITE_FILE share it.
 */
function openForWrite(
  path: VarRef,
  mode: VarRef,
  fd: VarRef,
  flagsAt: Val,
  flagsOffset: number,
): Fragment {
  const noReplace = uniqueLabel("ag_noreplace");
  return seq(
    load(A.t, flagsAt, flagsOffset, 4),
    { op: "arith", kind: "and", dst: A.t, a: A.t, b: WRITE_FLAGS.REPLACE },
    branch("eq", A.t, 0, noReplace),
    sys(SYS.unlink, [path], { step: "unlink", allow: [E.ENOENT] }),
    label(noReplace),
    sys(SYS.open, [path, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, mode], {
      step: "open",
      dst: fd,
    }),
  );
}

/** KILL: signal a pid (> 1) or its process group. */
export function killRequest(): Fragment {
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
export function writeFileRequest(): Fragment {
  const req = A.req;
  const root = v("ag_w_root");
  const path = v("ag_w_path");
  const mode = v("ag_w_mode");
  const uid = v("ag_w_uid");
  const gid = v("ag_w_gid");
  const fd = v("ag_w_fd");
  const n = v("ag_w_n");
  const total = v("ag_w_total");
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
    openForWrite(path, mode, fd, req, WRITE_FILE.FLAGS),
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
export function readFileRequest(): Fragment {
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
