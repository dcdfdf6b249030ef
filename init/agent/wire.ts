/**
 * Host side of the agent protocol's bytes: request headers and payloads
 * (checked against the limits of `AGENT.md` before anything is sent), signal
 * frames, the boot record, and the reply lines.
 *
 * @module
 */

import { ipv4 } from "../ir/mod.ts";
import { netmaskOf, RecordError, RecordWriter } from "../record.ts";
import { AgentProtocolError, AgentRequestError } from "./errors.ts";
import {
  AGENT_PROTOCOL_VERSION,
  BOOT,
  EXEC,
  KILL,
  KILL_FLAGS,
  KIND,
  LIMITS,
  MOUNT,
  MOUNT_OP,
  NO_ID,
  POWEROFF_SIZE,
  READ_FILE,
  REQ_HDR,
  REQUEST_MAGIC,
  type RequestKind,
  SETUP,
  SETUP_FILE,
  SETUP_FLAGS,
  SIGNAL_FRAME_SIZE,
  WRITE_FILE,
  WRITE_FLAGS,
} from "./protocol.ts";

/** One SETUP mount entry. */
export interface MountSpec {
  /** Source (device, tag, directory), or null. */
  source?: string | null;
  /** Absolute target; made with `mkdir -p` first. */
  target: string;
  /** File system type, or null (bind, move). */
  fsType?: string | null;
  /** mount(2) flags (`MS_*`). */
  flags?: number;
  /** Options string, or null. */
  data?: string | null;
  /**
   * Retry ENOENT/ENODEV/ENXIO/EINVAL for this long (ms) — a hot-plugged device or a
   * tag that appears a little later. 0 or absent: fail at once.
   */
  waitMs?: number;
  /** Only make the target directory. */
  mkdirOnly?: boolean;
  /** Detach what is mounted at the target, with everything under it (`umount -l`). */
  umount?: boolean;
}

/** SETUP's network part: wait for the interface, address it, bring it up, default route. */
export interface NetSpec {
  /** Interface name (default `eth0`). */
  interface?: string;
  address: string;
  prefixLength: number;
  /** Default gateway, or null for no route. */
  gateway?: string | null;
  /** How long to wait for the interface to appear (ms, default 10 000). */
  waitMs?: number;
}

/** A SETUP request. */
export interface SetupSpec {
  /** Mount operations, in order. */
  mounts?: MountSpec[];
  /** Host name to set, or null to leave it. */
  hostname?: string | null;
  /** Network setup, or null. */
  net?: NetSpec | null;
  /** Wall-clock time to set first (ms since the epoch, e.g. `Date.now()`), or null to leave it. */
  clockMs?: number | null;
  /** Files to write, inside {@link filesRoot}, in order, after {@link filesAfterMount} mount entries. */
  files?: SetupFileSpec[];
  /** Directory the files' paths are inside (chroot), "" = the agent's root (the default). */
  filesRoot?: string;
  /**
   * How many of {@link mounts} run before the files are written (default: all
   * of them). Fewer lets the files go where the later mounts do not need to be
   * waited for (an overlay's upper before its lower's device is there); then
   * {@link filesRoot} must be "", since the later mounts must not run inside its chroot.
   */
  filesAfterMount?: number;
}

/** A file SETUP writes (as WRITE_FILE does, owner unchanged), its bytes in the request. */
export interface SetupFileSpec {
  /** Absolute path inside the files' root. */
  path: string;
  /** The bytes (a string as UTF-8). */
  content: string | Uint8Array;
  /** Permission bits (0–0o7777), applied exactly. */
  mode: number;
  /** Unlink first (replace a symlink instead of writing through it). */
  replace?: boolean;
}

