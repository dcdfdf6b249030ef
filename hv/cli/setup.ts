/**
 * `skiff setup`: makes `skiff run` work on this machine. It fetches the
 * default guest kernel when none is cached (`skiff kernel fetch`, with its
 * progress), and where no engine can run guests without QEMU — no /dev/kvm,
 * or an emulated one such as kvm_pvm (see select_engine.ts) — installs
 * Debian's `qemu-system-x86` with apt, as root or through sudo. Without
 * either it prints the one command to run as root and fails (exit 125).
 * What is already in place is left alone, so running it again does nothing.
 *
 * @module
 */

import { EXIT_FAILURE, SkiffError } from "../errors.ts";
import {
  type HostProbe,
  kvmUnusableReason,
  qemuUnusableReason,
  realHost,
} from "../library/select_engine.ts";
import {
  AptListsError,
  fetchKernel,
  type FetchOptions,
  findKernel,
  type KernelInfo,
} from "../kernel/mod.ts";

/** The Debian package that provides `qemu-system-x86_64`. */
export const QEMU_PACKAGE = "qemu-system-x86";

/** The commands `skiff setup` runs as root to install QEMU. */
export const QEMU_INSTALL: readonly (readonly string[])[] = [
  ["apt-get", "update"],
  ["apt-get", "install", "-y", "--no-install-recommends", QEMU_PACKAGE],
];

/** `apt-get update && apt-get install …`: what a user without root or sudo is told to run as root. */
export const QEMU_INSTALL_TEXT = QEMU_INSTALL.map((c) => c.join(" ")).join(" && ");

/** What {@link setup} touches (injectable for tests). */
export interface SetupDeps {
  /** /dev/kvm and PATH. */
  host: HostProbe;
  /** The effective user id (0 is root). */
  uid: number;
  /** The cached default kernel; throws when none is. */
  findKernel(): Promise<KernelInfo>;
  /** `skiff kernel fetch` (with progress on stderr). */
  fetchKernel(opts?: FetchOptions): Promise<unknown>;
  /** Runs `argv` with its output on stderr; resolves to the exit code. */
  run(argv: string[]): Promise<number>;
  /** One line of progress (stderr). */
  log(line: string): void;
}

async function runToStderr(argv: string[]): Promise<number> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: { DEBIAN_FRONTEND: "noninteractive" },
      stdin: "inherit",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 127;
    throw e;
  }
  // apt's progress goes to stdout; skiff's stdout stays clean.
  await child.stdout.pipeTo(Deno.stderr.writable, { preventClose: true, preventAbort: true });
  return (await child.status).code;
}

/** The real machine. */
export function realSetupDeps(): SetupDeps {
  return {
    host: realHost,
    uid: Deno.uid() ?? -1,
    findKernel: () => findKernel(),
    fetchKernel: (opts) => fetchKernel(opts),
    run: runToStderr,
    log: (line) => console.error(line),
  };
}

/**
 * Sets the machine up for `skiff run`; resolves to the exit code (0, or
 * {@link EXIT_FAILURE} with one line saying what to do).
 */
export async function setup(deps: SetupDeps = realSetupDeps()): Promise<number> {
  const { host, log } = deps;
  // Root runs apt itself; anyone else goes through sudo when it is installed.
  const asRoot = deps.uid === 0 ? [] : host.which("sudo") ? ["sudo"] : null;
  let updated = false;
  const aptUpdate = async () => {
    if (updated || asRoot === null) return false;
    updated = true;
    log(`skiff setup: ${[...asRoot, "apt-get", "update"].join(" ")}`);
    const code = await deps.run([...asRoot, "apt-get", "update"]);
    if (code !== 0) throw new SkiffError(`apt-get update failed (exit ${code})`);
    return true;
  };

  // 1. An engine that can run guests.
  const kvmWhy = kvmUnusableReason(host);
  let qemuMissing = false;
  if (kvmWhy === null) {
    log("skiff setup: /dev/kvm runs guests natively: the kvm engine needs no QEMU");
  } else if (qemuUnusableReason(host) === null) {
    log(`skiff setup: QEMU is installed; guests run on the qemu engine (${kvmWhy})`);
  } else if (asRoot === null) {
    qemuMissing = true; // reported after the kernel, which needs no root
  } else {
    log(`skiff setup: ${kvmWhy}, so guests run on QEMU: installing ${QEMU_PACKAGE}`);
    await aptUpdate();
    const argv = [...asRoot, ...QEMU_INSTALL[1]];
    log(`skiff setup: ${argv.join(" ")}`);
    const code = await deps.run(argv);
    if (code !== 0) {
      throw new SkiffError(`${argv.join(" ")} failed (exit ${code})`);
    }
    const still = qemuUnusableReason(host);
    if (still) throw new SkiffError(`${QEMU_PACKAGE} was installed but ${still}`);
    log(`skiff setup: ${QEMU_PACKAGE} installed`);
  }

  // 2. The default guest kernel.
  let kernel: KernelInfo | null = null;
  try {
    kernel = await deps.findKernel();
  } catch {
    // none cached: fetch it
  }
  if (kernel) {
    log(`skiff setup: kernel ${kernel.version} is cached (\`skiff kernel fetch\` updates it)`);
  } else {
    try {
      await deps.fetchKernel();
    } catch (e) {
      // A fresh machine may have no apt package lists yet.
      if (!(e instanceof AptListsError) || !(await aptUpdate())) throw e;
      await deps.fetchKernel();
    }
  }

  if (qemuMissing) {
    log(
      `skiff setup: ${kvmWhy} and QEMU is not installed; installing it needs root: ` +
        `run \`${QEMU_INSTALL_TEXT}\` as root, then \`skiff setup\` again`,
    );
    return EXIT_FAILURE;
  }
  log("skiff setup: ready: try `skiff run -- uname -a`");
  return 0;
}
