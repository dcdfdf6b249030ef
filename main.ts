/**
 * skiff's command line: parses arguments, calls the library, maps errors to
 * exit codes. Each subcommand is one entry in {@link COMMANDS}.
 *
 * Exit codes of skiff itself (the guest command's own code passes through):
 * - 124: the `--timeout` expired
 * - 125: skiff failed (bad flags, missing kernel, VM failure) — one line on stderr
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";

import { EXIT_FAILURE, EXIT_TIMEOUT } from "./hv/errors.ts";
import { InterruptedError } from "./hv/interrupt.ts";
export { EXIT_FAILURE, EXIT_TIMEOUT };

/** A command-line mistake; printed as one line with a hint to `--help`. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** One subcommand. */
interface Command {
  /** One line for the command list. */
  summary: string;
  /** Full help text shown by `skiff CMD --help`. */
  help: string;
  /** Runs the command; resolves to the process exit code. */
  run(args: string[]): Promise<number>;
  /**
   * The part of `args` that is skiff's (where `--help` asks for this help);
   * the rest belongs to a guest command. Default: all of `args`.
   */
  ownArgs?(args: string[]): string[];
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * parseArgs in strict mode, turning its errors into one-line
 * {@link UsageError}s. A value that looks like a negative number is taken as
 * the value of the option before it (`--cpus -1` as `--cpus=-1`), so the
 * range check names it: parseArgs would call it ambiguous, and no skiff
 * option looks like a number.
 */
export function parseFlags<O extends Options>(
  args: string[],
  options: O,
  allowPositionals = false,
) {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      joined.push(...args.slice(i));
      break;
    }
    const name = a.startsWith("--") && !a.includes("=") ? a.slice(2) : undefined;
    if (name && options[name]?.type === "string" && /^-[0-9.]/.test(args[i + 1] ?? "")) {
      joined.push(`${a}=${args[++i]}`);
    } else {
      joined.push(a);
    }
  }
  try {
    return parseArgs({ args: joined, options, allowPositionals, strict: true });
  } catch (e) {
    throw new UsageError(parseArgsMessage(e as Error & { code?: string }));
  }
}

/**
 * One line for a parseArgs error: its unknown-option hint has an unbalanced
 * quote (`as in '-- "--x"`) and its ambiguous-value message spans three lines.
 */
function parseArgsMessage(e: Error & { code?: string }): string {
  const unknown = e.message.match(/^Unknown option '([^']*)'/);
  // (parseArgs's hint to pass it after '--' is not true of every command: fuse
  // mount takes no more arguments there.)
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && unknown) {
    return `unknown option '${unknown[1]}'`;
  }
  const ambiguous = e.message.match(/^Option '([^']*)' argument is ambiguous/);
  if (ambiguous) {
    return `${ambiguous[1]} needs a value (one that starts with '-' is written ${
      ambiguous[1]
    }=-VALUE)`;
  }
  return e.message.split("\n").join(" ");
}

/**
 * Where a command's own options end in `args`: at `--` (its index) or at the
 * first argument that is neither an option nor an option's value. What
 * follows belongs to the guest command, so `skiff run ls --help` runs
 * `ls --help`. `optionalValue` names options whose value may be left out
 * (`--net` alone means `--net=on`), which therefore never take the next
 * argument as their value.
 */
export function optionsEnd<O extends Options>(
  args: string[],
  options: O,
  optionalValue: Record<string, string> = {},
): number {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--" || !a.startsWith("-")) return i;
    const name = a.replace(/^--?/, "").split("=")[0];
    if (!a.includes("=") && options[name]?.type === "string" && optionalValue[name] === undefined) {
      i++;
    }
  }
  return args.length;
}

/**
 * Splits `OPTIONS [--] CMD ARGS…` at {@link optionsEnd}, so `skiff run ls -l`
 * runs `ls -l`, and parses the options.
 */
