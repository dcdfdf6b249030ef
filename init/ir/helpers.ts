/**
 * IR helpers: each returns a {@link Fragment} doing one job of an init —
 * mounts, directories, files, modules, network interfaces, processes, logging,
 * power off. Failing system calls are checked and reported as a named step.
 *
 * String arguments are literals (interned) or run-time values ({@link Val}).
 *
 * @module
 */

import {
  buf,
  bytes as dataBytes,
  type Cmp,
  type Fragment,
  type Op,
  seq,
  str,
  type StrArg,
  strv,
  sval,
  uniqueLabel,
  v,
  type Val,
  type VarRef,
} from "./ir.ts";
import { E, MS, NET, O, REBOOT, SYS } from "./linux.ts";

/** Options of {@link sys}. */
export interface SysOptions {
  /** Step name for the error report; without it the result is not checked. */
  step?: string;
  /** errnos that count as success. */
  allow?: number[];
  /** Where the result goes. */
  dst?: VarRef;
  /** Failure label instead of the program's error handler. */
  fail?: string;
}

/** A raw system call. */
export function sys(nr: number, args: Val[], o: SysOptions = {}): Op {
  return { op: "syscall", nr, args, step: o.step, allow: o.allow, dst: o.dst, fail: o.fail };
}

/** A label. */
export function label(name: string): Op {
  return { op: "label", name };
}
/** `dst = src`. */
export function set(dst: VarRef, src: Val): Op {
  return { op: "set", dst, src };
}
/** Unconditional jump. */
export function jump(target: string): Op {
  return { op: "jump", target };
}
/** Conditional jump: `if (a cond b) goto target`. */
export function branch(cond: Cmp, a: Val, b: Val, target: string): Op {
  return { op: "branch", cond, a, b, target };
}
/** Reports a failure of `step` with errno value `errno` (positive). */
export function fail(step: string, errno: Val, target?: string): Op {
  return { op: "fail", step, errno, target };
}
/** Ends the program with exit status `value`. */
export function exit(value: Val): Op {
  return { op: "exit", value };
}

/** `mount(source, target, fstype, flags, data)`, checked. */
export function mount(
  source: StrArg,
  target: StrArg,
  fstype: StrArg | null,
  flags = 0,
  data: StrArg | null = null,
  step?: string,
): Fragment {
  const name = step ?? `mount ${typeof target === "string" ? target : "(path)"}`;
  return seq(
    sys(SYS.mount, [
      sval(source),
      sval(target),
      fstype === null ? 0 : sval(fstype),
      flags,
      data === null ? 0 : sval(data),
    ], {
      step: name,
    }),
  );
}

/** `mkdir(path, mode)`, checked; an existing directory is fine. */
export function mkdir(path: StrArg, mode = 0o755): Fragment {
  return seq(
    sys(SYS.mkdir, [sval(path), mode], { step: `mkdir ${show(path)}`, allow: [E.EEXIST] }),
  );
}

/** `mkdir -p path`: a literal path is split at build time; a run-time path uses the runtime routine. */
export function mkdirP(path: StrArg, mode = 0o755): Fragment {
  if (typeof path === "string") {
    const parts = path.split("/").filter((p) => p !== "");
    const f = seq();
    let cur = path.startsWith("/") ? "" : ".";
    for (const p of parts) {
      cur = `${cur}/${p}`;
      f.push(mkdir(cur, mode));
    }
    return f;
  }
  const r = v("__mkdir_p");
  return seq(
    { op: "call", routine: "mkdir_p", args: [path], dst: r },
    checkNeg(r, "mkdir -p (path)"),
  );
}

/** Jumps to the error path with `-r` when the routine result `r` is negative. */
export function checkNeg(r: VarRef, step: string, target?: string): Fragment {
  const ok = uniqueLabel("ok");
  const neg = v("__neg");
  return seq(
    { op: "branch", cond: "ge", a: r, b: 0, target: ok },
    { op: "arith", kind: "sub", dst: neg, a: 0, b: r },
    fail(step, neg, target),
    label(ok),
  );
}

/** `chdir(path)`, checked. */
export function chdir(path: StrArg): Fragment {
  return seq(sys(SYS.chdir, [sval(path)], { step: `chdir ${show(path)}` }));
}

/** `chroot(path)`, checked. */
export function chroot(path: StrArg): Fragment {
  return seq(sys(SYS.chroot, [sval(path)], { step: `chroot ${show(path)}` }));
}

/**
 * switch_root: make the mount at `newRoot` the root (as busybox switch_root:
 * chdir, move the mount onto "/", chroot "."); the initramfs stays in memory.
 */
