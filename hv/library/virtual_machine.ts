/**
 * skiff from Deno programs and tests: a booted micro-VM that runs commands,
 * shaped like `Deno.Command`.
 *
 * ```ts
 * import { VirtualMachine } from "../../mod.ts";
 *
 * await using vm = await VirtualMachine.boot({ memoryMiB: 256 });
 * const r = await vm.exec(["sh", "-c", "uname -s; exit 3"]);
 * console.log(r.code, r.stdoutText); // 3 "Linux\n"
 * ```
 *
 * {@link VirtualMachine.boot} restores the configured guest from the
 * snapshot cache when it holds one (else cold-boots it and captures it), with
 * the shares, network and host name set up; commands then run in the same
 * VM until it is stopped or disposed. {@link VirtualMachine.snapshot}
 * captures a running VM and {@link VirtualMachine.restore} starts any number
 * of independent copies of it.
 *
 * @module
 */

import type {
  Engine,
  ExecResult,
  GuestProcess,
  GuestUser,
  RunningVm,
  SnapshotRef,
  VmOrigin,
  VmStats,
} from "../engine/types.ts";
import {
  checkHostname,
  defaultRootShare,
  GUEST_PATH,
  MAX_CPUS,
  MAX_MEMORY_MIB,
  MIN_MEMORY_MIB,
  type NetOptions,
  type PortForward,
  type Share,
  type VmConfig,
  volumeShare,
} from "../config.ts";
import { ConfigError, SkiffError } from "../errors.ts";
import { checkPublishRule, publishOption, show } from "../../devices/net/config.ts";
import {
  imageCommand,
  imageRootShare,
  ImageRunError,
  type PreparedImage,
  prepareImage,
} from "../../image/run.ts";
import { type EngineChoice, selectEngine } from "./select_engine.ts";

/** A host directory for the guest. */
export interface VolumeOptions {
  hostPath: string;
  guestPath: string;
  /** Default false. */
  readOnly?: boolean;
}

/** The guest network: skiff's user-mode stack (guest 10.42.0.2, gateway and DNS 10.42.0.1). */
export interface NetworkOptions {
  /** The host's own loopback reachable at 10.42.0.1 (default false). */
  hostLoopback?: boolean;
  /**
   * Host ports forwarded into the guest, as `skiff run --publish`: `hostPort`
   * 0 to 65535 (0: the OS picks one, see
   * {@link VirtualMachineOptions.onNotice}), `guestPort` 1 to 65535,
   * `hostIp` an IPv4 address (default "127.0.0.1"), `protocol` "tcp"
   * (default) or "udp". A bad rule is a `ConfigError` before boot.
   */
  publish?: (
    & Omit<PortForward, "hostIp" | "protocol">
    & Partial<Pick<PortForward, "hostIp" | "protocol">>
  )[];
}