export function splitCommand<O extends Options>(
  args: string[],
  options: O,
  optionalValue: Record<string, string> = {},
) {
  const end = optionsEnd(args, options, optionalValue);
  const command = args[end] === "--" ? args.slice(end + 1) : args.slice(end);
  // `--net` alone means `--net=on` (parseArgs has no optional option values).
  const own = args.slice(0, end).map((a) =>
    a.startsWith("--") && optionalValue[a.slice(2)] !== undefined
      ? `${a}=${optionalValue[a.slice(2)]}`
      : a
  );
  const { values } = parseFlags(own, options);
  return { values, command };
}

/**
 * Refuses an empty value (`--kernel ""`) for the options in `expected`
 * (option name → what its value names, as the help writes it): an empty path
 * or name would otherwise be taken as "not given" or as the current
 * directory, silently. Options whose value is appended text
 * (`--cmdline-extra`) are not listed.
 */
export function refuseEmpty(
  values: Record<string, unknown>,
  expected: Record<string, string>,
): void {
  for (const [name, what] of Object.entries(expected)) {
    if (values[name] === "") {
      throw new UsageError(`--${name} '': expected ${what}, not an empty value`);
    }
  }
}

/** The path- and name-valued options of `skiff run` and `skiff boot` (see {@link refuseEmpty}). */
const RUN_NONEMPTY = {
  kernel: "PATH",
  modules: "DIR",
  workdir: "DIR",
  image: "REF",
  user: "NAME|UID[:GROUP|GID]",
  "console-log": "FILE",
};

/** `skiff run`'s options (before the guest command). */
const RUN_OPTIONS = {
  engine: { type: "string" },
  cpus: { type: "string" },
  memory: { type: "string" },
  env: { type: "string", multiple: true },
  workdir: { type: "string" },
  volume: { type: "string", multiple: true },
  timeout: { type: "string" },
  kernel: { type: "string" },
  modules: { type: "string" },
  "cmdline-extra": { type: "string" },
  hostname: { type: "string" },
  snapshot: { type: "boolean" },
  "no-snapshot": { type: "boolean" },
  verbose: { type: "boolean" },
  net: { type: "string" },
  publish: { type: "string", multiple: true },
  image: { type: "string" },
  user: { type: "string" },
} as const satisfies Options;
/** `--net` alone means `--net=on`. */
const RUN_OPTIONAL_VALUES = { net: "on" };

