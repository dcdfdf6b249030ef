/**
 * The library's entry point: a configured micro-VM that runs commands from
 * Deno programs and tests.
 *
 * ```ts
 * await using vm = VirtualMachine.create({ memoryMiB: 256 });
 * const r = await vm.run(["sh", "-c", "uname -r; exit 3"]);
 * console.log(r.code, r.stdoutText);
 * ```
 *
 * Each {@link VirtualMachine.run} boots the configured guest (on the kvm
 * engine, restored from the snapshot cache when one matches) and powers it
 * off when the command ends; disposing the object stops whatever still runs.
 *
 * @module
 */

import { type Engine } from "../engine/types.ts";
import {
  exitCodeOf,
  type ExitStatus,
  type Share,
  type VmConfig,
  type Workload,
} from "../config.ts";
import { SkiffError } from "../errors.ts";
import { defaultRootShare, GUEST_PATH, volumeShare } from "../config.ts";
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

/** Options of {@link VirtualMachine.create}; every field has a default. */
export interface VirtualMachineOptions {
  /** "kvm", "qemu" or "auto" (default): as `skiff run --engine`. */
  engine?: EngineChoice;
  /** An engine instance to use instead (tests, custom engines). */
  engineInstance?: Engine;
  cpus?: number;
  memoryMiB?: number;
  /** Host directories shared with the guest (validated here, before any boot). */
  volumes?: VolumeOptions[];
  /** The guest root: default the host's `/` read-only with a tmpfs overlay; null: the initramfs. */
  root?: Share | null;
  /**
   * An OCI image as the root instead (a reference as `skiff run --image` takes,
   * pulled on the first run when missing, or a {@link prepareImage} result);
   * its config shapes each command (Entrypoint, Cmd, Env, WorkingDir, User).
   */
  image?: string | PreparedImage;
  kernel?: string;
  modules?: string;
  cmdlineExtra?: string;
  hostname?: string;
  /** Engine choice and guest console on stderr. */
  verbose?: boolean;
}

/** Options of one {@link VirtualMachine.run}. */
export interface RunCallOptions {
  /** Bytes for the command's stdin (default: empty, EOF at once). */
  stdin?: string | Uint8Array;
  /** Added to the default environment (PATH, HOME). */
  env?: Record<string, string>;
  /** Working directory in the guest (default "/", or the image's WorkingDir). */
  workdir?: string;
  /** Run as `NAME|UID[:GROUP|GID]` of the image (default: its User, or root). */
  user?: string;
  /** Stops the VM after this many milliseconds (rejects with the abort reason). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What a command did. */
export interface RunResult {
  status: ExitStatus;
  /** The exit code a shell would report (128+N for signal N). */
  code: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  /** stdout decoded as UTF-8. */
  readonly stdoutText: string;
  /** stderr decoded as UTF-8. */
  readonly stderrText: string;
}

function collector(): { stream: WritableStream<Uint8Array>; bytes(): Uint8Array } {
  const chunks: Uint8Array[] = [];
  return {
    stream: new WritableStream({ write: (c) => void chunks.push(c.slice()) }),
    bytes() {
      const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    },
  };
}

/** A configured micro-VM; see the module documentation. */
export class VirtualMachine implements AsyncDisposable {
  /** The VM configuration every run boots. */
  readonly config: VmConfig;
  /** The engine running it ("kvm" or "qemu"). */
  readonly engine: Engine;
  #running = new Set<AbortController>();
  #closed = false;
  #image: string | PreparedImage | null;

  private constructor(config: VmConfig, engine: Engine, image: string | PreparedImage | null) {
    this.config = config;
    this.engine = engine;
    this.#image = image;
    if (image !== null && typeof image !== "string") this.config.root = imageRootShare(image);
  }

  /** The image, pulled on first use; null without one. */
  async #prepared(signal: AbortSignal): Promise<PreparedImage | null> {
    if (typeof this.#image === "string") {
      this.#image = await prepareImage(this.#image, { signal, progress: null });
      this.config.root = imageRootShare(this.#image);
    }
    return this.#image;
  }

