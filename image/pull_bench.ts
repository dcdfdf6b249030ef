/**
 * `image-pull`: pulling and unpacking a ~100 MiB image (two layers of this
 * host's Python library trees, thousands of small files) from Debian's
 * `docker-registry` on 127.0.0.1 — `skiff image pull` into an empty store,
 * against `skopeo copy` to an OCI layout plus `umoci unpack` of it, in the
 * same run. Each side runs twice; the faster run counts.
 *
 * Needs root, umoci, skopeo, docker-registry (tests/setup).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { imageToolsMissing, run } from "./testing/images.ts";
import { startRegistry } from "./testing/registry.ts";
import { onPath } from "../tests/requirements.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
/** Host trees that make up the image (one layer each), chosen for a realistic file mix. */
const TREES = ["/usr/lib/python3.11", "/usr/lib/python3"];

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
}

/** Runs the benchmark; returns its report lines. */
export async function bench(): Promise<string[]> {
  const why = imageToolsMissing() ??
    (onPath("docker-registry") ? null : "docker-registry is not installed");
  if (why) return [`image-pull skipped: ${why}`];
  const trees = TREES.filter((t) => {
    try {
      return Deno.statSync(t).isDirectory;
    } catch {
      return false;
    }
  });
  const base = await Deno.makeTempDir({ prefix: "skiff-pull-bench-" });
  try {
    // The image: busybox plus one layer per tree, made with umoci.
    const layout = `${base}/layout`;
    const ref = `${layout}:v1`;
    await run("umoci", ["init", "--layout", layout]);
    await run("umoci", ["new", "--image", ref]);
    await run("umoci", ["unpack", "--image", ref, `${base}/bundle`]);
    const rootfs = `${base}/bundle/rootfs`;
    await Deno.mkdir(`${rootfs}/bin`, { recursive: true });
    await Deno.copyFile("/bin/busybox", `${rootfs}/bin/busybox`);
    for (const t of trees) {
      await Deno.mkdir(`${rootfs}${t}`, { recursive: true });
      await run("cp", ["-a", `${t}/.`, `${rootfs}${t}`]);
      await run("umoci", ["repack", "--image", ref, `${base}/bundle`]);
    }
    await Deno.remove(`${base}/bundle`, { recursive: true });
    const bytes = Number((await run("du", ["-sb", "--exclude=bundle", layout])).split("\t")[0]);
    await Deno.mkdir(`${base}/registry`);
    await using reg = await startRegistry(`${base}/registry`);
    const remote = `${reg.host}/bench/image:v1`;
    await run("skopeo", [
      "copy",
      "--insecure-policy",
      "--dest-tls-verify=false",
      `oci:${ref}`,
      `docker://${remote}`,
    ]);

    const skiffTimes: number[] = [];
    const refTimes: number[] = [];
    let unpacked = 0;
    for (let i = 0; i < 2; i++) {
      const cache = `${base}/cache${i}`;
      skiffTimes.push(
        await timed(async () => {
          const o = await new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", MAIN, "image", "pull", remote],
            env: { XDG_CACHE_HOME: cache },
            stdout: "piped",
            stderr: "piped",
          }).output();
          if (o.code !== 0) {
            throw new Error(`skiff image pull failed: ${new TextDecoder().decode(o.stderr)}`);
          }
        }),
      );
      unpacked = Number((await run("du", ["-sb", `${cache}/skiff/images/layers`])).split("\t")[0]);
      await Deno.remove(cache, { recursive: true });
      const dir = `${base}/ref${i}`;
      await Deno.mkdir(dir);
      refTimes.push(
        await timed(async () => {
          await run("skopeo", [
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            `docker://${remote}`,
            `oci:${dir}/layout:v1`,
          ]);
          await run("umoci", ["unpack", "--image", `${dir}/layout:v1`, `${dir}/bundle`]);
        }),
      );
      await Deno.remove(dir, { recursive: true });
    }
    const s = Math.min(...skiffTimes);
    const r = Math.min(...refTimes);
    return [
      `image-pull size=${(unpacked / 2 ** 20).toFixed(0)} skiff=${s.toFixed(2)} reference=${
        r.toFixed(2)
      } ` +
      `ratio=${(s / r).toFixed(2)}`,
      `  (layers compressed ${(bytes / 2 ** 20).toFixed(0)} MiB in the layout; runs skiff ${
        skiffTimes.map((t) => t.toFixed(2)).join(", ")
      } s, skopeo+umoci ${refTimes.map((t) => t.toFixed(2)).join(", ")} s)`,
    ];
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
