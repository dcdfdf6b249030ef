/**
 * Host requirements of tests that need real devices, tools or the cached
 * guest kernel. A test whose requirement is missing is registered as ignored
 * and the reason is printed (`skiff-test-skip: <test>: <reason>`), never
 * passed silently. `.ci/run` reports those lines.
 *
 * @module
 */

import { findKernel } from "../hv/kernel/mod.ts";

/** A named host requirement. */
export type Requirement =
  | "kvm"
  | "root"
  | "fuse"
  | "tun"
  | "unshare"
  | "qemu"
  | "iasl"
  | "objdump"
  | "gcc"
  | "cpio"
  | "bindfs"
  | "slirp4netns"
  | "iperf3"
  | "fio"
  | "curl"
  | "lz4"
  | "stress-ng"
  | "file"
  | "python3"
  | "kernel"
  | "denort"
  | "socat"
  | "setsid";

const TOOLS: Partial<Record<Requirement, string>> = {
  qemu: "qemu-system-x86_64",
  iasl: "iasl",
  objdump: "objdump",
  gcc: "gcc",
  cpio: "cpio",
  bindfs: "bindfs",
  slirp4netns: "slirp4netns",
  iperf3: "iperf3",
  fio: "fio",
  curl: "curl",
  unshare: "unshare",
  lz4: "lz4",
  "stress-ng": "stress-ng",
  file: "file",
  python3: "python3",
  socat: "socat",
  setsid: "setsid",
};

/**
 * Why the default guest kernel (what `skiff setup` / `skiff kernel fetch`
 * caches, bzImage and vmlinux) cannot be used, or null. Probed once per
 * test process, when this module loads.
 */
const kernelWhy: string | null = await findKernel().then(
  (k) => k.bzImage ? null : `the cached kernel ${k.version} has no bzImage (run tests/setup)`,
  // KernelMissingError: "no kernel is cached; run `skiff kernel fetch` …"
  (e) => `${String((e as Error).message).split(";")[0]} (run tests/setup)`,
);

const cache = new Map<Requirement, string | null>();

function canOpen(path: string): boolean {
  try {
    Deno.openSync(path, { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
}

/** Whether `name` is an executable on PATH. */
export function onPath(name: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      const st = Deno.statSync(`${dir}/${name}`);
      if (st.isFile && ((st.mode ?? 0) & 0o111)) return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/**
 * Whether `deno compile` can get its `denort` base binary: `DENORT_BIN`, or
 * the Deno download site, which it fetches it from (DESIGN.md: this
 * workplace reaches only package registries).
 */
async function probeDenort(): Promise<string | null> {
  if (Deno.env.get("DENORT_BIN")) return null;
  try {
    // A bound that only catches a resolver that hangs.
    await Deno.resolveDns("dl.deno.land", "A", { signal: AbortSignal.timeout(120_000) });
    return null;
  } catch (e) {
    return `deno compile cannot obtain its denort base binary: DENORT_BIN is not set and ` +
      `dl.deno.land cannot be reached (${(e as Error).message})`;
  }
}

/** Requirements probed asynchronously, only by the test files that use them. */
const ASYNC_PROBES: Partial<Record<Requirement, () => Promise<string | null>>> = {
  denort: probeDenort,
};

/**
 * Probes requirements that need asynchronous work (e.g. a network lookup);
 * a test file awaits this at its top level before registering tests that
 * need them.
 */
export async function probeRequirements(reqs: readonly Requirement[]): Promise<void> {
  for (const req of reqs) {
    const probe = ASYNC_PROBES[req];
    if (probe && !cache.has(req)) cache.set(req, await probe());
  }
}

/** Why `req` is unmet on this host, or null when it is met. */
export function missing(req: Requirement): string | null {
  if (cache.has(req)) return cache.get(req)!;
  if (ASYNC_PROBES[req]) {
    throw new Error(`requirement ${req}: await probeRequirements(["${req}"]) before hostTest`);
  }
  let why: string | null = null;
  switch (req) {
    case "kvm":
      why = canOpen("/dev/kvm") ? null : "/dev/kvm is missing or not accessible";
      break;
    case "fuse":
      why = canOpen("/dev/fuse") ? null : "/dev/fuse is missing or not accessible";
      break;
    case "tun":
      why = canOpen("/dev/net/tun") ? null : "/dev/net/tun is missing or not accessible";
      break;
    case "root":
      why = Deno.uid() === 0 ? null : "needs root";
      break;
    case "kernel":
      why = kernelWhy;
      break;
    default: {
      const tool = TOOLS[req]!;
      why = onPath(tool) ? null : `${tool} is not installed (run tests/setup)`;
    }
  }
  cache.set(req, why);
  return why;
}

/** Options for {@link hostTest}. */
export type HostTestOptions = Omit<Deno.TestDefinition, "name" | "fn" | "ignore">;

/**
 * Registers a test that runs only when every requirement is met; otherwise it
 * is ignored and the reason is printed.
 */
export function hostTest(
  name: string,
  needs: readonly Requirement[],
  fn: (t: Deno.TestContext) => void | Promise<void>,
  options: HostTestOptions = {},
): void {
  const reasons = needs.map(missing).filter((r): r is string => r !== null);
  if (reasons.length > 0) {
    console.error(`skiff-test-skip: ${name}: ${reasons.join("; ")}`);
  }
  Deno.test({ ...options, name, ignore: reasons.length > 0, fn });
}