/** An EXEC request. */
export interface ExecSpec {
  argv: readonly string[];
  /** "K=V" entries. */
  env: readonly string[];
  /** Working directory (absolute, inside `root`). */
  cwd: string;
  /** Directory to chroot into, "" = the agent's root. */
  root: string;
  /** Search list for argv[0]. */
  path: string;
  /** uid/gid to switch to, or null to stay root. */
  uid: number | null;
  gid: number | null;
  /** Supplementary groups with a gid (default none). */
  groups?: readonly number[];
  /** Host ports of stdin, stdout, stderr (0 = /dev/null; stderr = stdout shares it). */
  ports: { stdin: number; stdout: number; stderr: number };
}

/** A WRITE_FILE request. */
export interface WriteFileSpec {
  path: string;
  root: string;
  /** Permission bits (0–0o7777), applied exactly. */
  mode: number;
  uid: number | null;
  gid: number | null;
  /** Unlink first (replace a symlink instead of writing through it). */
  replace: boolean;
}

/** A READ_FILE request. */
export interface ReadFileSpec {
  path: string;
  root: string;
}

const enc = new TextEncoder();

function check(ok: boolean, message: string): void {
  if (!ok) throw new AgentRequestError(message);
}

function checkPath(p: string, what: string, absolute = true): void {
  check(!absolute || p.startsWith("/"), `${what} must be an absolute path: ${JSON.stringify(p)}`);
  const n = enc.encode(p).length;
  check(n <= LIMITS.MAX_PATH, `${what} is ${n} bytes; the limit is ${LIMITS.MAX_PATH}`);
}

function checkU32(x: number, what: string, max = 0xffff_ffff): void {
  check(Number.isInteger(x) && x >= 0 && x <= max, `${what} must be an integer in 0..${max}: ${x}`);
}

function checkId(x: number | null, what: string): number {
  if (x === null) return NO_ID;
  checkU32(x, what, NO_ID - 1);
  return x;
}

function checkWait(ms: number, what: string): void {
  checkU32(ms, what, LIMITS.MAX_WAIT_MS);
}

/** Runs `build` with a writer that has the fixed part (`size` bytes) reserved; limits checked. */
function payload(what: string, size: number, build: (w: RecordWriter) => void): Uint8Array {
  const w = new RecordWriter();
  w.reserve(size);
  try {
    build(w);
  } catch (e) {
    // RecordError (a NUL inside a string), a bad address or prefix length.
    if (e instanceof RecordError || e instanceof Error) throw new AgentRequestError(e.message);
    throw e;
  }
  const out = w.finish(AGENT_PROTOCOL_VERSION);
  check(
    out.length <= LIMITS.MAX_PAYLOAD,
    `${what} is ${out.length} bytes; the limit is ${LIMITS.MAX_PAYLOAD} (argv, environment and paths together)`,
  );
  return out;
}

