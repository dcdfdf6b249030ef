/**
 * Host requirements of tests that need real devices or tools. A test whose
 * requirement is missing is registered as ignored and the reason is printed
 * (`skiff-test-skip: <test>: <reason>`), never passed silently. `.ci/run`
 * reports those lines.
 *
 * @module
 */

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
  | "socat";

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
  socat: "socat",
};

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

/** Why `req` is unmet on this host, or null when it is met. */
export function missing(req: Requirement): string | null {
  if (cache.has(req)) return cache.get(req)!;
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