const COMMANDS: Record<string, Command> = {
  setup: {
    summary: "make `skiff run` work here: fetch the default kernel, install QEMU if needed",
    help: [
      "Usage: skiff setup",
      "",
      "Gets this machine ready for `skiff run`, doing only what is not done yet:",
      "- fetches the default guest kernel when none is cached (as `skiff kernel fetch` does:",
      "  Debian's linux-image-cloud-amd64 through apt-get download, with progress on stderr);",
      "- where /dev/kvm cannot run guests natively (absent, or emulated such as kvm_pvm) and",
      "  qemu-system-x86_64 is missing, installs Debian's qemu-system-x86 with apt-get, as",
      "  root or through sudo (running `apt-get update` first, also when apt does not know",
      "  the kernel package yet).",
      "Without root or sudo it prints the command to run as root and exits 125. Running it",
      "again changes nothing; `skiff kernel fetch` updates the kernel.",
    ].join("\n"),
    async run(args) {
      parseFlags(args, {});
      const { setup } = await import("./hv/cli/setup.ts");
      return await setup();
    },
  },
  init: {
    summary: "write skiff's generated guest init (a static x86-64 ELF)",
    help: [
      "Usage: skiff init build --out FILE",
      "",
      "Writes the one-shot guest init: a static ELF64 x86-64 executable generated by skiff (no",
      "C toolchain). As /init of an initramfs it reads its command record from /skiff/record;",
      "see `skiff initramfs build` and init/RECORD.md.",
    ].join("\n"),
    async run(args) {
      const [sub, ...rest] = args;
      if (sub !== "build") {
        throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected build");
      }
      const { values } = parseFlags(rest, { out: { type: "string" } });
      if (!values.out) throw new UsageError("--out FILE is required");
      const { buildInitElf } = await import("./init/mod.ts");
      await Deno.writeFile(values.out, buildInitElf(), { mode: 0o755 });
      return 0;
    },
  },
  initramfs: {
    summary: "write a gzip'd cpio initramfs with skiff's init, modules and a command",
    help: [
      "Usage: skiff initramfs build --out FILE [--kernel PATH] [--modules DIR] [--root-tag TAG]",
      "                             [--hostname NAME] [--cwd DIR] [-- CMD ARGS…]",
      "",
      "Writes a gzip'd cpio (newc) initramfs: /init (skiff's init), the kernel modules it loads",
      "(virtio_mmio, virtio_console, fuse, virtiofs, overlay and their dependencies, from the",
      "kernel's modules.dep), /dev/console and /skiff/record with the one-shot command",
      "(default /bin/sh). --root-tag mounts that virtio-fs tag read-only as the root under a",
      "tmpfs overlay; without it the command runs on the initramfs. The command's stdio and",
      "its status line use the virtio-console ports skiff.stdin/stdout/stderr/status.",
    ].join("\n"),
    async run(args) {
      const [sub, ...rest] = args;
      if (sub !== "build") {
        throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected build");
      }
      const dd = rest.indexOf("--");
      const command = dd < 0 ? [] : rest.slice(dd + 1);
      const { values } = parseFlags(dd < 0 ? rest : rest.slice(0, dd), {
        out: { type: "string" },
        kernel: { type: "string" },
        modules: { type: "string" },
        "root-tag": { type: "string" },
        hostname: { type: "string" },
        cwd: { type: "string" },
      });
      if (!values.out) throw new UsageError("--out FILE is required");
      refuseEmpty(values, { kernel: "PATH", modules: "DIR", "root-tag": "TAG", cwd: "DIR" });
      if (values.hostname !== undefined) {
        const { checkHostname } = await import("./hv/config.ts");
        checkHostname(values.hostname);
      }
      const { buildInitramfs, defaultInitConfig } = await import("./init/mod.ts");
      const { findKernel } = await import("./hv/kernel/mod.ts");
      const config = defaultInitConfig(command.length ? command : undefined);
      config.rootTag = values["root-tag"] ?? null;
      if (values.hostname !== undefined) config.hostname = values.hostname;
      if (values.cwd !== undefined) config.command.cwd = values.cwd;
      const kernel = await findKernel({ kernel: values.kernel, modules: values.modules });
      await Deno.writeFile(values.out, await buildInitramfs({ kernel, config }));
      return 0;
    },
    ownArgs: (args) => args.includes("--") ? args.slice(0, args.indexOf("--")) : args,
  },
  boot: {
    summary: "an interactive guest shell, or (--console-log) the kernel's boot log on skiff's KVM",
    help: [
      "Usage: skiff boot [--engine E] [--cpus N] [--memory MiB] [--volume HOST:GUEST[:ro|:rw]]…",
      "                  [--kernel PATH] [--modules DIR] [--cmdline-extra STR] [--verbose]",
      "       skiff boot --console-log FILE --timeout SECONDS [--kernel PATH] [--modules DIR]",
      "                  [--cpus N] [--memory MiB] [--cmdline-extra STR]",
      "",
      "Without --console-log: an interactive shell in a guest set up as for `skiff run` (host /",
      "read-only with a tmpfs overlay, the current directory shared), on the guest's serial",
      "console /dev/ttyS0 with this terminal in raw mode (restored on exit); exits with the",
      "shell's code when it exits and the guest powers off. Input that is not a terminal ends",
      "the shell at its end, as Ctrl-D would. The options mean what they mean for `skiff run`",
      "(--engine, default auto; --verbose says which engine runs and shows the guest console);",
      "the kvm engine has no interactive console yet.",
      "",
      "With --console-log:",
      "Boots the kernel (default: the one `skiff kernel fetch` cached; --kernel takes a bzImage",
      "or an ELF vmlinux) on skiff's own KVM engine with the serial console on ttyS0, mirrors",
      "the console to the terminal and to FILE, and ends with one line on stderr:",
      "  exit 0    the guest powered off (ACPI S5) or rebooted",
      "  exit 124  SECONDS passed; the VM was stopped",
      "  exit 125  the guest stopped on an exit skiff cannot continue from (with RIP and the",
      "            instruction bytes), or skiff failed",
      "SECONDS may be fractional, up to 2147483 (about 24.8 days). Where /dev/kvm emulates guest",
      "code (kvm_pvm), skiff adds `noxsave clearcpuid=cx16` to the command line and says so.",
      "",
      "In both: --cpus 1 to 255 (default 1); --memory 128 to 65536 MiB (default 512; from 64",
      "with --kernel, as the default kernel needs more).",
    ].join("\n"),
    async run(args) {
      const { values } = parseFlags(args, {
        "console-log": { type: "string" },
        timeout: { type: "string" },
        engine: { type: "string" },
        volume: { type: "string", multiple: true },
        verbose: { type: "boolean" },
        kernel: { type: "string" },
        modules: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        "cmdline-extra": { type: "string" },
      });
      refuseEmpty(values, RUN_NONEMPTY);
      if (values["console-log"] === undefined) {
        if (values.timeout !== undefined) throw new UsageError("--timeout needs --console-log");
        const { runConfig } = await import("./hv/cli/run_options.ts");
        const { bootShell } = await import("./hv/cli/run_command.ts");
        const engine = values.engine ?? "auto";
        if (engine !== "kvm" && engine !== "qemu" && engine !== "auto") {
          throw new UsageError(`--engine ${engine}: expected kvm, qemu or auto`);
        }
        const { config } = runConfig({
          argv: ["/bin/sh"],
          cpus: values.cpus,
          memory: values.memory,
          volume: values.volume,
          kernel: values.kernel,
          modules: values.modules,
          cmdlineExtra: values["cmdline-extra"],
          verbose: values.verbose,
        });
        return await bootShell(config, { engine });
      }
      if (values.timeout === undefined) throw new UsageError("--timeout SECONDS is required");
      const { bootWithConsoleLog } = await import("./hv/kvm/console_boot.ts");
      const { parseCpus, parseMemory, parseTimeout } = await import("./hv/cli/run_options.ts");
      const ac = new AbortController();
      const onSignal = () => ac.abort();
      Deno.addSignalListener("SIGINT", onSignal);
      Deno.addSignalListener("SIGTERM", onSignal);
      try {
        const r = await bootWithConsoleLog({
          consoleLog: values["console-log"],
          timeoutSeconds: parseTimeout(values.timeout)!,
          kernel: values.kernel,
          modules: values.modules,
          cpus: parseCpus(values.cpus) ?? 1,
          memoryMiB: parseMemory(values.memory, values.kernel !== undefined) ?? 512,
          cmdlineExtra: values["cmdline-extra"],
          signal: ac.signal,
        });
        console.error(`skiff boot: ${r.message}`);
        return r.exitCode;
      } finally {
        Deno.removeSignalListener("SIGINT", onSignal);
        Deno.removeSignalListener("SIGTERM", onSignal);
      }
    },
  },
  net: {
    summary: "serve a network namespace through skiff's user-mode network stack (needs root)",
    help: [
      "Usage: skiff net tap --netns NAME [--publish [HOSTIP:]HOSTPORT:GUESTPORT[/udp]]...",
      "                     [--net=host-loopback] [--mtu N]",
      "",
      "Creates a TAP device, moves it into the existing network namespace NAME and configures",
      "it there as a guest would (10.42.0.2/24, default route via 10.42.0.1), then serves it",
      "with skiff's TCP/IP stack until Ctrl-C / SIGTERM: DHCP, DNS at 10.42.0.1, outbound",
      "TCP/UDP through host sockets. --net=host-loopback makes the host's 127.0.0.1 reachable",
      "at 10.42.0.1; --publish listens on the host (127.0.0.1 by default) and forwards into",
      "the namespace.",
    ].join("\n"),
    async run(args) {
      const { values, positionals } = parseFlags(args, {
        netns: { type: "string" },
        publish: { type: "string", multiple: true },
        net: { type: "string" },
        mtu: { type: "string" },
      }, true);
      if (positionals[0] !== "tap" || positionals.length !== 1 || !values.netns) {
        throw new UsageError("expected: net tap --netns NAME");
      }
      if (values.net !== undefined && values.net !== "host-loopback") {
        throw new UsageError(`--net must be host-loopback, got '${values.net}'`);
      }
      const { netTapCommand, parsePublish } = await import("./devices/net/mod.ts");
      const { flagNumber } = await import("./hv/cli/run_options.ts");
      let publish;
      try {
        publish = (values.publish ?? []).map(parsePublish);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
      return await netTapCommand({
        netns: values.netns,
        config: {
          hostLoopback: values.net === "host-loopback",
          publish,
          ...(values.mtu !== undefined
            ? { mtu: flagNumber("--mtu", values.mtu, { min: 576, max: 65535 }) }
            : {}),
        },
      });
    },
  },
  fuse: {
    summary: "serve a host directory through /dev/fuse (skiff's FUSE server; needs root)",
    help: [
      "Usage: skiff fuse mount HOST_DIR MOUNTPOINT [--ro] [--passthrough]",
      "",
      "Mounts HOST_DIR at MOUNTPOINT with skiff's own FUSE server (the one behind virtio-fs)",
      "and serves it until MOUNTPOINT is unmounted or skiff gets Ctrl-C / SIGTERM, then",
      "unmounts (lazily) and exits 0. --ro makes every change fail with EROFS.",
      "--passthrough (Linux 6.9+): the kernel reads and writes open files without execute",
      "bits itself, through a host file the server opens for it (several times faster random",
      "reads); that host file is open read-write while any client has the file open, so",
      "the host sees a writer (an IN_CLOSE_WRITE inotify event after a mere read), and",
      "O_DIRECT reaches the host file as given.",
    ].join("\n"),
    async run(args) {
      const { values, positionals } = parseFlags(
        args,
        { ro: { type: "boolean" }, passthrough: { type: "boolean" } },
        true,
      );
      if (positionals[0] !== "mount" || positionals.length !== 3) {
        throw new UsageError("expected: fuse mount HOST_DIR MOUNTPOINT [--ro] [--passthrough]");
      }
      const { fuseMountCommand } = await import("./devices/fuse/cli.ts");
      return await fuseMountCommand({
        hostDir: positionals[1],
        mountpoint: positionals[2],
        readOnly: values.ro ?? false,
        passthrough: values.passthrough ?? false,
      });
    },
  },
  kernel: {
    summary: "fetch the default guest kernel (Debian cloud) or show what is cached",
    help: [
      "Usage: skiff kernel fetch [--force]",
      "       skiff kernel info [--json]",
      "",
      "fetch  resolves Debian's linux-image-cloud-amd64 to its current package, downloads it",
      "       with apt-get download, unpacks it into ${XDG_CACHE_HOME:-~/.cache}/skiff/kernels/,",
      "       extracts the ELF vmlinux, writes modules.dep, and makes it the default kernel.",
      "       Quick when the same version is already cached (--force downloads again).",
      "info   lists the cached kernels; exits 1 when none is cached. --json prints the",
      "       default kernel as JSON (what findKernel() returns).",
    ].join("\n"),
    async run(args) {
      const [sub, ...rest] = args;
      if (sub === "fetch") {
        const { values } = parseFlags(rest, { force: { type: "boolean" } });
        const { fetchKernel } = await import("./hv/kernel/mod.ts");
        const { withInterrupt } = await import("./hv/interrupt.ts");
        await withInterrupt((signal) => fetchKernel({ force: values.force, signal }));
        return 0;
      }
      if (sub === "info") {
        const { values } = parseFlags(rest, { json: { type: "boolean" } });
        const { findKernel, KernelMissingError } = await import("./hv/kernel/mod.ts");
        const { kernelInfoText } = await import("./hv/kernel/info.ts");
        if (values.json) {
          try {
            console.log(JSON.stringify(await findKernel(), null, 2));
            return 0;
          } catch (e) {
            if (!(e instanceof KernelMissingError)) throw e;
            console.error(`skiff kernel info: ${e.message}`);
            return 1;
          }
        }
        const text = await kernelInfoText();
        if (text === null) {
          console.error(
            "skiff kernel info: no kernel is cached; run `skiff setup` or `skiff kernel fetch`",
          );
          return 1;
        }
        console.log(text);
        return 0;
      }
      throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected fetch or info");
    },
  },
  run: {
    summary: "boot a micro-VM, run a command in it, exit with its code",
    help: [
      "Usage: skiff run [OPTIONS] [--] CMD [ARGS…]",
      "       skiff run --image REF [--user U] [OPTIONS] [--] [CMD [ARGS…]]",
      "",
      "Boots a Linux guest whose root is the host's / (read-only, with a writable tmpfs",
      "overlay; /home, /root and other mounts stay out), runs CMD in the current directory",
      "(shared read-only at the same path), streams its stdout and stderr separately,",
      "forwards stdin, and exits with CMD's exit code (128+N when killed by signal N).",
      "",
      "With --image the root is an OCI image instead (read-only, under a tmpfs overlay),",
      "pulled into the image store when missing: REF is oci:DIR[:TAG], docker-archive:FILE",
      "or [REGISTRY/]NAME[:TAG|@DIGEST] (see skiff image --help). The command is the image's",
      "Entrypoint + CMD (the image's Cmd when CMD is omitted), with the image's Env, WorkingDir",
      "and User; --env, --workdir and --user override them. The current directory is not shared.",
      "",
      "Options:",
      "  --image REF             run the image REF as the guest root",
      "  --user NAME|UID[:GROUP|GID]  run CMD as this user (the image's /etc/passwd and",
      "                          /etc/group, or the host's without --image)",
      "  --engine kvm|qemu|auto  VMM to use (default auto: kvm when /dev/kvm runs guests,",
      "                          else QEMU in software mode)",
      "  --cpus N                vCPUs, 1 to 255 (default 1; the kvm engine runs one for now)",
      "  --memory MiB            guest RAM, 128 to 65536 (default 512; from 64 with --kernel,",
      "                          as the default kernel needs more)",
      "  --env K=V               set a variable (repeatable; --env K copies the host's)",
      "  --workdir DIR           guest working directory (default: the current directory)",
      "  --volume HOST:GUEST[:ro|:rw]  share a host directory, read-write (:rw, the default)",
      "                          or read-only (:ro) (repeatable)",
      "  --timeout S             stop the VM after S seconds (exit 124); S may be fractional,",
      "                          up to 2147483 (about 24.8 days)",
      "  --kernel PATH           bzImage or ELF vmlinux (default: the cached Debian kernel)",
      "  --modules DIR           modules directory for --kernel (its lib/modules/<release>;",
      "                          needed unless vsock, virtio-fs and overlay are built in, and",
      "                          found by itself when --kernel is a cached kernel's file)",
      "  --cmdline-extra STR     appended to the kernel command line",
      "  --hostname NAME         guest hostname (default skiff)",
      "  --net[=on|host-loopback]  a virtio-net NIC behind skiff's user-mode TCP/IP stack (guest",
      "                          10.42.0.2/24, gateway and DNS 10.42.0.1); host-loopback also",
      "                          lets the guest reach the host's 127.0.0.1 at 10.42.0.1",
      "  --publish [IP:]HOSTPORT:GUESTPORT[/udp]  forward a host port (127.0.0.1 by default)",
      "                          into the guest (repeatable; needs --net)",
      "  --snapshot              use the snapshot cache (the default): restore from it, or",
      "                          capture into it after a boot (see skiff snapshot --help)",
      "  --no-snapshot           boot afresh: neither restore from nor add to the snapshot cache",
      "  --verbose               say which engine runs and show the guest console",
      "",
      "Exit codes: CMD's own; 124 on --timeout; 125 when skiff or the VM fails (one line",
      "on stderr); 130/143 when stopped by Ctrl-C/SIGTERM.",
    ].join("\n"),
    async run(args) {
      const { values, command } = splitCommand(args, RUN_OPTIONS, RUN_OPTIONAL_VALUES);
      refuseEmpty(values, RUN_NONEMPTY);
      const engine = values.engine ?? "auto";
      if (engine !== "kvm" && engine !== "qemu" && engine !== "auto") {
        throw new UsageError(`--engine ${engine}: expected kvm, qemu or auto`);
      }
      const { runConfig, parseTimeout } = await import("./hv/cli/run_options.ts");
      const { runCommand } = await import("./hv/cli/run_command.ts");
      let image;
      if (values.image !== undefined) {
        const { prepareImage } = await import("./image/run.ts");
        const { withInterrupt } = await import("./image/cli.ts");
        image = await withInterrupt((signal) => prepareImage(values.image!, { signal }));
      }
      const { config, workload } = runConfig({
        image,
        user: values.user,
        argv: command,
        cpus: values.cpus,
        memory: values.memory,
        env: values.env,
        workdir: values.workdir,
        volume: values.volume,
        kernel: values.kernel,
        modules: values.modules,
        cmdlineExtra: values["cmdline-extra"],
        hostname: values.hostname,
        verbose: values.verbose,
        net: values.net,
        publish: values.publish,
      });
      return await runCommand(config, workload, {
        engine,
        timeoutSeconds: parseTimeout(values.timeout),
        snapshot: values["no-snapshot"] ? false : values.snapshot ? true : undefined,
      });
    },
    ownArgs: (args) => args.slice(0, optionsEnd(args, RUN_OPTIONS, RUN_OPTIONAL_VALUES)),
  },
  image: {
    summary: "pull, list or remove OCI images (the guest roots of skiff run --image)",
    help: [
      "Usage: skiff image pull REF",
      "       skiff image list [--json]",
      "       skiff image rm REF|DIGEST…",
      "",
      "REF is one of",
      "  oci:DIR[:TAG]            an OCI image layout directory (TAG: its ref.name annotation;",
      "                           without it, the only image in DIR)",
      "  docker-archive:FILE      a tar written by `docker save` (or skopeo)",
      "  [REGISTRY/]NAME[:TAG|@DIGEST]  an image in a registry, as Docker names them: docker.io,",
      "                           library/ and :latest by default (busybox = docker.io/library/",
      "                           busybox:latest). HTTPS, or HTTP for localhost/127.0.0.1/[::1];",
      "                           anonymous pulls only (public images); linux/amd64 is chosen",
      "                           from a multi-platform image.",
      "",
      "pull   fetches the image, verifies every digest, and unpacks each layer once into the",
      "       store (as the invoking user; owners, modes, setuid bits and devices are kept as",
      "       metadata, never created on the host). Prints the manifest digest.",
      "list   name, manifest digest, unpacked size and age of each image (--json: all fields).",
      "rm     forgets images by name or manifest digest (a prefix of 6+ hex digits is enough)",
      "       and deletes the layers no other image uses.",
      "",
      "The store lives in ${XDG_CACHE_HOME:-~/.cache}/skiff/images/. Hostile archives (paths with",
      "'..', links or writes leading out of a layer, oversized or truncated tars, wrong digests)",
      "are refused in one line naming the entry; a failed pull leaves no partial layer.",
    ].join("\n"),
    async run(args) {
      const [sub, ...rest] = args;
      const cli = await import("./image/cli.ts");
      if (sub === "pull") {
        const { positionals } = parseFlags(rest, {}, true);
        if (positionals.length !== 1) throw new UsageError("expected: image pull REF");
        return await cli.imagePullCommand(positionals[0]);
      }
      if (sub === "list" || sub === "ls") {
        const { values } = parseFlags(rest, { json: { type: "boolean" } });
        return cli.imageListCommand(values.json ?? false);
      }
      if (sub === "rm") {
        const { positionals } = parseFlags(rest, {}, true);
        if (positionals.length === 0) throw new UsageError("expected: image rm REF|DIGEST…");
        return await cli.imageRmCommand(positionals);
      }
      throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected pull, list or rm");
    },
  },
  snapshot: {
    summary: "list or clear the snapshot cache of booted VMs",
    help: [
      "Usage: skiff snapshot list [--json]",
      "       skiff snapshot clear",
      "",
      "list   shows each cached snapshot: key, size on disk, guest memory size, age, and what",
      "       it was built from (kernel and initramfs hashes, command line, memory, vCPUs, devices).",
      "clear  deletes every cached snapshot; the next `skiff run` boots and captures again.",
      "",
      "The cache lives in ${XDG_CACHE_HOME:-~/.cache}/skiff/snapshots/.",
    ].join("\n"),
    async run(args) {
      const [sub, ...rest] = args;
      const { SnapshotCache, snapshotClear, snapshotList } = await import("./snapshot/cli.ts");
      if (sub === "list") {
        const { values } = parseFlags(rest, { json: { type: "boolean" } });
        snapshotList(new SnapshotCache(), values.json);
        return 0;
      }
      if (sub === "clear") {
        parseFlags(rest, {});
        snapshotClear(new SnapshotCache());
        return 0;
      }
      throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected list or clear");
    },
  },
  virtiofsd: {
    summary: "serve a host directory to QEMU's vhost-user-fs devices (a virtiofsd drop-in)",
    help: [
      "Usage: skiff virtiofsd --socket-path PATH --shared-dir DIR [--ro]",
      "",
      "Listens on the Unix socket PATH as a vhost-user virtio-fs back-end and serves DIR with",
      "skiff's FUSE server to the first front-end that connects, e.g.",
      "  qemu-system-x86_64 … -chardev socket,id=fs0,path=PATH \\",
      "    -device vhost-user-fs-pci,chardev=fs0,tag=share  (shared memory RAM needed;",
      "    vhost-user-fs-device on a virtio-mmio machine such as microvm)",
      "Exits 0 when the front-end disconnects, or on Ctrl-C / SIGTERM; the socket is removed.",
      "A socket at PATH that nobody listens on (a killed daemon's) is replaced.",
      "--ro makes every change fail with EROFS.",
    ].join("\n"),
    async run(args) {
      const { values } = parseFlags(args, {
        "socket-path": { type: "string" },
        "shared-dir": { type: "string" },
        ro: { type: "boolean" },
      });
      if (!values["socket-path"] || !values["shared-dir"]) {
        throw new UsageError("--socket-path PATH and --shared-dir DIR are required");
      }
      const { virtiofsdCommand } = await import("./devices/vhost_user/cli.ts");
      return await virtiofsdCommand({
        socketPath: values["socket-path"],
        sharedDir: values["shared-dir"],
        readOnly: values.ro ?? false,
      });
    },
  },
};

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    "skiff — Linux micro-VMs from TypeScript",
    "",
    "Usage: skiff COMMAND [OPTIONS]",
    "",
    "Commands:",
    ...lines,
    "",
    "Run `skiff COMMAND --help` for a command's options.",
  ].join("\n");
}

