/**
 * Test images built by the tests themselves (no network): an OCI layout made
 * with Debian's `umoci` from `busybox-static`, with a second layer written by
 * GNU tar that deletes a file (`.wh.gone`) and makes a directory opaque
 * (`.wh..wh..opq`), and a run config (Env, WorkingDir, Cmd). From it,
 * `skopeo copy` makes a `docker-archive` and pushes to a registry.
 *
 * Needs root (umoci without `--rootless` keeps owners), `umoci`, `skopeo`,
 * GNU tar and `/bin/busybox` (busybox-static).
 *
 * @module
 */

import { onPath } from "../../tests/requirements.ts";

/** What a test image has (for assertions). */
export const TEST_IMAGE = {
  tag: "v1",
  osRelease: 'NAME="skiff test image"\nID=skifftest\n',
  env: { GREETING: "hello from the image", PATH: "/usr/local/bin:/usr/bin:/bin" },
  workdir: "/srv",
  cmd: ["/bin/sh", "-c", "echo default-cmd in $(pwd)"],
} as const;

/** Why the image tools are missing, or null. */
export function imageToolsMissing(): string | null {
  if (Deno.uid() !== 0) return "building test images with umoci keeps owners only as root";
  for (const t of ["umoci", "skopeo", "tar"]) {
    if (!onPath(t)) return `${t} is not installed (run tests/setup)`;
  }
  try {
    Deno.statSync("/bin/busybox");
  } catch {
    return "/bin/busybox is missing (Debian's busybox-static; run tests/setup)";
  }
  return null;
}

/** Runs a command; throws with its stderr when it fails. */
export async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (o.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${o.code}: ${dec.decode(o.stderr)}`);
  }
  return dec.decode(o.stdout);
}

const APPLETS = [
  "sh",
  "cat",
  "ls",
  "echo",
  "env",
  "pwd",
  "id",
  "stat",
  "find",
  "test",
  "wc",
  "sleep",
];

/** Fills a directory with the base layer's tree. */
async function baseTree(root: string): Promise<void> {
  const w = (p: string, s: string, mode = 0o644) =>
    Deno.writeTextFileSync(`${root}/${p}`, s, { mode });
  for (const d of ["bin", "etc", "opq", "usr/bin", "home/app", "srv", "tmp", "dev"]) {
    Deno.mkdirSync(`${root}/${d}`, { recursive: true });
  }
  Deno.copyFileSync("/bin/busybox", `${root}/bin/busybox`);
  Deno.chmodSync(`${root}/bin/busybox`, 0o755);
  for (const a of APPLETS) Deno.symlinkSync("busybox", `${root}/bin/${a}`);
  Deno.linkSync(`${root}/bin/busybox`, `${root}/bin/busybox-hard`);
  w("etc/os-release", TEST_IMAGE.osRelease);
  w("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n");
  w("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nmore:x:2001:app\n");
  w("etc/gone", "deleted by the second layer\n");
  w("opq/old1", "hidden by the opaque directory\n");
  w("opq/old2", "hidden too\n");
  w("usr/bin/setuid-tool", "#!/bin/sh\necho setuid\n", 0o755);
  Deno.chmodSync(`${root}/usr/bin/setuid-tool`, 0o4755);
  w("srv/data.txt", "data owned by app\n");
  Deno.chownSync(`${root}/srv/data.txt`, 1000, 1000);
  Deno.chownSync(`${root}/home/app`, 1000, 1000);
  Deno.chmodSync(`${root}/home/app`, 0o750);
  Deno.chmodSync(`${root}/tmp`, 0o1777);
  Deno.symlinkSync("/etc/os-release", `${root}/etc/abs-link`);
  Deno.symlinkSync("../../../../../../etc/shadow", `${root}/etc/dotdot-link`);
  await run("mknod", [`${root}/dev/null`, "c", "1", "3"]);
  Deno.chmodSync(`${root}/dev/null`, 0o666);
  await run("mkfifo", [`${root}/srv/fifo`]);
}

/**
 * Builds the test image as an OCI layout at `dir/layout` (tag {@link TEST_IMAGE.tag});
 * returns the layout path. `dir` must exist and be empty.
 */
export async function buildTestImage(dir: string): Promise<string> {
  const layout = `${dir}/layout`;
  const ref = `${layout}:${TEST_IMAGE.tag}`;
  await run("umoci", ["init", "--layout", layout]);
  await run("umoci", ["new", "--image", ref]);
  await run("umoci", ["unpack", "--image", ref, `${dir}/bundle`]);
  await baseTree(`${dir}/bundle/rootfs`);
  await run("umoci", ["repack", "--image", ref, `${dir}/bundle`]);
  // The second layer, written by GNU tar with the whiteout names the OCI spec defines.
  const st = `${dir}/layer2`;
  Deno.mkdirSync(`${st}/etc`, { recursive: true });
  Deno.mkdirSync(`${st}/opq`);
  Deno.writeTextFileSync(`${st}/etc/.wh.gone`, "");
  Deno.writeTextFileSync(`${st}/opq/.wh..wh..opq`, "");
  Deno.writeTextFileSync(`${st}/opq/new`, "the opaque directory's only file\n");
  Deno.writeTextFileSync(`${st}/etc/added`, "added by layer 2\n");
  await run("tar", ["--format=pax", "--numeric-owner", "-C", st, "-cf", `${dir}/layer2.tar`, "."]);
  await run("umoci", ["raw", "add-layer", "--image", ref, `${dir}/layer2.tar`]);
  await run("umoci", [
    "config",
    "--image",
    ref,
    ...Object.entries(TEST_IMAGE.env).map(([k, v]) => `--config.env=${k}=${v}`),
    `--config.workingdir=${TEST_IMAGE.workdir}`,
    ...TEST_IMAGE.cmd.map((c) => `--config.cmd=${c}`),
  ]);
  await Deno.remove(`${dir}/bundle`, { recursive: true });
  await Deno.remove(st, { recursive: true });
  return layout;
}

/** `skopeo copy` of the OCI layout into a docker-archive at `file`. */
export async function toDockerArchive(layout: string, file: string): Promise<void> {
  await run("skopeo", [
    "copy",
    "--insecure-policy",
    `oci:${layout}:${TEST_IMAGE.tag}`,
    `docker-archive:${file}:test/image:${TEST_IMAGE.tag}`,
  ]);
}

/**
 * Registers a test that needs the image tools (and `extra` programs, and
 * /dev/fuse with "fuse"); without them it is ignored and the reason printed
 * (`skiff-test-skip: …`), as tests/requirements.ts does for its requirements.
 */
export function imageTest(
  name: string,
  extra: string[],
  fn: (t: Deno.TestContext) => Promise<void>,
  options: Omit<Deno.TestDefinition, "name" | "fn" | "ignore"> = {},
): void {
  const reasons: string[] = [];
  const tools = imageToolsMissing();
  if (tools) reasons.push(tools);
  for (const x of extra) {
    if (x === "fuse") {
      try {
        Deno.openSync("/dev/fuse", { read: true, write: true }).close();
      } catch {
        reasons.push("/dev/fuse is missing or not accessible");
      }
    } else if (!onPath(x)) reasons.push(`${x} is not installed (run tests/setup)`);
  }
  if (reasons.length) console.error(`skiff-test-skip: ${name}: ${reasons.join("; ")}`);
  Deno.test({ ...options, name, ignore: reasons.length > 0, fn });
}
