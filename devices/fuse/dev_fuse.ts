/**
 * The `/dev/fuse` transport: opens `/dev/fuse`, mounts it with `mount(2)`
 * (`fd=N,rootmode=40000,user_id=…,group_id=…,allow_other,default_permissions`,
 * MS_NOSUID|MS_NODEV — what fusermount would do, without fusermount: the
 * caller must be root) and serves a {@link PassthroughFs} (or, with `layers`,
 * a read-only {@link LayeredFs} of image layers) from Workers running the
 * blocking request loops, so the caller's event loop stays free: a primary
 * reader and, for a passthrough share, helper readers on clones of the
 * connection that share its state ({@link PassthroughFs.share}) and take
 * requests that queue up while the primary is busy (`dev_fuse_loop.ts`).
 * Where the kernel offers FUSE_PASSTHROUGH, a passthrough share lets the
 * client read and write open files through backing host files itself
 * (`dev_fuse_backing.ts`, PassthroughFs's #backingFor).
 *
 * @module
 */

import { Errno } from "../../kvm_ffi/errno.ts";
import { O } from "../../kvm_ffi/libc.ts";
import type { PassthroughOptions, PassthroughShare } from "./passthrough.ts";
import { cpath, FUSE_DEV_IOC_CLONE, r, sys } from "./sys.ts";
import { type LoopStats, OverflowGate } from "./dev_fuse_loop.ts";
import type { HelperStart, WorkerStart } from "./dev_fuse_worker.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";
import { setMountReadahead } from "./readahead.ts";
import {
  connectionsToAbort,
  type MountEntry,
  newestMount,
  resolvedMountId,
  type UnmountAction,
  unmountAction,
} from "./own_mount.ts";

/** Options of {@link mountDevFuse}. */
export interface DevFuseOptions extends PassthroughOptions {
  /** Host directory to share (with `layers`: only the mount's source name). */
  hostDir: string;
  /** Serve these unpacked image layers (bottom first) merged read-only instead ({@link LayeredFs}). */
  layers?: string[];
  /** Where to mount it. */
  mountpoint: string;
  /** Largest READ/WRITE request; default 1 MiB. */
  maxWrite?: number;
  /**
   * Readahead window of the mount in KiB, which bounds the size of the client's
   * READs (`readahead.ts`); default {@link DEFAULT_READAHEAD_KIB} (at most
   * `maxWrite`), 0 leaves the kernel's default (128 KiB).
   */
  readaheadKib?: number;
  /** Splice large READ replies from the host file into /dev/fuse (`dev_fuse_splice.ts`); default true. */
  splice?: boolean;
  /**
   * Let the client read and write open regular files of a passthrough share itself
   * (FUSE_PASSTHROUGH, `dev_fuse_backing.ts`) where the kernel offers it; default
   * false. Opt-in because the host sees it: a file without execute bits that a
   * client opens, even to read, is held open read-write on the host meanwhile
   * (an IN_CLOSE_WRITE event afterwards, `swapon` or fs-verity refused), and the
   * client's O_DIRECT reaches the host file.
   */
  passthrough?: boolean;
  /**
   * Threads reading `/dev/fuse` (default {@link DEFAULT_READERS}): one primary,
   * the others clones of the connection woken when requests queue up (see
   * `dev_fuse_loop.ts`). Image layers are always served by one.
   */
  readers?: number;
}

/**
 * The readahead window unless told otherwise: READs four times the kernel's default,
 * and small enough to be spliced through a pipe of the unprivileged maximum size
 * (1 MiB, /proc/sys/fs/pipe-max-size; `dev_fuse_splice.ts`). Measured in `fuse_bench.ts`.
 */
export const DEFAULT_READAHEAD_KIB = 512;

/** Readers of a mount unless told otherwise (measured in `fuse_bench.ts`). */
export const DEFAULT_READERS = 2;

/** A live `/dev/fuse` mount. */
export interface DevFuseMount extends AsyncDisposable {
  /** The mount point. */
  readonly mountpoint: string;
  /**
   * Resolves when the server loop ends (unmounted by anyone), or at the latest
   * when {@link close} ends (reason "stopped" for readers it had to terminate).
   */
  readonly done: Promise<LoopStats>;
  /**
   * Unmounts its own mount (MNT_DETACH) if the mount point still leads to it
   * (never a mount that covers it), stops the server and closes `/dev/fuse`.
   * Idempotent.
   */
  close(): Promise<void>;
  /**
   * What {@link close} did with the mount, once it has begun: "unmount"ed it,
   * left it "covered" by another mount (or moved) as it was, or found it
   * "gone" already. Null before close.
   */
  readonly stopped: UnmountAction | null;
}

