/**
 * The init's mailbox loop as IR: map the mailbox's register page and data
 * region, ring "ready", then forever wait for a command, run it (a payload or
 * a command record), write the result and ring "done". The protocol is in
 * `MAILBOX.md` beside this file; the host side is `devices/mailbox/`.
 *
 * In a VM both mappings come from `/dev/mem` (the mailbox lives outside the
 * e820 map, so STRICT_DEVMEM allows it and the kernel has no conflicting
 * cached mapping). For tests the same code maps a plain file with the
 * register image at `regsOffset` and the data region at the offset the
 * DATA_BASE register names, and polls with a short sleep instead of relying
 * on the device's blocking wait read.
 *
 * @module
 */

import { ERR_NO, type Program } from "./codegen/mod.ts";
import {
  branch,
  buf,
  E,
  exit,
  type Fragment,
  jump,
  label,
  O,
  powerOff,
  seq,
  set,
  spawn,
  str,
  SYS,
  sys,
  uniqueLabel,
  v,
  type Val,
  type VarRef,
} from "./ir/mod.ts";
import { REC, recordUser } from "./record.ts";
import {
  MAILBOX_LAYOUT,
  MAILBOX_MAGIC,
  MAILBOX_VERSION,
  MB_CMD,
  MB_REG,
  MB_STATE,
  MB_WINDOW_SIZE,
} from "../devices/mailbox/registers.ts";

/**
 * Where the init maps the data region (virtual, fixed with
 * `MAP_FIXED_NOREPLACE`): payloads can address host-provided data at a
 * constant. 16 TiB is far from the static ELF (4 MiB), its heap, and the
 * stack and mmap area near the top of the 47-bit user space.
 */
export const MAILBOX_DATA_VA = 0x1000_0000_0000;

/** Linux values the loop uses that `init/ir` does not name (uapi `asm-generic/mman-common.h`, `mman.h`). */
const MM = {
  PROT_RW: 0x1 | 0x2,
  PROT_RWX: 0x1 | 0x2 | 0x4,
  MAP_SHARED: 0x01,
  MAP_PRIVATE: 0x02,
  MAP_ANONYMOUS: 0x20,
  MAP_FIXED_NOREPLACE: 0x100000,
  /** `sched_yield` (arch/x86/entry/syscalls/syscall_64.tbl). */
  SYS_SCHED_YIELD: 24,
  ENODEV: 19,
  EPROTO: 71,
} as const;

/** Options of {@link mailboxLoop}. */
export interface MailboxLoopOptions {
  /** File holding the register page (default `/dev/mem`). */
  regsPath?: string;
  /**
   * Offset of the register page in it (default the guest-physical
   * {@link MAILBOX_LAYOUT.REGS_BASE}); a run-time value is allowed (a
   * variable the setup computed).
   */
  regsOffset?: Val;
  /** File holding the data region, mapped at the DATA_BASE register's offset (default: `regsPath`). */
  dataPath?: string;
  /**
   * What the init does when a wait read returns no command: 0 (default) —
   * `sched_yield` and read again (the device already blocked host-side);
   * N > 0 — sleep N ms first (for a register image without a device).
   */
  idleSleepMs?: number;
  /**
   * Where command records' stdio ports are: `"virtio"` (default) — the
   * virtio-console port of that name (`/dev/vportNpM`); `{ dir }` — the
   * file `<dir>/<name>` (native tests).
   */
  ports?: "virtio" | { dir: string };
  /** Runs after a SHUTDOWN command was acknowledged (default: power off). */
  onShutdown?: Fragment;
}

/** Variables of the loop (global IR variables; prefixed so they do not clash with the boot program's). */
const MB = {
  fd: v("mb_fd"),
  dfd: v("mb_dfd"),
  regs: v("mb_regs"),
  data: v("mb_data"),
  exec: v("mb_exec"),
  size: v("mb_size"),
  base: v("mb_base"),
  done: v("mb_done"),
  seq: v("mb_seq"),
  kind: v("mb_kind"),
  arg: v("mb_arg"),
  len: v("mb_len"),
  result: v("mb_result"),
  t: v("mb_t"),
};