export function switchRoot(newRoot: string): Fragment {
  return seq(
    chdir(newRoot),
    mount(".", "/", null, MS.MOVE, null, `move ${newRoot} to /`),
    chroot("."),
    chdir("/"),
  );
}

/** `symlink(target, linkPath)`, checked. */
export function symlink(target: StrArg, linkPath: StrArg): Fragment {
  return seq(
    sys(SYS.symlink, [sval(target), sval(linkPath)], { step: `symlink ${show(linkPath)}` }),
  );
}

/** Writes a file (created or truncated) from static bytes or a run-time pointer and length. */
export function writeFile(
  path: StrArg,
  content: Uint8Array | string | { ptr: Val; len: Val },
  mode = 0o644,
): Fragment {
  const fd = v("__wf_fd");
  let ptr: Val;
  let len: Val;
  if (typeof content === "string" || content instanceof Uint8Array) {
    const b = typeof content === "string" ? new TextEncoder().encode(content) : content;
    ptr = dataBytes(b);
    len = b.length;
  } else ({ ptr, len } = content);
  const name = show(path);
  return seq(
    sys(SYS.open, [sval(path), O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, mode], {
      step: `create ${name}`,
      dst: fd,
    }),
    sys(SYS.write, [fd, ptr, len], { step: `write ${name}` }),
    sys(SYS.close, [fd]),
  );
}

/** Loads a kernel module file with `finit_module`; an already loaded (or built-in) module is fine. */
export function loadModule(path: StrArg): Fragment {
  const fd = v("__mod_fd");
  const name = show(path);
  return seq(
    sys(SYS.open, [sval(path), O.RDONLY | O.CLOEXEC, 0], { step: `open module ${name}`, dst: fd }),
    sys(SYS.finit_module, [fd, str(""), 0], { step: `finit_module ${name}`, allow: [E.EEXIST] }),
    sys(SYS.close, [fd]),
  );
}

/**
 * Fills the `struct ifreq` scratch buffer with interface `name`: a literal
 * (checked here: 1–15 bytes) or a run-time string pointer (the caller keeps
 * it within IFNAMSIZ - 1 bytes).
 */
function ifreq(name: string | Val): Fragment {
  const req = buf("__ifreq", NET.IFREQ_SIZE);
  const f = seq();
  for (let i = 0; i < NET.IFREQ_SIZE; i += 8) {
    f.push({ op: "store", addr: req, offset: i, size: 8, src: 0 });
  }
  if (typeof name !== "string") {
    return f.push({ op: "call", routine: "strcpy", args: [req, name] });
  }
  const b = new TextEncoder().encode(name);
  if (b.length === 0 || b.length > 15) throw new Error(`bad interface name '${name}'`);
  b.forEach((c, i) => f.push({ op: "store", addr: req, offset: i, size: 1, src: c }));
  return f;
}

/** " NAME" for a literal interface name, "" for a run-time one (steps name it elsewhere). */
function ifSuffix(name: string | Val): string {
  return typeof name === "string" ? ` ${name}` : "";
}

function inetSocket(): Fragment {
  return seq(
    sys(SYS.socket, [NET.AF_INET, NET.SOCK_DGRAM | NET.SOCK_CLOEXEC, 0], {
      step: "socket",
      dst: v("__sock"),
    }),
  );
}

/**
 * Sets IFF_UP | IFF_RUNNING on interface `name` (SIOCGIFFLAGS / SIOCSIFFLAGS).
 * A run-time name leaves it out of the step names.
 */
export function interfaceUp(name: string | Val): Fragment {
  const req = buf("__ifreq", NET.IFREQ_SIZE);
  const sock = v("__sock");
  const flags = v("__ifflags");
  return seq(
    inetSocket(),
    ifreq(name),
    sys(SYS.ioctl, [sock, NET.SIOCGIFFLAGS, req], { step: `get flags of${ifSuffix(name)}` }),
    { op: "load", dst: flags, addr: req, offset: 16, size: 2 },
    { op: "arith", kind: "or", dst: flags, a: flags, b: NET.IFF_UP | NET.IFF_RUNNING },
    { op: "store", addr: req, offset: 16, size: 2, src: flags },
    sys(SYS.ioctl, [sock, NET.SIOCSIFFLAGS, req], { step: `bring up${ifSuffix(name)}` }),
    sys(SYS.close, [sock]),
  );
}

/** Brings up the loopback interface. */
export function loopbackUp(): Fragment {
  return interfaceUp("lo");
}