/** The SETUP payload. */
export function encodeSetup(spec: SetupSpec): Uint8Array {
  const mounts = spec.mounts ?? [];
  for (const m of mounts) {
    checkPath(m.target, "mount target");
    if (m.flags !== undefined) {
      check(Number.isSafeInteger(m.flags) && m.flags >= 0, `bad mount flags ${m.flags}`);
    }
    if (m.waitMs !== undefined) checkWait(m.waitMs, `wait of mount ${m.target}`);
  }
  if (spec.hostname != null) {
    const n = enc.encode(spec.hostname).length;
    check(
      n >= 1 && n <= LIMITS.MAX_HOSTNAME,
      `host name must be 1..${LIMITS.MAX_HOSTNAME} bytes: ${JSON.stringify(spec.hostname)}`,
    );
  }
  const net = spec.net ?? null;
  if (net) {
    const name = net.interface ?? "eth0";
    const n = enc.encode(name).length;
    check(
      n >= 1 && n <= LIMITS.MAX_IFNAME && !name.includes("/"),
      `bad interface name ${JSON.stringify(name)}`,
    );
    if (net.waitMs !== undefined) checkWait(net.waitMs, "interface wait");
  }
  const clockMs = spec.clockMs ?? null;
  if (clockMs !== null) {
    check(Number.isSafeInteger(clockMs) && clockMs > 0, `bad clock time ${clockMs}`);
  }
  const files = spec.files ?? [];
  const filesRoot = spec.filesRoot ?? "";
  if (filesRoot !== "") checkPath(filesRoot, "files root");
  for (const f of files) {
    checkPath(f.path, "file path");
    checkU32(f.mode, `mode of ${f.path}`, 0o7777);
  }
  const filesAt = spec.filesAfterMount ?? mounts.length;
  check(
    Number.isSafeInteger(filesAt) && filesAt >= 0 && filesAt <= mounts.length,
    `filesAfterMount ${filesAt} is not 0..${mounts.length} (the number of mount entries)`,
  );
  check(
    filesAt === mounts.length || filesRoot === "",
    "filesAfterMount before the last mount entry needs an empty filesRoot (the later mounts would run in its chroot)",
  );
  return payload("SETUP request", SETUP.SIZE, (w) => {
    let flags = 0;
    if (clockMs !== null) {
      flags |= SETUP_FLAGS.CLOCK;
      w.u64(SETUP.CLOCK_SEC, Math.floor(clockMs / 1000));
      w.u64(SETUP.CLOCK_NSEC, (clockMs % 1000) * 1_000_000);
    }
    if (spec.hostname != null) {
      flags |= SETUP_FLAGS.HOSTNAME;
      w.ptr(SETUP.HOSTNAME, w.str(spec.hostname, "host name"));
    }
    w.align(8);
    const table = w.reserve(MOUNT.SIZE * mounts.length);
    w.ptr(SETUP.MOUNTS, table);
    w.u64(SETUP.NMOUNTS, mounts.length);
    w.u64(SETUP.FILES_AT, filesAt);
    mounts.forEach((m, i) => {
      const at = table + MOUNT.SIZE * i;
      if (m.source != null) w.ptr(at + MOUNT.SOURCE, w.str(m.source, "mount source"));
      w.ptr(at + MOUNT.TARGET, w.str(m.target, "mount target"));
      if (m.fsType != null) w.ptr(at + MOUNT.FSTYPE, w.str(m.fsType, "mount type"));
      w.u64(at + MOUNT.FLAGS, m.flags ?? 0);
      if (m.data != null) w.ptr(at + MOUNT.DATA, w.str(m.data, "mount data"));
      const op = (m.waitMs ? MOUNT_OP.WAIT : 0) | (m.mkdirOnly ? MOUNT_OP.MKDIR_ONLY : 0) |
        (m.umount ? MOUNT_OP.UMOUNT : 0);
      w.u32(at + MOUNT.OP, op);
      w.u32(at + MOUNT.WAIT_MS, m.waitMs ?? 0);
    });
    if (net) {
      flags |= SETUP_FLAGS.NET;
      w.u32(SETUP.NET_ADDRESS, ipv4(net.address));
      w.u32(SETUP.NET_NETMASK, ipv4(netmaskOf(net.prefixLength)));
      w.u32(SETUP.NET_GATEWAY, net.gateway ? ipv4(net.gateway) : 0);
      w.u32(SETUP.NET_WAIT_MS, net.waitMs ?? 10_000);
      w.ptr(SETUP.NET_IFNAME, w.str(net.interface ?? "eth0", "interface name"));
    }
    if (files.length > 0) {
      w.ptr(SETUP.FILES_ROOT, w.str(filesRoot, "files root"));
      w.align(8);
      const ftable = w.reserve(SETUP_FILE.SIZE * files.length);
      w.ptr(SETUP.FILES, ftable);
      w.u64(SETUP.NFILES, files.length);
      files.forEach((f, i) => {
        const at = ftable + SETUP_FILE.SIZE * i;
        const bytes = typeof f.content === "string" ? enc.encode(f.content) : f.content;
        w.ptr(at + SETUP_FILE.PATH, w.str(f.path, "file path"));
        w.ptr(at + SETUP_FILE.DATA, w.data(bytes));
        w.u64(at + SETUP_FILE.LENGTH, bytes.length);
        w.u32(at + SETUP_FILE.MODE, f.mode);
        w.u32(at + SETUP_FILE.FLAGS, f.replace ? WRITE_FLAGS.REPLACE : 0);
      });
    }
    w.u64(SETUP.FLAGS, flags);
  });
}