/**
 * Whether `skiff NAME ARGS…` asks for NAME's help: `--help` or `-h` among the
 * command's own arguments, not among a guest command's (`skiff run ls
 * --help` runs `ls --help`; `skiff run --help` is run's help).
 */
export function commandHelpAsked(name: string, args: string[]): boolean {
  const command = COMMANDS[name];
  if (!command) return false;
  const own = command.ownArgs?.(args) ?? args;
  return own.includes("--help") || own.includes("-h");
}

/** Runs the CLI with `args`; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    const topic = name === "help" ? rest[0] : undefined;
    if (topic && COMMANDS[topic]) {
      console.log(COMMANDS[topic].help);
    } else {
      console.log(mainHelp());
    }
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`skiff: unknown command '${name}' (see skiff --help)`);
    return EXIT_FAILURE;
  }
  if (commandHelpAsked(name, rest)) {
    console.log(command.help);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof InterruptedError) {
      try {
        console.error(`skiff ${name}: ${e.message}; nothing was left half done`);
      } catch {
        // stderr is gone
      }
      return e.exitCode;
    }
    try {
      if (e instanceof UsageError) {
        console.error(`skiff ${name}: ${e.message} (see skiff ${name} --help)`);
      } else if (Deno.env.get("SKIFF_DEBUG")) {
        console.error(e);
      } else {
        console.error(`skiff ${name}: ${e instanceof Error ? e.message : String(e)}`);
      }
    } catch {
      // stderr is gone (a closed terminal): the exit code still says it
    }
    return EXIT_FAILURE;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