/** Options of {@link VirtualMachine.boot}; every field has a default. */
export interface VirtualMachineOptions {
  /** "kvm", "qemu" or "auto" (default): as `skiff run --engine`. */
  engine?: EngineChoice;
  /** An engine instance to use instead (tests, custom engines). */
  engineInstance?: Engine;
  /** vCPUs: a whole number from 1 to 255 (default 1). */
  cpus?: number;
  /**
   * Guest RAM in MiB: a whole number from 64 to 65536 (default 512). The
   * default Debian kernel needs about 128; 64 is for a kernel of one's own.
   */
  memoryMiB?: number;
  /**
   * Host directories shared with the guest (validated here, before any boot):
   * the guest path absolute, and not `/`, `/proc`, `/sys` or `/dev` itself.
   */
  volumes?: VolumeOptions[];
  /** The guest root: default the host's `/` read-only with a tmpfs overlay; null: the initramfs. */
  root?: Share | null;
  /**
   * An OCI image as the root instead (a reference as `skiff run --image` takes,
   * pulled when missing, or a `prepareImage` result); its config gives each
   * command's defaults (Entrypoint, Env, WorkingDir, User).
   */
  image?: string | PreparedImage;
  /** The network (true: the defaults); default none (loopback only). */
  net?: boolean | NetworkOptions;
  /** Kernel (bzImage or ELF vmlinux) instead of the cached Debian one; not empty. */
  kernel?: string;
  /** Modules directory for `kernel`; not empty. */
  modules?: string;
  /** Appended to the kernel command line. */
  cmdlineExtra?: string;
  /** Guest host name: 1 to 64 bytes, no whitespace or control characters (default "skiff"). */
  hostname?: string;
  /** Use the snapshot cache (default true). */
  snapshot?: boolean;
  /** Engine choice, hit or miss, and the guest console on stderr. */
  verbose?: boolean;
  /** Aborting stops the boot. */
  signal?: AbortSignal;
  /**
   * Receives the lines `skiff run` prints without `--verbose`: the host port
   * the OS picked for each `net.publish` rule of `hostPort: 0`, as
   * `published 127.0.0.1:41234 → guest :80/tcp`. Default: they are dropped.
   */
  onNotice?: (line: string) => void;
}

/** Options of {@link VirtualMachine.spawn}. */
export interface SpawnOptions {
  /** Added to the default environment (PATH, HOME; an image's Env). */
  env?: Record<string, string>;
  /** Working directory (default "/", or the image's WorkingDir). */
  cwd?: string;
  /** Run as `NAME|UID[:GROUP|GID]` (of the image, or the host's user database), or a uid/gid. */
  user?: string | GuestUser;
  /** "piped" gives a writable `stdin`; "null" (default) is /dev/null. */
  stdin?: "piped" | "null";
  /** "piped" (default) or "null". */
  stdout?: "piped" | "null";
  /** "piped" (default), "null", or "stdout" (merged into stdout). */
  stderr?: "piped" | "null" | "stdout";
  /** Aborting kills the process. */
  signal?: AbortSignal;
}

/** Options of {@link VirtualMachine.exec}. */
export interface ExecOptions extends Omit<SpawnOptions, "stdin" | "stdout" | "stderr"> {
  /** Bytes or text for stdin (default: none, EOF at once). */
  stdin?: Uint8Array | string;
  /** Kill the command after this many milliseconds (rejects with a `VmTimeoutError`). */
  timeoutMs?: number;
}

/** A guest process's streams and status; see {@link VirtualMachine.spawn}. */
export type ChildProcess = GuestProcess;
/** What {@link VirtualMachine.exec} resolves to. */
export type CommandOutput = ExecResult;

/** The command defaults of a VM: an image's, or the plain ones. */
interface Defaults {
  env: Record<string, string>;
  cwd: string;
  user: GuestUser | null;
  image: PreparedImage | null;
}

/** A booted micro-VM; see the module documentation. */
export class VirtualMachine implements AsyncDisposable {
  readonly #vm: RunningVm;
  readonly #defaults: Defaults;

  private constructor(vm: RunningVm, defaults: Defaults) {
    this.#vm = vm;
    this.#defaults = defaults;
  }

  /** The engine running it ("kvm" or "qemu"). */
  get engine(): "kvm" | "qemu" {
    return this.#vm.engine;
  }

  /** The configuration it was booted with. */
  get config(): VmConfig {
    return this.#vm.config;
  }

  /** Whether it was restored or cold-booted, the cache key, and how long it took to be ready. */
  get origin(): VmOrigin {
    return this.#vm.origin;
  }

  /** Resolves when the VM has stopped (rejects on a VM failure). */
  get stopped(): Promise<void> {
    return this.#vm.stopped;
  }