/** The EXEC payload. */
export function encodeExec(spec: ExecSpec): Uint8Array {
  check(spec.argv.length > 0 && spec.argv[0] !== "", "argv is empty (or argv[0] is)");
  for (const e of spec.env) {
    check(e.includes("="), `environment entry without '=': ${JSON.stringify(e)}`);
  }
  checkPath(spec.cwd, "working directory");
  if (spec.root !== "") checkPath(spec.root, "root directory");
  checkPath(spec.argv[0], "command", false);
  const uid = checkId(spec.uid, "uid");
  const gid = checkId(spec.gid, "gid");
  const groups = spec.groups ?? [];
  check(
    groups.length <= LIMITS.MAX_GROUPS,
    `${groups.length} groups (at most ${LIMITS.MAX_GROUPS})`,
  );
  check(groups.length === 0 || spec.gid !== null, "supplementary groups need a gid");
  groups.forEach((g) => checkId(g, "group"));
  for (const [k, p] of Object.entries(spec.ports)) checkU32(p, `${k} port`);
  return payload("EXEC request", EXEC.SIZE, (w) => {
    if (groups.length > 0) {
      w.align(8);
      const at = w.reserve(4 * groups.length);
      groups.forEach((g, i) => w.u32(at + 4 * i, g));
      w.ptr(EXEC.GROUPS, at);
      w.u64(EXEC.NGROUPS, groups.length);
    }
    w.ptr(EXEC.ARGV, w.strv(spec.argv, "argv"));
    w.ptr(EXEC.ENVP, w.strv(spec.env, "env"));
    w.ptr(EXEC.CWD, w.str(spec.cwd, "working directory"));
    w.ptr(EXEC.ROOT, w.str(spec.root, "root directory"));
    w.ptr(EXEC.PATH, w.str(spec.path, "PATH"));
    w.u32(EXEC.UID, uid);
    w.u32(EXEC.GID, gid);
    w.u32(EXEC.STDIN, spec.ports.stdin);
    w.u32(EXEC.STDOUT, spec.ports.stdout);
    w.u32(EXEC.STDERR, spec.ports.stderr);
  });
}

function checkSignal(signal: number): void {
  check(Number.isInteger(signal) && signal >= 1 && signal <= 64, `bad signal number ${signal}`);
}

/** The KILL payload: `signal` to `pid` (> 1), or to its process group. */
export function encodeKill(pid: number, signal: number, group: boolean): Uint8Array {
  check(Number.isInteger(pid) && pid > 1 && pid < 2 ** 31, `bad pid ${pid} (want 2..2^31-1)`);
  checkSignal(signal);
  return payload("KILL request", KILL.SIZE, (w) => {
    w.u32(KILL.PID, pid);
    w.u32(KILL.SIGNAL, signal);
    w.u64(KILL.FLAGS, group ? KILL_FLAGS.GROUP : 0);
  });
}

/** The WRITE_FILE payload (the data follows on the connection). */
export function encodeWriteFile(spec: WriteFileSpec): Uint8Array {
  checkPath(spec.path, "file path");
  if (spec.root !== "") checkPath(spec.root, "root directory");
  checkU32(spec.mode, "mode", 0o7777);
  const uid = checkId(spec.uid, "uid");
  const gid = checkId(spec.gid, "gid");
  return payload("WRITE_FILE request", WRITE_FILE.SIZE, (w) => {
    w.ptr(WRITE_FILE.PATH, w.str(spec.path, "file path"));
    w.ptr(WRITE_FILE.ROOT, w.str(spec.root, "root directory"));
    w.u32(WRITE_FILE.MODE, spec.mode);
    w.u32(WRITE_FILE.UID, uid);
    w.u32(WRITE_FILE.GID, gid);
    w.u32(WRITE_FILE.FLAGS, spec.replace ? WRITE_FLAGS.REPLACE : 0);
  });
}