/** An IPv4 address `a.b.c.d` as the u32 in network byte order read little-endian. */
export function ipv4(addr: string): number {
  const p = addr.split(".").map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) {
    throw new Error(`bad IPv4 address '${addr}'`);
  }
  return (p[0] | (p[1] << 8) | (p[2] << 16) | (p[3] << 24)) >>> 0;
}

function sockaddrIn(addr: Val, at: Val, offset: number): Op[] {
  return [
    { op: "store", addr: at, offset, size: 8, src: NET.AF_INET },
    { op: "store", addr: at, offset: offset + 8, size: 8, src: 0 },
    { op: "store", addr: at, offset: offset + 4, size: 4, src: addr },
  ];
}

/**
 * Sets interface `name`'s IPv4 address and netmask (SIOCSIFADDR,
 * SIOCSIFNETMASK) and brings it up. Addresses: dotted strings or u32 values
 * from {@link ipv4} (run-time values allowed).
 */
export function interfaceAddress(
  name: string | Val,
  address: string | Val,
  netmask: string | Val,
): Fragment {
  const req = buf("__ifreq", NET.IFREQ_SIZE);
  const sock = v("__sock");
  const a = typeof address === "string" ? ipv4(address) : address;
  const m = typeof netmask === "string" ? ipv4(netmask) : netmask;
  return seq(
    inetSocket(),
    ifreq(name),
    ...sockaddrIn(a, req, 16),
    sys(SYS.ioctl, [sock, NET.SIOCSIFADDR, req], { step: `set address of${ifSuffix(name)}` }),
    ...sockaddrIn(m, req, 16),
    sys(SYS.ioctl, [sock, NET.SIOCSIFNETMASK, req], { step: `set netmask of${ifSuffix(name)}` }),
    sys(SYS.close, [sock]),
    interfaceUp(name),
  );
}

/** Adds the default route through `gateway` (SIOCADDRT with a `struct rtentry`). */
export function defaultRoute(gateway: string | Val): Fragment {
  const rt = buf("__rtentry", NET.RTENTRY_SIZE);
  const sock = v("__sock");
  const gw = typeof gateway === "string" ? ipv4(gateway) : gateway;
  const f = seq(inetSocket());
  for (let i = 0; i < NET.RTENTRY_SIZE; i += 8) {
    f.push({ op: "store", addr: rt, offset: i, size: 8, src: 0 });
  }
  // struct rtentry (x86-64): rt_dst at 8, rt_gateway at 24, rt_genmask at 40, rt_flags at 56.
  f.push(
    ...sockaddrIn(0, rt, 8),
    ...sockaddrIn(gw, rt, 24),
    ...sockaddrIn(0, rt, 40),
    { op: "store", addr: rt, offset: 56, size: 2, src: NET.RTF_UP | NET.RTF_GATEWAY },
    sys(SYS.ioctl, [sock, NET.SIOCADDRT, rt], { step: "add default route" }),
    sys(SYS.close, [sock]),
  );
  return f;
}

/** `sethostname(name)`. */
export function hostname(name: StrArg): Fragment {
  if (typeof name === "string") {
    return seq(
      sys(SYS.sethostname, [str(name), new TextEncoder().encode(name).length], {
        step: "sethostname",
      }),
    );
  }
  const len = v("__hn_len");
  return seq(
    { op: "call", routine: "strlen", args: [name], dst: len },
    sys(SYS.sethostname, [name, len], { step: "sethostname" }),
  );
}

/** Writes `/etc/hosts` (creating /etc). */
export function etcHosts(content: string): Fragment {
  return seq(mkdirP("/etc"), writeFile("/etc/hosts", content));
}

/** Writes `/etc/resolv.conf` with the given name servers (creating /etc). */
export function resolvConf(nameservers: string[]): Fragment {
  return seq(
    mkdirP("/etc"),
    writeFile("/etc/resolv.conf", nameservers.map((n) => `nameserver ${n}\n`).join("")),
  );
}

/** Sets the realtime clock to `seconds` since the epoch (`clock_settime(CLOCK_REALTIME)`). */
export function setClock(seconds: Val, nanoseconds: Val = 0): Fragment {
  const ts = buf("__timespec", 16);
  return seq(
    { op: "store", addr: ts, offset: 0, size: 8, src: seconds },
    { op: "store", addr: ts, offset: 8, size: 8, src: nanoseconds },
    sys(SYS.clock_settime, [0, ts], { step: "clock_settime" }),
  );
}

