/**
 * The guest init's boot program (one-shot mode) as IR: pseudo-filesystems,
 * the command record, kernel modules, the root file system (virtio-fs, read
 * only, under a tmpfs overlay) and switch root, shares, host name, network,
 * then one command on the virtio-console ports the host names; its status
 * goes to the status port, then the guest powers off.
 *
 * Status line (one line on the status port, also logged to /dev/kmsg):
 * - `exit N` — the command exited with code N
 * - `signal N` — the command was killed by signal N
 * - `error <step>: <ERRNO_NAME>` — an init step failed (e.g. `error mount root: ENOENT`)
 *
 * The {@link BootOptions.native} variant runs as a normal process (tests, in
 * a private mount namespace): no modules, paths of the pseudo-filesystems and
 * /etc files under a prefix, ports are files in a directory, and it exits
 * instead of powering off.
 *
 * @module
 */

import { ERR_NO, ERR_STEP, type Program } from "./codegen/mod.ts";
import {
  branch,
  buf,
  bytes,
  checkNeg,
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
  loadModule,
  log,
  loopbackUp,
  mkdirP,
  mount,
  MS,
  O,
  openKmsg,
  powerOff,
  REBOOT,
  seq,
  set,
  spawn,
  str,
  switchRoot,
  SYS,
  sys,
  uniqueLabel,
  v,
  type Val,
  type VarRef,
  writeFile,
} from "./ir/mod.ts";
import { LINUX_ERRNO_NAMES } from "./errno_names.ts";
import { REC, REC_FLAGS, recordUser, SHARE } from "./record.ts";

/** Where the one-shot init reads its record inside the initramfs. */
export const RECORD_PATH = "/skiff/record";

/** Largest record the init reads (bytes). */
export const MAX_RECORD_SIZE = 1 << 20;

/** How long the init waits for a virtio-console port to appear (ms). */
export const PORT_WAIT_MS = 10000;
const PORT_POLL_MS = 20;

/** Options of {@link bootProgram}. */
export interface BootOptions {
  /** The record: read from a file at run time (default {@link RECORD_PATH}) or embedded. */
  record?: { path: string } | { bytes: Uint8Array };
  /** Test variant that runs as a normal process (see the module doc). */
  native?: {
    /** Prefix for the pseudo-filesystem mount points, /mnt and /etc. */
    fsRoot: string;
    /** Ports are the files `<portDir>/<name>`. */
    portDir: string;
  };
}

/** Loads a 4- or 8-byte field at `offset` from `base` into `dst`. */
function field(dst: VarRef, base: Val, offset: number, size: 4 | 8 = 8): Fragment {
  return seq({ op: "load", dst, addr: base, offset, size });
}

/** The errno name table: 16 bytes per errno, NUL-padded. */
function errnoTable(): Uint8Array {
  const t = new Uint8Array(16 * LINUX_ERRNO_NAMES.length);
  LINUX_ERRNO_NAMES.forEach((n, i) => {
    const b = new TextEncoder().encode(n);
    if (b.length > 15) throw new Error(`errno name ${n} does not fit the table`);
    t.set(b, 16 * i);
  });
  return t;
}

/**
 * Puts the path of the port named by the string at `name` into `out`,
 * waiting up to {@link PORT_WAIT_MS} for it; jumps to `failTarget` (or the
 * error handler) with ENOENT as `step` on timeout.
 */
export function findPort(
  name: Val,
  out: Val,
  step: string,
  o: BootOptions,
  failTarget?: string,
): Fragment {
  if (o.native) {
    const p = v("__port_p");
    return seq(
      { op: "call", routine: "strcpy", args: [out, str(`${o.native.portDir}/`)], dst: p },
      { op: "call", routine: "strcpy", args: [p, name] },
    );
  }
  const i = v("__port_i");
  const r = v("__port_r");
  const again = uniqueLabel("port");
  const wait = uniqueLabel("portwait");
  const found = uniqueLabel("portfound");
  return seq(
    set(i, 0),
    label(again),
    { op: "call", routine: "find_port", args: [name, out], dst: r },
    branch("eq", r, 0, found),
    { op: "arith", kind: "add", dst: i, a: i, b: 1 },
    branch("ltu", i, Math.ceil(PORT_WAIT_MS / PORT_POLL_MS), wait),
    fail(step, E.ENOENT, failTarget),
    label(wait),
    { op: "call", routine: "sleep_ms", args: [PORT_POLL_MS] },
    jump(again),
    label(found),
  );
}