/** The READ_FILE payload. */
export function encodeReadFile(spec: ReadFileSpec): Uint8Array {
  checkPath(spec.path, "file path");
  if (spec.root !== "") checkPath(spec.root, "root directory");
  return payload("READ_FILE request", READ_FILE.SIZE, (w) => {
    w.ptr(READ_FILE.PATH, w.str(spec.path, "file path"));
    w.ptr(READ_FILE.ROOT, w.str(spec.root, "root directory"));
  });
}

/** The POWEROFF payload. */
export function encodePoweroff(): Uint8Array {
  return payload("POWEROFF request", POWEROFF_SIZE, () => {});
}

/** Header + payload of a request of `kind`. */
export function frameRequest(kind: RequestKind, payloadBytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(REQ_HDR.SIZE + payloadBytes.length);
  const d = new DataView(out.buffer);
  d.setUint32(REQ_HDR.MAGIC, REQUEST_MAGIC, true);
  d.setUint16(REQ_HDR.VERSION, AGENT_PROTOCOL_VERSION, true);
  d.setUint16(REQ_HDR.KIND, KIND[kind], true);
  d.setUint32(REQ_HDR.LENGTH, payloadBytes.length, true);
  out.set(payloadBytes, REQ_HDR.SIZE);
  return out;
}

/** A signal frame for an EXEC control connection. */
export function encodeSignalFrame(signal: number, group: boolean): Uint8Array {
  checkSignal(signal);
  const out = new Uint8Array(SIGNAL_FRAME_SIZE);
  const d = new DataView(out.buffer);
  d.setUint32(0, signal, true);
  d.setUint32(4, group ? KILL_FLAGS.GROUP : 0, true);
  return out;
}

/** The agent's boot record: the module paths (in the initramfs) in load order. */
export function encodeBootRecord(modules: readonly string[]): Uint8Array {
  for (const m of modules) checkPath(m, "module path");
  return payload("boot record", BOOT.SIZE, (w) => {
    w.ptr(BOOT.MODULES, w.strv(modules, "module"));
  });
}

/** A reply line, parsed. */
export type Reply =
  | { kind: "ok"; value: number | null }
  | { kind: "pid"; pid: number }
  | { kind: "exit"; code: number }
  | { kind: "signal"; signal: number }
  | { kind: "error"; step: string; errno: string };

/** Parses one reply line (without its newline). Throws {@link AgentProtocolError} on anything else. */
export function parseReply(line: string): Reply {
  let m = /^ok(?: (\d{1,19}))?$/.exec(line);
  if (m) {
    if (m[1] === undefined) return { kind: "ok", value: null };
    const value = Number(m[1]);
    if (!Number.isSafeInteger(value)) {
      throw new AgentProtocolError(`reply count too large: ${line}`);
    }
    return { kind: "ok", value };
  }
  m = /^pid (\d{1,10})$/.exec(line);
  if (m) return { kind: "pid", pid: Number(m[1]) };
  m = /^exit (\d{1,3})$/.exec(line);
  if (m && Number(m[1]) <= 255) return { kind: "exit", code: Number(m[1]) };
  m = /^signal (\d{1,2})$/.exec(line);
  if (m) return { kind: "signal", signal: Number(m[1]) };
  m = /^error (.+): (E[A-Z0-9]+|errno-\d+)$/.exec(line);
  if (m) return { kind: "error", step: m[1], errno: m[2] };
  throw new AgentProtocolError(`bad reply from the agent: ${JSON.stringify(line.slice(0, 200))}`);
}