/** Opens `path` into variable `fd` (checked). */
export function open(fd: VarRef, path: StrArg, flags: number, mode = 0, step?: string): Fragment {
  return seq(
    sys(SYS.open, [sval(path), flags, mode], { step: step ?? `open ${show(path)}`, dst: fd }),
  );
}

/** Writes a string to a file descriptor (unchecked: logging must never fail the init). */
export function log(fd: Val, message: StrArg): Fragment {
  return seq({ op: "call", routine: "write_str", args: [fd, sval(message)] });
}

/** Opens `/dev/kmsg` for writing into {@link KMSG} (unchecked; a failure leaves a negative fd). */
export function openKmsg(): Fragment {
  return seq(sys(SYS.open, [str("/dev/kmsg"), O.WRONLY | O.CLOEXEC, 0], { dst: KMSG }));
}
/** The /dev/kmsg file descriptor opened by {@link openKmsg}. */
export const KMSG = v("kmsg");

/** Logs a line to /dev/kmsg (the kernel log, so also the serial console). */
export function kmsg(message: string): Fragment {
  return log(KMSG, message.endsWith("\n") ? message : `${message}\n`);
}

/** Options of {@link spawn}. */
export interface SpawnOptions {
  /** argv; argv[0] is looked up in `path` unless it contains a slash. */
  argv: StrArg[] | Val;
  /** Environment ("K=V" strings) or a run-time pointer array. */
  envp: StrArg[] | Val;
  /** Colon-separated search list for argv[0] (0: no search). */
  path?: StrArg | 0;
  /** Working directory. */
  cwd?: StrArg;
  /** File descriptors to put at 0, 1, 2 in the child (undefined: inherited). */
  stdin?: Val;
  stdout?: Val;
  stderr?: Val;
  /** Receives the exit status: the exit code, or 128 + signal. */
  status: VarRef;
  /** Receives the terminating signal number, or 0 when the child exited normally. */
  signal?: VarRef;
  /**
   * Credentials the child takes before exec when `enabled` is not 0:
   * setgroups(ngroups, groups) (a u32 array), setgid, then setuid.
   */
  user?: { enabled: Val; uid: Val; gid: Val; ngroups: Val; groups: Val };
}

/** The argv pointer and argv[0] of {@link SpawnOptions.argv}. */
function argvOf(argv: StrArg[] | Val): { ptr: Val; first: Val } {
  if (Array.isArray(argv)) {
    if (argv.length === 0) throw new Error("argv is empty");
    return { ptr: strv(argv.map(sval)), first: sval(argv[0]) };
  }
  const first = v("__argv0");
  return { ptr: argv, first };
}

/**
 * The exec part of a child: execvp(argv[0]) with `o.path` as the search
 * list. A command that is not found (with `notFoundExits`) prints
 * `skiff: CMD: command not found` on fd 2 and exits 127; any other failure
 * is step `exec` with its errno, reported through `failLabel`.
 */
export function childExec(
  o: Pick<SpawnOptions, "argv" | "envp" | "path">,
  failLabel: string,
  notFoundExits: boolean,
): Fragment {
  const { ptr, first } = argvOf(o.argv);
  const envp = Array.isArray(o.envp) ? strv(o.envp.map(sval)) : o.envp;
  const r = v("__exec_r");
  const notFound = uniqueLabel("notfound");
  const f = seq();
  if (!Array.isArray(o.argv)) {
    f.push({ op: "load", dst: first as VarRef, addr: ptr, offset: 0, size: 8 });
  }
  f.push(
    {
      op: "call",
      routine: "execvp",
      args: [first, ptr, envp, o.path === undefined ? 0 : o.path === 0 ? 0 : sval(o.path)],
      dst: r,
    },
    ...(notFoundExits
      ? [{ op: "branch", cond: "eq", a: r, b: -E.ENOENT, target: notFound } as Op]
      : []),
    { op: "arith", kind: "sub", dst: r, a: 0, b: r },
    fail("exec", r, failLabel),
    label(notFound),
    log(2, "skiff: "),
    log(2, first),
    log(2, ": command not found\n"),
    exit(127),
  );
  return f;
}

/**
 * fork + exec + wait: runs argv in a child with the given cwd and standard
 * streams, reaps every child until it ends, and stores its exit status (exit
 * code, or 128 + signal number). In the child, a failing step prints
 * `skiff-init: <step> failed: …` on its stderr and exits 126 (127 when the
 * command is not found, with `skiff: CMD: command not found`).
 */