/** Pseudo file systems every init mounts (path, type, flags, data), after /dev. */
const PSEUDO_MOUNTS: readonly [string, string, number, string | null][] = [
  ["/proc", "proc", MS.NOSUID | MS.NODEV | MS.NOEXEC, null],
  ["/sys", "sysfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, null],
  ["/dev/pts", "devpts", MS.NOSUID | MS.NOEXEC, "mode=0620,ptmxmode=0666"],
  ["/dev/shm", "tmpfs", MS.NOSUID | MS.NODEV, "mode=1777"],
  ["/tmp", "tmpfs", MS.NOSUID | MS.NODEV, "mode=1777"],
  ["/run", "tmpfs", MS.NOSUID | MS.NODEV, "mode=0755"],
];

/**
 * The first steps of every skiff init: devtmpfs on `<prefix>/dev`, /dev/kmsg
 * opened into {@link KMSG}, fds 0–2 taken, then /proc, /sys, /dev/pts,
 * /dev/shm, /tmp and /run (all under `prefix`, which the native test
 * variants set). A failing mount is a checked step (`mount /proc`, …).
 */
export function earlyMounts(prefix = ""): Fragment {
  const P = prefix;
  const fd = v("__early_fd");
  const body = seq(
    set(KMSG, -1),
    // /dev first: /dev/kmsg and /dev/null live there.
    mkdirP(`${P}/dev`),
    mount("devtmpfs", `${P}/dev`, "devtmpfs", MS.NOSUID, "mode=0755"),
    openKmsg(),
  );
  // The kernel gives init /dev/console as 0/1/2 when the initramfs has it; make
  // sure 0–2 are taken anyway so no later open lands there and a dup2 clobbers it.
  const again = uniqueLabel("fds");
  const done = uniqueLabel("fdsdone");
  body.push(
    label(again),
    sys(SYS.open, [str(`${P}/dev/null`), O.RDWR, 0], { dst: fd }),
    branch("lt", fd, 0, done),
    branch("lt", fd, 3, again),
    sys(SYS.close, [fd]),
    label(done),
  );
  for (const [path, type, flags, data] of PSEUDO_MOUNTS) {
    body.push(mkdirP(`${P}${path}`), mount(type, `${P}${path}`, type, flags, data));
  }
  return body;
}

/**
 * Loads the kernel modules named by the NULL-terminated array of paths at
 * `list`, in order (`finit_module`; an already loaded module is fine). With
 * `stepArg`, the module's path is stored there while it loads, so an error
 * handler that appends it names the module (steps `open module` and
 * `load module`); without, the steps are `open module (path)` and
 * `finit_module (path)`.
 */
export function loadModuleList(list: Val, stepArg?: VarRef): Fragment {
  const p = v("__mod_p");
  const path = v("__mod_path");
  const loop = uniqueLabel("mods");
  const done = uniqueLabel("modsdone");
  const fd = v("__mod_fd");
  const load = stepArg
    ? seq(
      set(stepArg, path),
      sys(SYS.open, [path, O.RDONLY | O.CLOEXEC, 0], { step: "open module", dst: fd }),
      sys(SYS.finit_module, [fd, str(""), 0], { step: "load module", allow: [E.EEXIST] }),
      sys(SYS.close, [fd]),
      set(stepArg, 0),
    )
    : loadModule(path);
  return seq(
    set(p, list),
    label(loop),
    field(path, p, 0),
    branch("eq", path, 0, done),
    load,
    { op: "arith", kind: "add", dst: p, a: p, b: 8 },
    jump(loop),
    label(done),
  );
}

/**
 * Writes `error <step>[ <arg>]: <ERRNO_NAME>` plus a newline at `at` (the
 * status line format `parseStatusLine` reads; an errno without a name is
 * `errno-N`); `end` receives the address of the terminating NUL. `arg` is a
 * run-time string pointer appended to the step when non-zero (a path).
 * Uses only routines, never checked system calls, so error handlers can use it.
 */
export function errorStatusLine(at: Val, step: Val, errno: Val, end: VarRef, arg?: Val): Fragment {
  const name = v("__esl_name");
  const c = v("__esl_c");
  const unnamed = uniqueLabel("unnamed");
  const named = uniqueLabel("named");
  const noArg = uniqueLabel("noarg");
  const f = seq(
    { op: "call", routine: "strcpy", args: [at, str("error ")], dst: end },
    { op: "call", routine: "strcpy", args: [end, step], dst: end },
  );
  if (arg !== undefined) {
    f.push(
      branch("eq", arg, 0, noArg),
      { op: "call", routine: "strcpy", args: [end, str(" ")], dst: end },
      { op: "call", routine: "strcpy", args: [end, arg], dst: end },
      label(noArg),
    );
  }
  f.push(
    { op: "call", routine: "strcpy", args: [end, str(": ")], dst: end },
    branch("geu", errno, LINUX_ERRNO_NAMES.length, unnamed),
    { op: "arith", kind: "mul", dst: name, a: errno, b: 16 },
    { op: "arith", kind: "add", dst: name, a: name, b: bytes(errnoTable()) },
    { op: "load", dst: c, addr: name, offset: 0, size: 1 },
    branch("eq", c, 0, unnamed),
    { op: "call", routine: "strcpy", args: [end, name], dst: end },
    jump(named),
    label(unnamed),
    { op: "call", routine: "strcpy", args: [end, str("errno-")], dst: end },
    { op: "call", routine: "utoa", args: [end, errno], dst: end },
    label(named),
    { op: "call", routine: "strcpy", args: [end, str("\n")], dst: end },
  );
  return f;
}

/** Builds the one-shot boot program. */
export function bootProgram(o: BootOptions = {}): Program {
  const P = o.native?.fsRoot ?? "";
  const rec = v("rec");
  const r = v("r");
  const tmp = v("tmp");
  const statusFd = v("status_fd");
  const inFd = v("stdin_fd");
  const outFd = v("stdout_fd");
  const errFd = v("stderr_fd");
  const recOk = v("rec_ok");
  const stepOverride = v("step_override");
  const portPath = buf("port_path", 512);
  const body = seq(
    set(statusFd, -1),
    set(recOk, 0),
    set(stepOverride, 0),
    earlyMounts(P),
  );

  // ---- the record
  if (o.record && "bytes" in o.record) {
    body.push(set(rec, bytes(o.record.bytes)));
  } else {
    const path = o.record?.path ?? RECORD_PATH;
    const fits = uniqueLabel("recfits");
    const whole = uniqueLabel("recwhole");
    body.push(
      set(rec, buf("record", MAX_RECORD_SIZE)),
      { op: "call", routine: "read_file", args: [str(path), rec, MAX_RECORD_SIZE], dst: r },
      checkNeg(r, "read record"),
      branch("ltu", r, MAX_RECORD_SIZE, fits),
      fail("read record", E.EFBIG),
      label(fits),
      // A file shorter than its size field is truncated.
      field(tmp, rec, REC.SIZE, 4),
      branch("leu", tmp, r, whole),
      fail("read record", E.EINVAL),
      label(whole),
    );
  }
  {
    const ok = uniqueLabel("recver");
    body.push(
      { op: "call", routine: "relocate", args: [rec], dst: r },
      checkNeg(r, "relocate record"),
      field(tmp, rec, REC.VERSION, 4),
      branch("eq", tmp, 1, ok),
      fail("record version", E.EINVAL),
      label(ok),
      set(recOk, 1),
    );
  }

  // ---- kernel modules, in the host's order
  if (!o.native) {
    const list = v("mod_list");
    body.push(field(list, rec, REC.MODULES), loadModuleList(list));
  }
  body.push(loopbackUp());

  // ---- the root: virtio-fs read-only + tmpfs upper through overlayfs, then switch root
  {
    const tag = v("root_tag");
    const noRoot = uniqueLabel("noroot");
    const M = `${P}/mnt`;
    body.push(
      field(tag, rec, REC.ROOT_TAG),
      branch("eq", tag, 0, noRoot),
      mkdirP(`${M}/lower`),
      mkdirP(`${M}/rw`),
      mkdirP(`${M}/root`),
      mount(tag, `${M}/lower`, "virtiofs", MS.RDONLY, null, "mount root"),
      mount("tmpfs", `${M}/rw`, "tmpfs", 0, "mode=0755", "mount root upper"),
      mkdirP(`${M}/rw/upper`),
      mkdirP(`${M}/rw/work`),
      mount(
        "overlay",
        `${M}/root`,
        "overlay",
        0,
        `lowerdir=${M}/lower,upperdir=${M}/rw/upper,workdir=${M}/rw/work`,
        "mount root overlay",
      ),
    );
    for (const path of ["/dev", "/proc", "/sys", "/run", "/tmp"]) {
      body.push(
        mkdirP(`${M}/root${path}`),
        mount(`${P}${path}`, `${M}/root${path}`, null, MS.MOVE, null, `move ${path}`),
      );
    }
    body.push(switchRoot(`${M}/root`), label(noRoot));
  }

  // ---- shares (after the switch, so mount points are made in the writable overlay)
  {
    const p = v("share_p");
    const i = v("share_i");
    const n = v("share_n");
    const sTag = v("share_tag");
    const sPath = v("share_path");
    const sFlags = v("share_flags");
    const sType = v("share_type");
    const loop = uniqueLabel("shares");
    const done = uniqueLabel("sharesdone");
    const bad = uniqueLabel("sharefail");
    const after = uniqueLabel("sharenext");
    const msg = buf("share_step", 1024);
    const q = v("share_q");
    body.push(
      field(p, rec, REC.SHARES),
      field(n, rec, REC.NSHARES),
      set(i, 0),
      label(loop),
      branch("geu", i, n, done),
      field(sTag, p, SHARE.TAG),
      field(sPath, p, SHARE.PATH),
      field(sFlags, p, SHARE.MOUNT_FLAGS),
      field(sType, p, SHARE.FSTYPE),
      { op: "call", routine: "mkdir_p", args: [sPath], dst: r },
      branch("ge", r, 0, after),
      { op: "arith", kind: "sub", dst: ERR_NO, a: 0, b: r },
      jump(bad),
      label(after),
      sys(SYS.mount, [sTag, sPath, sType, sFlags, 0], { step: "mount share", fail: bad }),
      { op: "arith", kind: "add", dst: p, a: p, b: SHARE.SIZE },
      { op: "arith", kind: "add", dst: i, a: i, b: 1 },
      jump(loop),
      // The step names the share: "mount share TAG at PATH".
      label(bad),
      { op: "call", routine: "strcpy", args: [msg, str("mount share ")], dst: q },
      { op: "call", routine: "strcpy", args: [q, sTag], dst: q },
      { op: "call", routine: "strcpy", args: [q, str(" at ")], dst: q },
      { op: "call", routine: "strcpy", args: [q, sPath], dst: q },
      set(stepOverride, msg),
      fail("mount share", ERR_NO),
      label(done),
    );
  }

  // ---- host name and network
  {
    const name = v("hostname");
    const noNet = uniqueLabel("nonet");
    const flags = v("rec_flags");
    const addr = v("net_addr");
    const mask = v("net_mask");
    const gw = v("net_gw");
    const ptr = v("net_ptr");
    const len = v("net_len");
    body.push(
      field(name, rec, REC.HOSTNAME),
      hostname(name),
      field(flags, rec, REC.FLAGS),
      { op: "arith", kind: "and", dst: flags, a: flags, b: REC_FLAGS.NET },
      branch("eq", flags, 0, noNet),
      field(addr, rec, REC.NET_ADDRESS, 4),
      field(mask, rec, REC.NET_NETMASK, 4),
      field(gw, rec, REC.NET_GATEWAY, 4),
      interfaceAddress("eth0", addr, mask),
      defaultRoute(gw),
      mkdirP(`${P}/etc`),
    );
    for (
      const [file, at, lenAt] of [["resolv.conf", REC.RESOLV, REC.RESOLV_LEN], [
        "hosts",
        REC.HOSTS,
        REC.HOSTS_LEN,
      ]] as const
    ) {
      // A symlink there (systemd-resolved's resolv.conf) would point into the host's /run.
      body.push(
        sys(SYS.unlink, [str(`${P}/etc/${file}`)]),
        field(ptr, rec, at),
        field(len, rec, lenAt),
        writeFile(`${P}/etc/${file}`, { ptr, len }),
      );
    }
    body.push(label(noNet));
  }

  // ---- the ports: status first, so later failures can be reported on it
  const openPort = (fd: VarRef, at: number, what: string, flags: number) => {
    const name = v(`port_name_${what}`);
    return seq(
      field(name, rec, at),
      findPort(name, portPath, `find port ${what}`, o),
      sys(SYS.open, [portPath, flags | O.CLOEXEC, 0], { step: `open port ${what}`, dst: fd }),
    );
  };
  {
    const same = uniqueLabel("sameport");
    const opened = uniqueLabel("portsopen");
    const a = v("port_name_stdout");
    const b = v("port_name_stderr");
    body.push(
      // From here on the error handler does not look for the status port again.
      set(recOk, 2),
      openPort(statusFd, REC.PORT_STATUS, "status", O.WRONLY),
      openPort(inFd, REC.PORT_STDIN, "stdin", O.RDONLY),
      openPort(outFd, REC.PORT_STDOUT, "stdout", O.WRONLY),
      // A port can be opened once (EBUSY after): stdout and stderr may share one.
      field(b, rec, REC.PORT_STDERR),
      { op: "call", routine: "streq", args: [a, b], dst: tmp },
      branch("ne", tmp, 0, same),
      openPort(errFd, REC.PORT_STDERR, "stderr", O.WRONLY),
      jump(opened),
      label(same),
      set(errFd, outFd),
      label(opened),
    );
  }

  // ---- the command
  {
    const status = v("cmd_status");
    const signal = v("cmd_signal");
    const argv = v("cmd_argv");
    const envp = v("cmd_envp");
    const cwd = v("cmd_cwd");
    const path = v("cmd_path");
    const line = buf("status_line", 64);
    const q = v("line_q");
    const start = v("line_start");
    const signaled = uniqueLabel("signaled");
    const write = uniqueLabel("writestatus");
    const who = recordUser(rec, "cmd");
    body.push(
      who.load,
      field(argv, rec, REC.ARGV),
      field(envp, rec, REC.ENVP),
      field(cwd, rec, REC.CWD),
      field(path, rec, REC.PATH),
      spawn({
        argv,
        envp,
        path,
        cwd,
        stdin: inFd,
        stdout: outFd,
        stderr: errFd,
        status,
        signal,
        user: who.user,
      }),
      // One write per /dev/kmsg record: "skiff-init: " + the status line.
      { op: "call", routine: "strcpy", args: [line, str("skiff-init: ")], dst: start },
      branch("ne", signal, 0, signaled),
      { op: "call", routine: "strcpy", args: [start, str("exit ")], dst: q },
      { op: "call", routine: "utoa", args: [q, status], dst: q },
      jump(write),
      label(signaled),
      { op: "call", routine: "strcpy", args: [start, str("signal ")], dst: q },
      { op: "call", routine: "utoa", args: [q, signal], dst: q },
      label(write),
      { op: "call", routine: "strcpy", args: [q, str("\n")] },
      log(statusFd, start),
      log(KMSG, line),
      sys(SYS.fsync, [statusFd]),
    );
  }
  if (o.native) body.push(exit(0));
  else body.push(powerOff());

  return { body, onError: errorHandler(o, { rec, recOk, statusFd, stepOverride, portPath }) };
}

/**
 * Writes `error <step>: <ERRNO>` to the status port (finding it first when it
 * is not open yet and the record was read) and to /dev/kmsg, then powers off.
 * Only unchecked calls here: a failure must not re-enter the handler.
 */
function errorHandler(
  o: BootOptions,
  vars: { rec: VarRef; recOk: VarRef; statusFd: VarRef; stepOverride: VarRef; portPath: Val },
): Fragment {
  const { rec, recOk, statusFd, stepOverride, portPath } = vars;
  const line = buf("error_line", 2048);
  const q = v("err_q");
  const start = v("err_start");
  const step = v("err_stepname");
  const haveStep = uniqueLabel("havestep");
  const noPort = uniqueLabel("noport");
  const write = uniqueLabel("errwrite");
  const portName = v("err_port_name");
  const f = seq(
    set(step, ERR_STEP),
    branch("eq", stepOverride, 0, haveStep),
    set(step, stepOverride),
    label(haveStep),
    // "<3>" makes the kernel log it as an error (shown on the console even with `quiet`).
    { op: "call", routine: "strcpy", args: [line, str("<3>skiff-init: ")], dst: start },
    errorStatusLine(start, step, ERR_NO, q),
    log(KMSG, line),
    { op: "arith", kind: "add", dst: q, a: line, b: 3 },
    log(2, q),
    branch("ge", statusFd, 0, write),
    // Look for the status port only when the record was read (it names the port)
    // and the main program had not already tried (recOk 2).
    branch("ne", recOk, 1, noPort),
    field(portName, rec, REC.PORT_STATUS),
    findPort(portName, portPath, "find port status", o, noPort),
    sys(SYS.open, [portPath, O.WRONLY | O.CLOEXEC, 0], { dst: statusFd }),
    branch("lt", statusFd, 0, noPort),
    label(write),
    log(statusFd, start),
    sys(SYS.fsync, [statusFd]),
    label(noPort),
  );
  if (o.native) f.push(exit(1));
  else {
    f.push(
      sys(SYS.sync, []),
      sys(SYS.reboot, [REBOOT.MAGIC1, REBOOT.MAGIC2, REBOOT.CMD_POWER_OFF, 0]),
      exit(1),
    );
  }
  return f;
}
