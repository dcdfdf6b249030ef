/**
 * L3q: `skiff run --image` end to end on the qemu engine — an OCI image built
 * by the test (busybox-static, a whiteout and an opaque directory in its
 * second layer, Env/WorkingDir/Cmd in its config) pulled into a private store
 * and served to the Debian kernel under QEMU TCG by the layered FUSE backend.
 * Each run is a real `skiff` process with a private TMPDIR (empty afterwards)
 * and XDG_CACHE_HOME (the image store; the kernel cache linked in).
 */

import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import { linkKernelCache, testKernel } from "../hv/qemu/testing.ts";
import { buildTestImage, imageTest, TEST_IMAGE, toDockerArchive } from "../image/testing/images.ts";
import { prepareImage } from "../image/run.ts";
import { ImageStore } from "../image/store.ts";
import { VirtualMachine } from "../hv/library/virtual_machine.ts";
import { RamSpares } from "../snapshot/ram_spares.ts";
import { runSkiff } from "./skiff_process.ts";

const skiff = (args: string[], cache: string) => runSkiff(args, { cache });

const kernel = await testKernel();
const kernelMissing = typeof kernel === "string" ? kernel : null;

imageTest(
  "skiff run --image (qemu): os-release, whiteout and opaque dir, Env, WorkingDir, default Cmd, --user",
  ["qemu-system-x86_64"],
  async () => {
    if (kernelMissing) throw new Error(kernelMissing);
    const base = await Deno.makeTempDir({ prefix: "skiff-imgrun-test-" });
    try {
      const layout = await buildTestImage(base);
      const cache = `${base}/cache`;
      await linkKernelCache(cache);
      const ref = `oci:${layout}:${TEST_IMAGE.tag}`;
      const q = ["run", "--engine", "qemu", "--image"];

      const r = await skiff([
        ...q,
        ref,
        "--",
        "sh",
        "-c",
        [
          "cat /etc/os-release",
          "test -e /etc/gone && echo gone-present || echo gone-absent",
          "ls /opq",
          'echo "env=$GREETING"',
          'echo "cwd=$(pwd)"',
          "cat /etc/added",
          "stat -c '%a %u:%g' /usr/bin/setuid-tool /srv/data.txt",
          "echo x > /etc/overlay-write && cat /etc/overlay-write",
        ].join("; "),
      ], cache);
      strictEqual(r.code, 0, r.stderr);
      strictEqual(
        r.stdout,
        TEST_IMAGE.osRelease +
          "gone-absent\nnew\nenv=hello from the image\ncwd=/srv\nadded by layer 2\n" +
          "4755 0:0\n644 1000:1000\nx\n",
      );

      // CMD omitted: the image's Cmd runs, in its WorkingDir.
      const d = await skiff([...q, ref], cache);
      deepStrictEqual([d.code, d.stdout], [0, "default-cmd in /srv\n"], d.stderr);

      // --user, --env and --workdir override the image.
      const u = await skiff(
        [
          ...q,
          ref,
          "--user",
          "app",
          "--env",
          "GREETING=over",
          "--workdir",
          "/home/app",
          "--",
          "sh",
          "-c",
          'id; echo "$GREETING $HOME $(pwd)"',
        ],
        cache,
      );
      strictEqual(u.code, 0, u.stderr);
      strictEqual(
        u.stdout,
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra),2001(more)\nover /home/app /home/app\n",
      );

      // The docker-archive form of the same image.
      await toDockerArchive(layout, `${base}/img.tar`);
      const da = await skiff(
        [...q, `docker-archive:${base}/img.tar`, "--", "cat", "/opq/new"],
        cache,
      );
      deepStrictEqual([da.code, da.stdout], [0, "the opaque directory's only file\n"], da.stderr);

      // The store lists both names; rm removes one and keeps the shared layers.
      const list = await skiff(["image", "list", "--json"], cache);
      const names = JSON.parse(list.stdout).map((x: { name: string }) => x.name).sort();
      deepStrictEqual(names, [`docker-archive:${base}/img.tar`, ref]);
      const rm = await skiff(["image", "rm", `docker-archive:${base}/img.tar`], cache);
      strictEqual(rm.code, 0, rm.stderr);
      match(rm.stderr, /0 unreferenced layers/);

      const bad = await skiff([...q, ref, "--user", "nobody", "--", "true"], cache);
      strictEqual(bad.code, 125);
      match(bad.stderr, /user 'nobody' is not in .*\/etc\/passwd/);
    } finally {
      await Deno.remove(base, { recursive: true });
      RamSpares.sweep(); // the spare RAM copies of the cache in it
    }
  },
);

imageTest(
  "VirtualMachine.boot({ image }) (qemu): the image's Cmd, Env and WorkingDir, and a command of its own",
  ["qemu-system-x86_64"],
  async () => {
    if (kernelMissing) throw new Error(kernelMissing);
    const base = await Deno.makeTempDir({ prefix: "skiff-imglib-test-" });
    try {
      const layout = await buildTestImage(base);
      const image = await prepareImage(`oci:${layout}:${TEST_IMAGE.tag}`, {
        store: new ImageStore(`${base}/store`),
        progress: null,
      });
      await using vm = await VirtualMachine.boot({ engine: "qemu", image, memoryMiB: 256 });
      const def = await vm.exec([], { timeoutMs: 120_000 });
      deepStrictEqual([def.code, def.stdoutText], [0, "default-cmd in /srv\n"], def.stderrText);
      const own = await vm.exec(["sh", "-c", 'echo "$GREETING"; cat /etc/os-release; id -u'], {
        user: "app",
        timeoutMs: 120_000,
      });
      deepStrictEqual([own.code, own.stdoutText], [
        0,
        `hello from the image\n${TEST_IMAGE.osRelease}1000\n`,
      ]);
    } finally {
      await Deno.remove(base, { recursive: true });
      RamSpares.sweep(); // the spare RAM copies of the cache in it
    }
  },
);