export function spawn(o: SpawnOptions): Fragment {
  const pid = v("__pid");
  const w = v("__wait");
  const st = v("__wstatus");
  const sig = v("__wsig");
  const child = uniqueLabel("child");
  const childFail = uniqueLabel("childfail");
  const wait = uniqueLabel("wait");
  const exited = uniqueLabel("exited");
  const done = uniqueLabel("spawned");
  const waitFail = uniqueLabel("waitfail");
  const sbuf = buf("__wstatus_buf", 8);
  const f = seq(
    sys(SYS.fork, [], { step: "fork", dst: pid }),
    { op: "branch", cond: "eq", a: pid, b: 0, target: child },
    label(wait),
    sys(SYS.wait4, [-1, sbuf, 0, 0], { dst: w }),
    { op: "branch", cond: "eq", a: w, b: -E.EINTR, target: wait },
    { op: "branch", cond: "lt", a: w, b: 0, target: waitFail },
    { op: "branch", cond: "ne", a: w, b: pid, target: wait },
    { op: "load", dst: st, addr: sbuf, offset: 0, size: 4 },
    // wait status (include/uapi/linux/wait.h semantics): low 7 bits = signal, bits 8–15 = exit code
    { op: "arith", kind: "and", dst: sig, a: st, b: 0x7f },
    { op: "branch", cond: "eq", a: sig, b: 0, target: exited },
    { op: "arith", kind: "add", dst: o.status, a: sig, b: 128 },
    ...(o.signal ? [set(o.signal, sig)] : []),
    jump(done),
    label(exited),
    ...(o.signal ? [set(o.signal, 0)] : []),
    { op: "arith", kind: "shr", dst: st, a: st, b: 8 },
    { op: "arith", kind: "and", dst: o.status, a: st, b: 0xff },
    jump(done),
    label(waitFail),
    { op: "arith", kind: "sub", dst: w, a: 0, b: w },
    fail("wait4", w),
    // ---- child
    label(child),
  );
  if (o.cwd !== undefined) {
    f.push(sys(SYS.chdir, [sval(o.cwd)], { step: `chdir ${show(o.cwd)}`, fail: childFail }));
  }
  ([[o.stdin, 0], [o.stdout, 1], [o.stderr, 2]] as const).forEach(([fd, n]) => {
    if (fd !== undefined) {
      f.push(sys(SYS.dup2, [fd, n], { step: `dup2 to fd ${n}`, fail: childFail }));
    }
  });
  if (o.user) {
    // Groups and gid first: after setuid the child may no longer change them.
    const asIs = uniqueLabel("nouser");
    f.push(
      { op: "branch", cond: "eq", a: o.user.enabled, b: 0, target: asIs },
      sys(SYS.setgroups, [o.user.ngroups, o.user.groups], { step: "setgroups", fail: childFail }),
      sys(SYS.setgid, [o.user.gid], { step: "setgid", fail: childFail }),
      sys(SYS.setuid, [o.user.uid], { step: "setuid", fail: childFail }),
      label(asIs),
    );
  }
  f.push(
    childExec(o, childFail, true),
    label(childFail),
    { op: "call", routine: "write_error", args: [2, v("__err_step"), v("__err_no")] },
    exit(126),
    label(done),
  );
  return f;
}

/** Replaces the program with argv (execve after a PATH search); a failure is a checked step. */
export function exec(o: Pick<SpawnOptions, "argv" | "envp" | "path">): Fragment {
  const failed = uniqueLabel("execfail");
  return seq(childExec(o, failed, false), label(failed), fail("exec", v("__err_no")));
}

/** `sync()` then `reboot(LINUX_REBOOT_CMD_POWER_OFF)`. */
export function powerOff(): Fragment {
  return seq(
    sys(SYS.sync, []),
    sys(SYS.reboot, [REBOOT.MAGIC1, REBOOT.MAGIC2, REBOOT.CMD_POWER_OFF, 0], { step: "power off" }),
  );
}

/** `sync()` then `reboot(LINUX_REBOOT_CMD_RESTART)` (QEMU `-no-reboot` exits on it). */
export function restart(): Fragment {
  return seq(
    sys(SYS.sync, []),
    sys(SYS.reboot, [REBOOT.MAGIC1, REBOOT.MAGIC2, REBOOT.CMD_RESTART, 0], { step: "reboot" }),
  );
}

/** Sleeps `ms` milliseconds. */
export function sleepMs(ms: Val): Fragment {
  return seq({ op: "call", routine: "sleep_ms", args: [ms] });
}

function show(s: StrArg): string {
  return typeof s === "string" ? s : "(path)";
}