  /** Validates `options` into a configuration and the engine (no VM yet). */
  static async #prepare(options: VirtualMachineOptions) {
    const { volumes, net } = checkOptions(options);
    let image: PreparedImage | null = null;
    if (options.image !== undefined) {
      image = typeof options.image === "string"
        ? await prepareImage(options.image, { signal: options.signal, progress: null })
        : options.image;
    }
    const config: VmConfig = {
      kernel: options.kernel,
      modules: options.modules,
      cpus: options.cpus ?? 1,
      memoryMiB: options.memoryMiB ?? 512,
      cmdlineExtra: options.cmdlineExtra ?? "",
      root: image
        ? imageRootShare(image)
        : options.root === undefined
        ? defaultRootShare()
        : options.root,
      volumes,
      net,
      hostname: options.hostname ?? "skiff",
      verbose: options.verbose ?? false,
    };
    const engine = options.engineInstance ?? (await selectEngine(options.engine ?? "auto", {
      log: config.verbose ? (l) => console.error(`skiff: ${l}`) : undefined,
    })).engine;
    let defaults: Defaults = { env: { PATH: GUEST_PATH, HOME: "/" }, cwd: "/", user: null, image };
    if (image) {
      try {
        const cmd = imageCommand(image, { argv: ["true"] });
        defaults = { env: cmd.env, cwd: cmd.workdir, user: cmd.user, image };
      } catch (e) {
        throw e instanceof ImageRunError ? new ConfigError(e.message) : e;
      }
    }
    return { config, engine, defaults };
  }

  /** Boots a VM for `options` (restored from the snapshot cache when it holds one). */
  static async boot(options: VirtualMachineOptions = {}): Promise<VirtualMachine> {
    const { config, engine, defaults } = await VirtualMachine.#prepare(options);
    const vm = await engine.boot(config, {
      signal: options.signal,
      snapshot: options.snapshot,
      notice: options.onNotice,
    });
    return new VirtualMachine(vm, defaults);
  }

  /**
   * Starts a VM from a snapshot {@link VirtualMachine.snapshot} took: it
   * continues where it was captured (its files, its processes' effects), with
   * the snapshot's shares and network, or `options`' where it gives them (the
   * kernel, memory and vCPUs are the snapshot's). Restore one snapshot as
   * often as you like: each copy has its own state.
   */
  static async restore(
    snapshot: SnapshotRef,
    options: VirtualMachineOptions = {},
  ): Promise<VirtualMachine> {
    const { config: given, engine, defaults } = await VirtualMachine.#prepare({
      engine: snapshot.engine,
      ...options,
    });
    // What a restore cannot change comes from the snapshot; shares, network
    // and host name from `options` where it gives them.
    const s = snapshot.config;
    const config: VmConfig = {
      ...given,
      kernel: s.kernel,
      modules: s.modules,
      cpus: s.cpus,
      memoryMiB: s.memoryMiB,
      cmdlineExtra: s.cmdlineExtra,
      root: options.root !== undefined || options.image !== undefined ? given.root : s.root,
      volumes: options.volumes !== undefined ? given.volumes : s.volumes,
      net: options.net !== undefined ? given.net : s.net,
      hostname: options.hostname ?? s.hostname,
    };
    if (engine.name !== snapshot.engine) {
      throw new ConfigError(
        `snapshot ${snapshot.dir} is of the ${snapshot.engine} engine, not ${engine.name}`,
      );
    }
    const vm = await engine.restore(snapshot, config, {
      signal: options.signal,
      notice: options.onNotice,
    });
    return new VirtualMachine(vm, defaults);
  }

  /** Boots a VM for `options`, runs `argv`, and stops the VM: `boot` + `exec` + `stop`. */
  static async run(
    argv: readonly string[],
    options: VirtualMachineOptions & ExecOptions = {},
  ): Promise<CommandOutput> {
    await using vm = await VirtualMachine.boot(options);
    return await vm.exec(argv, options);
  }

  #user(u: string | GuestUser | undefined): GuestUser | undefined {
    if (u === undefined) return this.#defaults.user ?? undefined;
    if (typeof u !== "string") return u;
    const image = this.#defaults.image;
    try {
      if (image) {
        const cmd = imageCommand(image, { argv: ["true"], user: u });
        return cmd.user ?? undefined;
      }
    } catch (e) {
      throw e instanceof ImageRunError ? new ConfigError(e.message) : e;
    }
    throw new ConfigError(`user ${u}: a user name needs an image; give { uid, gid } instead`);
  }

  #argv(argv: readonly string[]): readonly string[] {
    const image = this.#defaults.image;
    if (!image) {
      if (argv.length === 0) throw new SkiffError("no command given");
      return argv;
    }
    try {
      return imageCommand(image, { argv: [...argv] }).argv;
    } catch (e) {
      throw e instanceof ImageRunError ? new ConfigError(e.message) : e;
    }
  }

  /**
   * Starts `argv` with its own streams (`stdin`, `stdout`, `stderr` as Web
   * streams with backpressure) and resolves once it runs; its `status`
   * settles when it ends. Dispose it (`await using`) to kill it if still running.
   * Bad arguments (no command, a user name without an image) reject it.
   */
  async spawn(argv: readonly string[], o: SpawnOptions = {}): Promise<ChildProcess> {
    const user = this.#user(o.user);
    return await this.#vm.spawn(this.#argv(argv), {
      env: { ...this.#defaults.env, ...o.env },
      cwd: o.cwd ?? this.#defaults.cwd,
      ...(user ? { user } : {}),
      stdin: o.stdin,
      stdout: o.stdout,
      stderr: o.stderr,
      signal: o.signal,
    });
  }

  /** Runs `argv` to its end and collects its output (bytes and text). */
  async exec(argv: readonly string[], o: ExecOptions = {}): Promise<CommandOutput> {
    const user = this.#user(o.user);
    return await this.#vm.exec(this.#argv(argv), {
      env: { ...this.#defaults.env, ...o.env },
      cwd: o.cwd ?? this.#defaults.cwd,
      ...(user ? { user } : {}),
      stdin: o.stdin,
      timeoutMs: o.timeoutMs,
      signal: o.signal,
    });
  }

  /** Writes `data` to `path` in the guest (byte-exact, any size; `mode` default 0o644). */
  writeFile(
    path: string,
    data: Uint8Array | string | ReadableStream<Uint8Array>,
    o: { mode?: number; signal?: AbortSignal } = {},
  ): Promise<void> {
    return this.#vm.writeFile(path, data, o);
  }

  /**
   * Reads `path` from the guest; a file longer than `maxBytes` (default
   * 1 GiB) rejects with `FileTooLargeError` instead of filling host memory.
   */
  readFile(
    path: string,
    o: { maxBytes?: number; signal?: AbortSignal } = {},
  ): Promise<Uint8Array> {
    return this.#vm.readFile(path, o);
  }

  /** Guest memory in use and in all (bytes), CPU time since boot (ms), process count. */
  stats(o: { signal?: AbortSignal } = {}): Promise<VmStats> {
    return this.#vm.stats(o);
  }

  /**
   * Captures the running VM — into `dir`, or the snapshot cache — and lets
   * it go on; {@link VirtualMachine.restore} starts copies of it. One in the
   * cache is removed, as any entry, once the cache is over its size limit
   * and it is the least recently used; give `dir` to keep it.
   */
  snapshot(o: { dir?: string; signal?: AbortSignal } = {}): Promise<SnapshotRef> {
    return this.#vm.snapshot(o);
  }

  /** Stops the VM and releases everything. Idempotent. */
  stop(): Promise<void> {
    return this.#vm.stop();
  }

  /** {@link stop} for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** `v` if it is a whole number in min..max; else a {@link ConfigError} naming `name`. */
