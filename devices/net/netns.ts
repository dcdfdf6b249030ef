/**
 * The TAP attachment into a network namespace: a TAP device created in
 * skiff's own namespace is moved into an existing namespace and configured
 * there as a guest would configure its NIC (address, link up, default route
 * via the gateway), so the host kernel's TCP/IP in that namespace plays the
 * guest and skiff's stack serves it (`skiff net tap`, L3 tests, benchmark).
 *
 * @module
 */

import type { NetConfig } from "./config.ts";
import { ConfigError } from "../../hv/errors.ts";
import { NetStack } from "./service.ts";
import { TapDevice } from "./tap.ts";
import { formatIpv4 } from "./wire.ts";

/** A served TAP inside a namespace; close it to remove the TAP and stop the stack. */
export interface NetnsTap extends AsyncDisposable {
  /** The stack serving the TAP. */
  readonly stack: NetStack;
  /** The TAP device's interface name (inside the namespace). */
  readonly ifname: string;
  /** Removes the TAP (closing it deletes the interface) and stops the stack. */
  close(): Promise<void>;
}

async function ip(args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`ip ${args.join(" ")} failed: ${err || `exit ${out.code}`}`);
  }
}

/**
 * Refuses a namespace `ip` would not find, before a TAP is made: a name
 * (`ip netns add NAME` makes /run/netns/NAME) or a process id.
 */
export function checkNetns(netns: string, runDir = "/run/netns"): void {
  if (/^\d+$/.test(netns)) return;
  let ok = false;
  try {
    ok = !netns.includes("/") && Deno.statSync(`${runDir}/${netns}`).isFile;
  } catch {
    // not there
  }
  if (!ok) {
    throw new ConfigError(
      `--netns ${netns}: no such network namespace (ip netns add ${netns} makes one)`,
    );
  }
}

/**
 * Creates a TAP, moves it into namespace `netns` (which must exist),
 * configures it as the guest (guest address with the prefix, MTU, link up,
 * loopback up, default route via the gateway) and serves it with a new
 * {@link NetStack} built from `config`. Needs root (CAP_NET_ADMIN) and
 * /dev/net/tun.
 */
export async function serveTapInNetns(netns: string, config: NetConfig = {}): Promise<NetnsTap> {
  checkNetns(netns);
  const stack = new NetStack(config);
  let tap: TapDevice | null = null;
  try {
    await stack.ready;
    tap = TapDevice.open("skiff%d");
    const dev = tap.name;
    const c = stack.config;
    await ip(["link", "set", "dev", dev, "netns", netns]);
    const inNs = (args: string[]) => ip(["-n", netns, ...args]);
    await inNs(["link", "set", "dev", dev, "mtu", String(c.mtu)]);
    await inNs(["addr", "add", `${formatIpv4(c.guestIp)}/${c.prefixLength}`, "dev", dev]);
    await inNs(["link", "set", "dev", dev, "up"]);
    await inNs(["link", "set", "dev", "lo", "up"]);
    await inNs(["route", "replace", "default", "via", formatIpv4(c.gatewayIp), "dev", dev]);
    await tap.serve(stack);
  } catch (e) {
    await tap?.close();
    await stack.close();
    throw e;
  }
  const t = tap;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await stack.close();
    await t.close();
  };
  return { stack, ifname: t.name, close, [Symbol.asyncDispose]: close };
}

/** Arguments of {@link netTapCommand}. */
export interface NetTapArgs {
  /** Namespace to serve. */
  netns: string;
  /** Stack configuration (publish rules, host loopback, …). */
  config: NetConfig;
}

/**
 * `skiff net tap`: serves a TAP in `netns` until SIGINT/SIGTERM, then
 * removes it; resolves to the exit code (0).
 */
export async function netTapCommand(a: NetTapArgs): Promise<number> {
  const served = await serveTapInNetns(a.netns, a.config);
  const c = served.stack.config;
  const pubs = served.stack.publishedAddrs.map((x) => `${x.hostname}:${x.port}`);
  console.error(
    `skiff net: serving ${served.ifname} in netns ${a.netns} as ${formatIpv4(c.guestIp)}/` +
      `${c.prefixLength} via ${formatIpv4(c.gatewayIp)}` +
      `${c.hostLoopback ? ", host loopback on" : ""}` +
      `${pubs.length ? `, published ${pubs.join(" ")}` : ""}; Ctrl-C to stop`,
  );
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  let stop = () => {};
  const stopped = new Promise<void>((r) => stop = r);
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    await stopped;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
    if (Deno.env.get("SKIFF_DEBUG")) console.error("skiff net:", served.stack.counters());
    await served.close();
  }
  return 0;
}