function reg(dst: VarRef, offset: number, size: 4 | 8): Fragment {
  return seq({ op: "load", dst, addr: MB.regs, offset, size });
}
function setReg(offset: number, size: 4 | 8, src: Val): Fragment {
  return seq({ op: "store", addr: MB.regs, offset, size, src });
}

/**
 * The loop (never falls through). Setup failures (open, map, magic, version)
 * go to the program's error handler as named steps; failures while running a
 * command become that command's result (-errno), so a bad command never ends
 * the init. One exception: `fork`/`wait4` failures inside `spawn` use the
 * program's handler.
 */
export function mailboxLoop(o: MailboxLoopOptions = {}): Fragment {
  const regsPath = o.regsPath ?? "/dev/mem";
  const dataPath = o.dataPath ?? regsPath;
  const wait = uniqueLabel("mb_wait");
  const got = uniqueLabel("mb_got");
  const finish = uniqueLabel("mb_finish");
  const payload = uniqueLabel("mb_payload");
  const command = uniqueLabel("mb_command");
  const shutdown = uniqueLabel("mb_shutdown");
  const magicOk = uniqueLabel("mb_magic");
  const versionOk = uniqueLabel("mb_version");
  const vaOk = uniqueLabel("mb_va");
  const fdsAgain = uniqueLabel("mb_fds");
  const fdsDone = uniqueLabel("mb_fdsdone");
  const f = seq(
    // Keep fds 0–2 taken (a PID 1 may start without them): a port opened as
    // fd 1 and dup2'ed onto itself would keep O_CLOEXEC and vanish at exec.
    label(fdsAgain),
    sys(SYS.open, [str("/dev/null"), O.RDWR, 0], { dst: MB.t }),
    branch("lt", MB.t, 0, fdsDone),
    branch("lt", MB.t, 3, fdsAgain),
    sys(SYS.close, [MB.t]),
    label(fdsDone),
    sys(SYS.open, [str(regsPath), O.RDWR | O.SYNC | O.CLOEXEC, 0], {
      step: `open mailbox ${regsPath}`,
      dst: MB.fd,
    }),
    sys(SYS.mmap, [
      0,
      MB_WINDOW_SIZE,
      MM.PROT_RW,
      MM.MAP_SHARED,
      MB.fd,
      o.regsOffset ?? MAILBOX_LAYOUT.REGS_BASE,
    ], {
      step: "map mailbox registers",
      dst: MB.regs,
    }),
    reg(MB.t, MB_REG.MAGIC, 4),
    branch("eq", MB.t, MAILBOX_MAGIC, magicOk),
    { op: "fail", step: "mailbox magic", errno: MM.ENODEV },
    label(magicOk),
    reg(MB.t, MB_REG.VERSION, 4),
    branch("eq", MB.t, MAILBOX_VERSION, versionOk),
    { op: "fail", step: "mailbox version", errno: MM.EPROTO },
    label(versionOk),
    reg(MB.base, MB_REG.DATA_BASE, 8),
    reg(MB.size, MB_REG.DATA_SIZE, 8),
  );
  if (dataPath === regsPath) f.push(set(MB.dfd, MB.fd));
  else {
    f.push(sys(SYS.open, [str(dataPath), O.RDWR | O.SYNC | O.CLOEXEC, 0], {
      step: `open mailbox data ${dataPath}`,
      dst: MB.dfd,
    }));
  }
  f.push(
    sys(SYS.mmap, [
      MAILBOX_DATA_VA,
      MB.size,
      MM.PROT_RW,
      MM.MAP_SHARED | MM.MAP_FIXED_NOREPLACE,
      MB.dfd,
      MB.base,
    ], { step: "map mailbox data", dst: MB.data }),
    // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a hint only.
    branch("eq", MB.data, MAILBOX_DATA_VA, vaOk),
    { op: "fail", step: "map mailbox data", errno: E.EEXIST },
    label(vaOk),
    // Payloads run from (and records are relocated in) ordinary cached
    // private memory, never from the uncached mailbox mapping.
    sys(SYS.mmap, [0, MB.size, MM.PROT_RWX, MM.MAP_PRIVATE | MM.MAP_ANONYMOUS, -1, 0], {
      step: "map payload memory",
      dst: MB.exec,
    }),
    reg(MB.done, MB_REG.DONE_SEQ, 4),
    setReg(MB_REG.STATE, 4, MB_STATE.READY),
    // ---- wait: the device blocks this read host-side while nothing is pending
    label(wait),
    reg(MB.seq, MB_REG.CMD_SEQ, 4),
    branch("ne", MB.seq, MB.done, got),
    (o.idleSleepMs ?? 0) > 0
      ? seq({ op: "call", routine: "sleep_ms", args: [o.idleSleepMs!] })
      : seq(sys(MM.SYS_SCHED_YIELD, [])),
    jump(wait),
    // ---- dispatch
    label(got),
    reg(MB.kind, MB_REG.CMD_KIND, 4),
    reg(MB.arg, MB_REG.CMD_ARG, 8),
    reg(MB.len, MB_REG.CMD_LEN, 8),
    set(MB.result, -E.EINVAL),
    branch("gtu", MB.len, MB.size, finish),
    branch("eq", MB.kind, MB_CMD.PAYLOAD, payload),
    branch("eq", MB.kind, MB_CMD.COMMAND, command),
    branch("eq", MB.kind, MB_CMD.SHUTDOWN, shutdown),
    jump(finish),
    // ---- a payload: copy it to executable memory, call it (arg, data, registers)
    label(payload),
    branch("eq", MB.len, 0, finish),
    { op: "call", routine: "memcpy", args: [MB.exec, MB.data, MB.len] },
    { op: "callptr", target: MB.exec, args: [MB.arg, MB.data, MB.regs], dst: MB.result },
    jump(finish),
    // ---- a command record
    label(command),
    runRecord(o, finish),
    jump(finish),
    // ---- shutdown: acknowledge, then leave
    label(shutdown),
    setReg(MB_REG.RESULT, 8, 0),
    setReg(MB_REG.DONE_SEQ, 4, MB.seq),
    o.onShutdown ?? powerOff(),
    exit(0),
    // ---- report
    label(finish),
    setReg(MB_REG.RESULT, 8, MB.result),
    setReg(MB_REG.DONE_SEQ, 4, MB.seq),
    set(MB.done, MB.seq),
    jump(wait),
  );
  return f;
}