function wholeNumber(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`${name}: expected a whole number from ${min} to ${max}, got ${show(v)}`);
  }
  return v;
}

/** `v` if it is undefined or a non-empty string; else a {@link ConfigError} naming `name`. */
function optionalPath(name: string, v: unknown): string | undefined {
  if (v !== undefined && (typeof v !== "string" || v === "")) {
    throw new ConfigError(`${name}: expected a non-empty path, got ${show(v)}`);
  }
  return v;
}

/**
 * Checks {@link VirtualMachineOptions} that need neither an engine nor an
 * image: every bad value is a one-line {@link ConfigError} naming the
 * option, thrown before anything starts. Returns the volumes' shares and the
 * network (publish rules with their defaults).
 */
export function checkOptions(
  options: VirtualMachineOptions,
): { volumes: Share[]; net: NetOptions | null } {
  if (typeof options !== "object" || options === null) {
    throw new ConfigError(`options: expected an object, got ${show(options)}`);
  }
  if (options.cpus !== undefined) wholeNumber("cpus", options.cpus, 1, MAX_CPUS);
  if (options.memoryMiB !== undefined) {
    wholeNumber("memoryMiB", options.memoryMiB, MIN_MEMORY_MIB, MAX_MEMORY_MIB);
  }
  optionalPath("kernel", options.kernel);
  optionalPath("modules", options.modules);
  if (options.cmdlineExtra !== undefined && typeof options.cmdlineExtra !== "string") {
    throw new ConfigError(`cmdlineExtra: expected a string, got ${show(options.cmdlineExtra)}`);
  }
  if (options.hostname !== undefined) checkHostname(options.hostname, "hostname");
  const given = options.volumes ?? [];
  if (!Array.isArray(given)) {
    throw new ConfigError(
      `volumes: expected an array of { hostPath, guestPath }, got ${show(given)}`,
    );
  }
  const volumes = given.map((v: VolumeOptions, i) => {
    const what = `volumes[${i}]`;
    if (typeof v !== "object" || v === null) {
      throw new ConfigError(`${what}: expected { hostPath, guestPath }, got ${show(v)}`);
    }
    for (const key of ["hostPath", "guestPath"] as const) {
      if (typeof v[key] !== "string" || v[key] === "") {
        throw new ConfigError(`${what}: ${key}: expected a non-empty path, got ${show(v[key])}`);
      }
    }
    if (v.readOnly !== undefined && typeof v.readOnly !== "boolean") {
      throw new ConfigError(`${what}: readOnly: expected a boolean, got ${show(v.readOnly)}`);
    }
    return volumeShare(
      { hostPath: v.hostPath, guestPath: v.guestPath, readOnly: v.readOnly ?? false },
      i,
      Deno.cwd(),
      `${what} ${v.hostPath}:${v.guestPath}`,
    );
  });
  let net: NetOptions | null = null;
  if (options.net === true) net = { hostLoopback: false, publish: [] };
  else if (options.net !== undefined && options.net !== false) {
    const n = options.net;
    if (typeof n !== "object" || n === null) {
      throw new ConfigError(`net: expected a boolean or { hostLoopback, publish }, got ${show(n)}`);
    }
    if (n.hostLoopback !== undefined && typeof n.hostLoopback !== "boolean") {
      throw new ConfigError(`net.hostLoopback: expected a boolean, got ${show(n.hostLoopback)}`);
    }
    const publish = n.publish ?? [];
    if (!Array.isArray(publish)) {
      throw new ConfigError(`net.publish: expected an array of rules, got ${show(publish)}`);
    }
    net = {
      hostLoopback: n.hostLoopback ?? false,
      publish: publish.map((p, i) => {
        try {
          const r = checkPublishRule(
            typeof p === "object" && p !== null ? { ...p, proto: p.protocol } : p,
            `net.publish[${i}]`,
          );
          return publishOption(r);
        } catch (e) {
          throw new ConfigError((e as Error).message);
        }
      }),
    };
  }
  return { volumes, net };
}