/** The file system type of our mounts (`fuse.` + subtype, as fusermount names them). */
const FSTYPE = "fuse.skiff";
const MS_NOSUID = 2n;
const MS_NODEV = 4n;
const MNT_DETACH = 2;
/** umount2: do not follow a symbolic link at the end of the path (linux/fs.h). */
const UMOUNT_NOFOLLOW = 8;

/** Why `/dev/fuse` mounting cannot work here, or null. */
export function devFuseUnavailable(): string | null {
  if (Deno.uid() !== 0) {
    return "mounting through /dev/fuse needs root (mount(2) without fusermount)";
  }
  try {
    Deno.openSync("/dev/fuse", { read: true, write: true }).close();
  } catch (e) {
    return `cannot open /dev/fuse: ${e instanceof Error ? e.message : e}`;
  }
  return null;
}

/** `path` in single quotes (as a shell would take it), so that an empty or spaced one shows. */
export function quotePath(path: string): string {
  return `'${path.replaceAll("'", `'\\''`)}'`;
}

function isDir(path: string, what: string): void {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch (e) {
    const q = quotePath(path);
    if (e instanceof Deno.errors.NotFound) throw new Error(`${what} ${q} does not exist`);
    throw new Error(`${what} ${q}: ${e instanceof Error ? e.message : e}`);
  }
  if (!st.isDirectory) throw new Error(`${what} ${quotePath(path)} is not a directory`);
}

/** One reader Worker and what it reported. */
interface Reader {
  worker: Worker;
  /** The reader's /dev/fuse fd (the primary's, or a clone). */
  fd: number;
  done: Promise<LoopStats>;
  /**
   * Terminates the Worker and settles `done` (reason "stopped") if it had not
   * settled: a terminated Worker never reports, and a waiter on `done` must not hang.
   */
  stop(): void;
}

/**
 * Starts a reader Worker with `start`; `ready` resolves with its ready message,
 * `done` with its loop's stats.
 */
function startReader(
  start: WorkerStart | HelperStart,
  what: string,
): { reader: Reader; ready: Promise<{ share?: PassthroughShare }> } {
  const worker = new Worker(runtimeModuleUrl("devices/fuse/dev_fuse_worker.ts"), {
    type: "module",
  });
  let settle!: (s: LoopStats) => void;
  let fail!: (e: Error) => void;
  const done = new Promise<LoopStats>((res, rej) => {
    settle = res;
    fail = rej;
  });
  const ready = new Promise<{ share?: PassthroughShare }>((res, rej) => {
    worker.onmessage = (e: MessageEvent) => {
      const m = e.data;
      if (m.type === "ready") res(m);
      else if (m.type === "done") settle(m.stats);
      else {
        const err = new Error(`${what}: ${m.message}`);
        rej(err);
        fail(err);
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      const err = new Error(`${what} worker failed: ${e.message}`);
      rej(err);
      fail(err);
    };
  });
  done.catch(() => {});
  ready.catch(() => {});
  worker.postMessage(start);
  const stop = () => {
    worker.terminate();
    settle({ requests: 0, reason: "stopped" }); // no-op if it reported already
  };
  return { reader: { worker, fd: start.fd, done, stop }, ready };
}

/**
 * Opens a clone of the connection behind `fd` (FUSE_DEV_IOC_CLONE, linux/fuse.h):
 * a second /dev/fuse file of the same connection, non-blocking; -errno if not.
 */
function cloneDevFuse(fd: number): number {
  const cfd = r(sys.openat(-100, cpath("/dev/fuse"), O.RDWR | O.CLOEXEC | O.NONBLOCK, 0));
  if (cfd < 0) return cfd;
  const arg = new Uint32Array([fd]);
  const rc = r(sys.ioctl(cfd, FUSE_DEV_IOC_CLONE, new Uint8Array(arg.buffer)));
  if (rc < 0) {
    sys.close(cfd);
    return rc;
  }
  return cfd;
}

/** Mounts `options.hostDir` at `options.mountpoint` and serves it until closed or unmounted. */
export async function mountDevFuse(options: DevFuseOptions): Promise<DevFuseMount> {
  const {
    hostDir,
    mountpoint,
    maxWrite = 1 << 20,
    layers,
    readers = DEFAULT_READERS,
    readaheadKib = Math.min(DEFAULT_READAHEAD_KIB, Math.floor(maxWrite / 1024)),
    splice = true,
    passthrough = false,
    ...fsOptions
  } = options;
  if (!layers) isDir(hostDir, "HOST_DIR");
  isDir(mountpoint, "MOUNTPOINT");
  if (!Number.isInteger(readers) || readers < 1 || readers > 64) {
    throw new RangeError(`readers ${readers} is not an integer in 1..64`);
  }
  if (!Number.isInteger(readaheadKib) || readaheadKib < 0) {
    throw new RangeError(`readaheadKib ${readaheadKib} is not a whole number`);
  }
  // As /proc/self/mountinfo will show it (symbolic links resolved), looked up before
  // the mount hides the directory.
  const mountPath = Deno.realPathSync(mountpoint);
  const why = devFuseUnavailable();
  if (why) throw new Error(why);
  const fd = r(sys.openat(-100, cpath("/dev/fuse"), O.RDWR | O.CLOEXEC, 0));
  if (fd < 0) throw new Error(`open(/dev/fuse) failed: errno ${-fd}`);

  // Image layers (LayeredFs) keep their state in this thread's objects: one reader.
  const helpers = layers ? 0 : readers - 1;
  // Always a gate: besides waking helpers it shows close() whether the primary is busy.
  const gate = new OverflowGate();
  const { reader: primary, ready } = startReader({
    role: "primary",
    fd,
    hostDir,
    layers,
    options: fsOptions,
    maxWrite,
    gate: gate.buffer,
    splice,
    passthrough,
  }, `FUSE server for ${hostDir}`);
  const all: Reader[] = [primary];
  let share: PassthroughShare | undefined;
  try {
    share = (await ready).share;
  } catch (e) {
    primary.worker.terminate();
    sys.close(fd);
    throw e;
  }

  const opts = [
    `fd=${fd}`,
    "rootmode=40000",
    `user_id=${Deno.uid()}`,
    `group_id=${Deno.gid() ?? 0}`,
    "allow_other",
    "default_permissions",
    `max_read=${maxWrite}`,
  ].join(",");
  const rc = r(
    sys.mount(
      cpath(`skiff:${hostDir}`),
      cpath(mountpoint),
      cpath(FSTYPE),
      MS_NOSUID | MS_NODEV,
      cpath(opts),
    ),
  );
  if (rc < 0) {
    primary.worker.terminate();
    sys.close(fd);
    throw new Error(
      `mount(${mountpoint}, fuse) failed: errno ${-rc}${
        rc === -Errno.EPERM ? " (needs root)" : ""
      }`,
    );
  }

  // Ours, told apart from any mount later put on top of it (or over a parent
  // directory) and from other connections: read now, while it is the newest here.
  let own: MountEntry | null = null;
  try {
    own = newestMount(Deno.readTextFileSync("/proc/self/mountinfo"), mountPath, FSTYPE);
  } catch {
    // no /proc: close() falls back to unmounting by path
  }

  primary.worker.postMessage("serve");
  // READs as large as max_read (readahead.ts); best effort: the default window works
  // too. After INIT: the kernel lowers the window to the INIT reply's max_readahead.
  if (readaheadKib > 0) {
    const inited = await Promise.race([
      gate.published().then(() => true),
      primary.done.then(() => false, () => false),
    ]);
    if (inited) setMountReadahead(mountPath, FSTYPE, readaheadKib);
    else gate.unblock();
  }
  // Helpers clone the connection, which exists only once mounted.
  for (let i = 0; i < helpers && share; i++) {
    const cfd = cloneDevFuse(fd);
    if (cfd < 0) break; // fewer readers; the primary serves everything
    gate.addHelper();
    const { reader } = startReader({
      role: "helper",
      fd: cfd,
      share,
      maxWrite,
      gate: gate.buffer,
      splice,
      passthrough,
    }, `FUSE reader ${i + 2} for ${hostDir}`);
    all.push(reader);
  }

  // Done when every reader is: requests summed, the primary's reason.
  const done = Promise.all(all.map((r) => r.done)).then((stats) => ({
    requests: stats.reduce((n, s) => n + s.requests, 0),
    reason: stats[0].reason,
    byReader: stats.map((s) => s.requests),
  }));
  done.catch(() => {});

  let closed: Promise<void> | null = null;
  let stopped: UnmountAction | null = null;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      stopped = detachOwn(mountPath, own);
      // A teardown can be slow: after `find /usr` the kernel evicted ~139 000 inodes
      // (sending FORGETs) for up to 4 s on a busy machine before the reader saw ENODEV,
      // and the reader's fs.close() of ~10 000 cached fds took 0.4 s. Terminating the
      // reader before that leaks all the share's fds (up to half of RLIMIT_NOFILE):
      // the next mount in this process then fails with EMFILE. So wait while the
      // reader makes progress (reads requests, or has left its loop and is closing).
      let served = gate.served;
      const give = performance.now() + CLOSE_LIMIT_MS;
      // Left mounted (covered): the connection cannot end by itself, do not wait for it.
      while (stopped !== "covered" && !await settlesWithin(done, CLOSE_WAIT_MS)) {
        if (performance.now() > give) break; // progress that never ends is a hang
        if (gate.stopped) continue;
        if (gate.served === served) break;
        served = gate.served;
      }
      if (!await settlesWithin(done, 0)) {
        // Idle for CLOSE_WAIT_MS: files still open on the detached mount keep the
        // connection alive, and closing our fd does not end it while the worker sits
        // in read(); abort it through fusectl (when mounted).
        if (abortOwnConnection(own)) await settlesWithin(done, ABORT_WAIT_MS);
      }
      for (const r of all) {
        r.stop();
        sys.close(r.fd);
      }
    })();
    return closed;
  };
  return {
    mountpoint,
    done,
    close,
    get stopped() {
      return stopped;
    },
    [Symbol.asyncDispose]: close,
  };
}

/** How long {@link DevFuseMount.close} waits for readers that make no progress. */
const CLOSE_WAIT_MS = 5000;
/** The longest {@link DevFuseMount.close} waits for readers that keep making progress. */
const CLOSE_LIMIT_MS = 120_000;
/** How long it waits for the readers to end after aborting the connection. */
const ABORT_WAIT_MS = 2000;

/** Whether `p` settles (either way) within `ms`; the timer does not outlive it. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((res) => t = setTimeout(() => res(false), ms));
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(t);
  }
}

/**
 * Lazily unmounts our own mount if `mountPath` still leads to it, and never a
 * mount that covers it (umount2 acts on the topmost mount at a path, and a
 * lazy unmount of ours would take every mount on top of it along): then ours
 * stays, to be aborted. Without `own` (no /proc), by path as before.
 */
function detachOwn(mountPath: string, own: MountEntry | null): UnmountAction {
  if (!own) {
    sys.umount2(cpath(mountPath), MNT_DETACH | UMOUNT_NOFOLLOW);
    return "unmount";
  }
  let action: UnmountAction;
  try {
    action = unmountAction(
      Deno.readTextFileSync("/proc/self/mountinfo"),
      own,
      resolvedMountId(mountPath),
    );
  } catch {
    return "covered"; // cannot tell: leave mounts alone
  }
  if (action === "unmount") sys.umount2(cpath(mountPath), MNT_DETACH | UMOUNT_NOFOLLOW);
  return action;
}

/**
 * Best effort: aborts our own FUSE connection through fusectl (when mounted),
 * which ends a reader that files still open on the mount keep waiting, and
 * no other connection; returns whether it wrote an abort.
 */
function abortOwnConnection(own: MountEntry | null): boolean {
  const dir = "/sys/fs/fuse/connections";
  let listed: string[];
  try {
    listed = [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return false; // fusectl not mounted
  }
  let aborted = false;
  for (const id of connectionsToAbort(own, listed)) {
    try {
      Deno.writeTextFileSync(`${dir}/${id}/abort`, "1");
      aborted = true;
    } catch {
      // already gone
    }
  }
  return aborted;
}

/** Lazily unmounts `mountpoint` (umount2 MNT_DETACH); returns -errno or 0. */
export function unmount(mountpoint: string): number {
  return r(sys.umount2(cpath(mountpoint), MNT_DETACH));
}