  /** Validates the options (shares must exist) and picks the engine; boots nothing yet. */
  static create(options: VirtualMachineOptions = {}): VirtualMachine {
    const volumes = (options.volumes ?? []).map((v, i) =>
      volumeShare(
        { ...v, readOnly: v.readOnly ?? false },
        i,
        Deno.cwd(),
        `volume ${v.hostPath}:${v.guestPath}`,
      )
    );
    const config: VmConfig = {
      kernel: options.kernel,
      modules: options.modules,
      cpus: options.cpus ?? 1,
      memoryMiB: options.memoryMiB ?? 512,
      cmdlineExtra: options.cmdlineExtra ?? "",
      root: options.root === undefined ? defaultRootShare() : options.root,
      volumes,
      net: null,
      hostname: options.hostname ?? "skiff",
      verbose: options.verbose ?? false,
    };
    const engine = options.engineInstance ?? selectEngine(options.engine ?? "auto", {
      log: config.verbose ? (l) => console.error(`skiff: ${l}`) : undefined,
    }).engine;
    return new VirtualMachine(config, engine, options.image ?? null);
  }

  /** Boots the guest, runs `argv`, collects its output, and powers the guest off. */
  async run(argv: string[], o: RunCallOptions = {}): Promise<RunResult> {
    if (this.#closed) throw new SkiffError("this VirtualMachine has been disposed");
    if (argv.length === 0 && this.#image === null) throw new SkiffError("run: no command given");
    const abort = new AbortController();
    this.#running.add(abort);
    const onAbort = () => abort.abort(o.signal?.reason);
    o.signal?.addEventListener("abort", onAbort, { once: true });
    const timer = o.timeoutMs === undefined ? undefined : setTimeout(
      () => abort.abort(new SkiffError(`run timed out after ${o.timeoutMs} ms`)),
      o.timeoutMs,
    );
    const stdout = collector(), stderr = collector();
    const input = typeof o.stdin === "string" ? new TextEncoder().encode(o.stdin) : o.stdin;
    try {
      const image = await this.#prepared(abort.signal);
      let workload: Workload;
      if (image) {
        let cmd;
        try {
          cmd = imageCommand(image, { argv, workdir: o.workdir, user: o.user });
        } catch (e) {
          throw e instanceof ImageRunError ? new SkiffError(e.message) : e;
        }
        workload = {
          argv: cmd.argv,
          env: { ...cmd.env, ...o.env },
          workdir: cmd.workdir,
          ...(cmd.user ? { user: cmd.user } : {}),
        };
      } else {
        workload = {
          argv,
          env: { PATH: GUEST_PATH, HOME: "/", ...o.env },
          workdir: o.workdir ?? "/",
        };
      }
      const status = await this.engine.run(this.config, workload, {
        stdin: input?.length ? ReadableStream.from([input]) : null,
        stdout: stdout.stream,
        stderr: stderr.stream,
      }, abort.signal);
      const out = stdout.bytes(), err = stderr.bytes();
      return {
        status,
        code: exitCodeOf(status),
        stdout: out,
        stderr: err,
        get stdoutText() {
          return new TextDecoder().decode(out);
        },
        get stderrText() {
          return new TextDecoder().decode(err);
        },
      };
    } catch (e) {
      if (abort.signal.aborted && abort.signal.reason instanceof Error) throw abort.signal.reason;
      throw e;
    } finally {
      clearTimeout(timer);
      o.signal?.removeEventListener("abort", onAbort);
      this.#running.delete(abort);
    }
  }

  /** Stops every run still in progress; later runs are refused. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#closed = true;
    for (const a of this.#running) a.abort(new SkiffError("VirtualMachine disposed"));
    // Give the engines a moment to release their VMs before returning.
    while (this.#running.size > 0) await new Promise((r) => setTimeout(r, 10));
  }
}
