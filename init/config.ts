/**
 * The init's configuration as the host describes it ({@link InitConfig}), its
 * translation into a command record, and the status line the init reports.
 *
 * @module
 */

import { encodeRecord, type RecordSpec } from "./record.ts";

/** A virtio-fs share mounted at `guestPath` (created in the writable overlay). */
export interface InitShare {
  tag: string;
  guestPath: string;
  readOnly: boolean;
}

/** Static IPv4 configuration of eth0. */
export interface InitNet {
  address: string;
  prefixLength: number;
  gateway: string;
  /** Name server written to /etc/resolv.conf. */
  dns: string;
  /** /etc/hosts content (default: localhost lines and the host name). */
  hosts?: string;
}

/** virtio-console port names (as `/sys/class/virtio-ports/*\/name` shows them). */
export interface InitPorts {
  stdin: string;
  stdout: string;
  stderr: string;
  status: string;
}

/** The one-shot command. */
export interface InitCommand {
  argv: string[];
  /** "K=V" entries; PATH among them is also the search list for argv[0]. */
  env: string[];
  cwd: string;
  /** Run as this user (uid, gid, supplementary groups) instead of root. */
  user?: { uid: number; gid: number; groups: number[] } | null;
}

/** Everything the one-shot init needs. */
export interface InitConfig {
  /** virtio-fs tag of the root share (mounted ro + tmpfs overlay), or null: stay on the initramfs. */
  rootTag: string | null;
  shares: InitShare[];
  hostname: string;
  ports: InitPorts;
  net: InitNet | null;
  command: InitCommand;
}

/** The port names skiff uses. */
export const DEFAULT_PORTS: InitPorts = {
  stdin: "skiff.stdin",
  stdout: "skiff.stdout",
  stderr: "skiff.stderr",
  status: "skiff.status",
};

/** Search list for argv[0] when the environment has no PATH. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Modules every guest loads (with their dependencies), in this order. */
export const BASE_MODULES = ["virtio_mmio", "virtio_console", "fuse", "virtiofs", "overlay"];
/** Modules added when the network is on. */
export const NET_MODULES = ["failover", "net_failover", "virtio_net"];

/** A config running `argv` with everything else at its default. */
export function defaultInitConfig(argv: string[] = ["/bin/sh"]): InitConfig {
  return {
    rootTag: null,
    shares: [],
    hostname: "skiff",
    ports: { ...DEFAULT_PORTS },
    net: null,
    command: { argv, env: [`PATH=${DEFAULT_PATH}`], cwd: "/" },
  };
}

/** Module names to load for `config`. */
export function modulesFor(config: InitConfig): string[] {
  return config.net ? [...BASE_MODULES, ...NET_MODULES] : [...BASE_MODULES];
}

/** The record for `config`; `modules` are guest paths in load order. */
export function recordFor(config: InitConfig, modules: string[]): Uint8Array {
  const pathEntry = config.command.env.findLast((e) => e.startsWith("PATH="));
  const spec: RecordSpec = {
    rootTag: config.rootTag,
    hostname: config.hostname,
    shares: config.shares.map((s) => ({ ...s })),
    modules,
    ports: config.ports,
    argv: config.command.argv,
    env: config.command.env,
    cwd: config.command.cwd,
    user: config.command.user ?? null,
    path: pathEntry ? pathEntry.slice(5) : DEFAULT_PATH,
    net: config.net
      ? {
        address: config.net.address,
        prefixLength: config.net.prefixLength,
        gateway: config.net.gateway,
        resolvConf: `nameserver ${config.net.dns}\n`,
        hosts: config.net.hosts ??
          `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n${config.net.address}\t${config.hostname}\n`,
      }
      : null,
  };
  return encodeRecord(spec);
}

/** What the init reported on the status port. */
export type InitStatus =
  | { kind: "exited"; code: number }
  | { kind: "signaled"; signal: number }
  | { kind: "error"; step: string; errno: string };

/**
 * Parses one status line (`exit N`, `signal N` or `error STEP: ERRNO`; a
 * trailing newline is fine). Throws on anything else.
 */
export function parseStatusLine(line: string): InitStatus {
  const s = line.replace(/\r?\n$/, "");
  let m = /^exit (\d{1,3})$/.exec(s);
  if (m) return { kind: "exited", code: Number(m[1]) };
  m = /^signal (\d{1,2})$/.exec(s);
  if (m) return { kind: "signaled", signal: Number(m[1]) };
  m = /^error (.+): (E[A-Z0-9]+|errno-\d+)$/.exec(s);
  if (m) return { kind: "error", step: m[1], errno: m[2] };
  throw new Error(`bad init status line: ${JSON.stringify(line)}`);
}