/**
 * Runs the command record at data offset 0 (`init/record.ts`): copy, check
 * size and version, relocate, open the stdio ports it names, spawn
 * argv/envp/cwd/PATH, close the ports. Leaves the exit status (or -errno) in
 * the result. The record's boot-time fields (root, shares, modules, network,
 * host name, status port) are not used here.
 */
function runRecord(o: MailboxLoopOptions, finish: string): Fragment {
  const rec = MB.exec;
  const failed = uniqueLabel("mb_cmdfail");
  const sizeOk = uniqueLabel("mb_recsize");
  const versionOk = uniqueLabel("mb_recver");
  const same = uniqueLabel("mb_sameport");
  const opened = uniqueLabel("mb_portsopen");
  const closeAll = uniqueLabel("mb_close");
  const status = v("mb_status");
  const r = v("mb_r");
  const fds = { in: v("mb_in"), out: v("mb_out"), err: v("mb_err") };
  const path = buf("mb_port_path", 512);
  const openPort = (fd: VarRef, at: number, what: string, flags: number): Fragment => {
    const name = v(`mb_port_${what}`);
    const f = seq({ op: "load", dst: name, addr: rec, offset: at, size: 8 });
    if (o.ports && o.ports !== "virtio") {
      const p = v("mb_port_p");
      f.push(
        { op: "call", routine: "strcpy", args: [path, str(`${o.ports.dir}/`)], dst: p },
        { op: "call", routine: "strcpy", args: [p, name] },
      );
    } else {
      const found = uniqueLabel("mb_portfound");
      f.push(
        { op: "call", routine: "find_port", args: [name, path], dst: r },
        branch("eq", r, 0, found),
        { op: "arith", kind: "sub", dst: r, a: 0, b: r },
        { op: "fail", step: `find port ${what}`, errno: r, target: failed },
        label(found),
      );
    }
    f.push(
      sys(SYS.open, [path, flags | O.CLOEXEC, 0], {
        step: `open port ${what}`,
        dst: fd,
        fail: failed,
      }),
    );
    return f;
  };
  const a = v("mb_port_stdout");
  const b = v("mb_port_stderr");
  const mbUser = recordUser(rec, "mb");
  return seq(
    set(fds.in, -1),
    set(fds.out, -1),
    set(fds.err, -1),
    branch("ltu", MB.len, REC.HEADER_SIZE, finish),
    { op: "call", routine: "memcpy", args: [rec, MB.data, MB.len] },
    { op: "load", dst: r, addr: rec, offset: REC.SIZE, size: 4 },
    branch("leu", r, MB.len, sizeOk),
    jump(finish),
    label(sizeOk),
    { op: "load", dst: r, addr: rec, offset: REC.VERSION, size: 4 },
    branch("eq", r, 1, versionOk),
    jump(finish),
    label(versionOk),
    { op: "call", routine: "relocate", args: [rec], dst: MB.result },
    branch("lt", MB.result, 0, finish),
    openPort(fds.in, REC.PORT_STDIN, "stdin", O.RDONLY),
    openPort(fds.out, REC.PORT_STDOUT, "stdout", O.WRONLY),
    // A virtio-console port opens once (EBUSY after): stdout and stderr may share one.
    { op: "load", dst: b, addr: rec, offset: REC.PORT_STDERR, size: 8 },
    { op: "call", routine: "streq", args: [a, b], dst: r },
    branch("ne", r, 0, same),
    openPort(fds.err, REC.PORT_STDERR, "stderr", O.WRONLY),
    jump(opened),
    label(same),
    set(fds.err, fds.out),
    label(opened),
    { op: "load", dst: v("mb_argv"), addr: rec, offset: REC.ARGV, size: 8 },
    { op: "load", dst: v("mb_envp"), addr: rec, offset: REC.ENVP, size: 8 },
    { op: "load", dst: v("mb_cwd"), addr: rec, offset: REC.CWD, size: 8 },
    { op: "load", dst: v("mb_path"), addr: rec, offset: REC.PATH, size: 8 },
    mbUser.load,
    spawn({
      argv: v("mb_argv"),
      envp: v("mb_envp"),
      path: v("mb_path"),
      cwd: v("mb_cwd"),
      stdin: fds.in,
      stdout: fds.out,
      stderr: fds.err,
      status,
      user: mbUser.user,
    }),
    set(MB.result, status),
    jump(closeAll),
    label(failed),
    { op: "arith", kind: "sub", dst: MB.result, a: 0, b: ERR_NO },
    label(closeAll),
    sys(SYS.close, [fds.in]),
    sys(SYS.close, [fds.out]),
    branch("eq", fds.err, fds.out, finish),
    sys(SYS.close, [fds.err]),
  );
}

/** Options of {@link mailboxProgram}. */
export interface MailboxProgramOptions extends MailboxLoopOptions {
  /** Runs before the loop (boot-time setup). */
  setup?: Fragment;
}

/**
 * A whole program that runs `setup` and then the loop — for tests and for
 * an init whose setup is done elsewhere. Shutdown exits 0 unless
 * `onShutdown` says otherwise.
 */
export function mailboxProgram(o: MailboxProgramOptions = {}): Program {
  return {
    body: seq(o.setup ?? seq(), mailboxLoop({ ...o, onShutdown: o.onShutdown ?? seq(exit(0)) })),
  };
}
