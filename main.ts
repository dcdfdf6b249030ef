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

/** Exit code when `--timeout` expires (as coreutils `timeout`). */
export const EXIT_TIMEOUT = 124;
/** Exit code for skiff's own failures: bad usage, missing kernel, VM failure. */
export const EXIT_FAILURE = 125;

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
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** parseArgs in strict mode, turning its errors into {@link UsageError}. */
export function parseFlags<O extends Options>(
  args: string[],
  options: O,
  allowPositionals = false,
) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

const COMMANDS: Record<string, Command> = {
  boot: {
    summary: "boot the guest kernel on skiff's KVM engine with the serial console",
    help: [
      "Usage: skiff boot --console-log FILE --timeout SECONDS [--kernel PATH] [--modules DIR]",
      "                  [--cpus N] [--memory MiB] [--cmdline-extra STR]",
      "",
      "Boots the kernel (default: the one `skiff kernel fetch` cached; --kernel takes a bzImage",
      "or an ELF vmlinux) on skiff's own KVM engine with the serial console on ttyS0, mirrors",
      "the console to the terminal and to FILE, and ends with one line on stderr:",
      "  exit 0    the guest powered off (ACPI S5) or rebooted",
      "  exit 124  SECONDS passed; the VM was stopped",
      "  exit 125  the guest stopped on an exit skiff cannot continue from (with RIP and the",
      "            instruction bytes), or skiff failed",
      "Defaults: --cpus 1, --memory 512. Where /dev/kvm emulates guest code (kvm_pvm), skiff",
      "adds `noxsave clearcpuid=cx16` to the command line and says so.",
    ].join("\n"),
    async run(args) {
      const { values } = parseFlags(args, {
        "console-log": { type: "string" },
        timeout: { type: "string" },
        kernel: { type: "string" },
        modules: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        "cmdline-extra": { type: "string" },
      });
      if (values["console-log"] === undefined) {
        throw new UsageError(
          "--console-log FILE is required (the interactive console is not here yet)",
        );
      }
      const num = (flag: string, v: string | undefined, dflt: number, integer = true) => {
        if (v === undefined) return dflt;
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
          throw new UsageError(
            `--${flag} ${v}: expected a positive ${integer ? "integer" : "number"}`,
          );
        }
        return n;
      };
      if (values.timeout === undefined) throw new UsageError("--timeout SECONDS is required");
      const { bootWithConsoleLog } = await import("./hv/console_boot.ts");
      const ac = new AbortController();
      const onSignal = () => ac.abort();
      Deno.addSignalListener("SIGINT", onSignal);
      Deno.addSignalListener("SIGTERM", onSignal);
      try {
        const r = await bootWithConsoleLog({
          consoleLog: values["console-log"],
          timeoutSeconds: num("timeout", values.timeout, 0, false),
          kernel: values.kernel,
          modules: values.modules,
          cpus: num("cpus", values.cpus, 1),
          memoryMiB: num("memory", values.memory, 512),
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
      if (values.mtu !== undefined && !/^\d+$/.test(values.mtu)) {
        throw new UsageError(`--mtu must be a number, got '${values.mtu}'`);
      }
      const { netTapCommand, parsePublish } = await import("./devices/net/mod.ts");
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
          ...(values.mtu !== undefined ? { mtu: Number(values.mtu) } : {}),
        },
      });
    },
  },
  fuse: {
    summary: "serve a host directory through /dev/fuse (skiff's FUSE server; needs root)",
    help: [
      "Usage: skiff fuse mount HOST_DIR MOUNTPOINT [--ro]",
      "",
      "Mounts HOST_DIR at MOUNTPOINT with skiff's own FUSE server (the one behind virtio-fs)",
      "and serves it until MOUNTPOINT is unmounted or skiff gets Ctrl-C / SIGTERM, then",
      "unmounts (lazily) and exits 0. --ro makes every change fail with EROFS.",
    ].join("\n"),
    async run(args) {
      const { values, positionals } = parseFlags(args, { ro: { type: "boolean" } }, true);
      if (positionals[0] !== "mount" || positionals.length !== 3) {
        throw new UsageError("expected: fuse mount HOST_DIR MOUNTPOINT [--ro]");
      }
      const { fuseMountCommand } = await import("./devices/fuse/cli.ts");
      return await fuseMountCommand({
        hostDir: positionals[1],
        mountpoint: positionals[2],
        readOnly: values.ro ?? false,
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
        await fetchKernel({ force: values.force });
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
          console.error("skiff kernel info: no kernel is cached; run `skiff kernel fetch`");
          return 1;
        }
        console.log(text);
        return 0;
      }
      throw new UsageError(sub ? `unknown subcommand '${sub}'` : "expected fetch or info");
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
  if (rest.includes("--help") && !rest.slice(0, rest.indexOf("--help")).includes("--")) {
    console.log(command.help);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`skiff ${name}: ${e.message} (see skiff ${name} --help)`);
    } else if (Deno.env.get("SKIFF_DEBUG")) {
      console.error(e);
    } else {
      console.error(`skiff ${name}: ${e instanceof Error ? e.message : String(e)}`);
    }
    return EXIT_FAILURE;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
