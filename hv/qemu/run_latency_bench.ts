/**
 * Benchmark: wall time of a cold `skiff run --engine qemu --no-snapshot --
 * /bin/true` (a whole skiff process: CLI, initramfs, QEMU, boot to the
 * agent's READY, devices hot-plugged, root share over vhost-user, workload,
 * power off) against QEMU booting the same kernel image (engine.ts
 * `qemuKernelImage`: the PVH vmlinux where there is one) with a minimal
 * busybox initramfs that powers off at once — both TCG, in the same run.
 * Prints `run-latency engine=qemu skiff=<ms> baseline=<ms> ratio=<r>`
 * (medians; ratio = skiff/baseline, lower is better).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { qemuKernelImage } from "./engine.ts";
import { QemuProcess } from "./process.ts";
import { busyboxInitramfs, testKernel } from "./testing.ts";
import { median } from "../../tests/bench_util.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));
const ROUNDS = 5;

/** Runs the benchmark; returns the output line(s). */
export async function bench(): Promise<string[]> {
  const kernel = await testKernel();
  if (typeof kernel === "string") return [`run-latency skipped: ${kernel}`];
  const dir = await Deno.makeTempDir({ prefix: "skiff-runbench-" });
  try {
    const initrd = await busyboxInitramfs(dir, kernel, "", []);
    const baseline: number[] = [];
    const skiff: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      let t = performance.now();
      const vm = await QemuProcess.start({
        dir,
        accel: "tcg",
        cpus: 1,
        memoryMiB: 512,
        // The image skiff boots (the PVH vmlinux where there is one): the same kernel entry.
        kernel: qemuKernelImage(kernel),
        initrd,
        append: "console=ttyS0 quiet panic=-1",
        portNames: [],
        console: false,
        fs: [],
      });
      await vm.exited;
      await vm.stop();
      baseline.push(performance.now() - t);

      t = performance.now();
      const out = await new Deno.Command(Deno.execPath(), {
        // Cold, as the reference is: a cache hit is run-cached's line.
        args: ["run", "-A", MAIN, "run", "--engine", "qemu", "--no-snapshot", "--", "/bin/true"],
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).output();
      skiff.push(performance.now() - t);
      if (!out.success) {
        return [`run-latency failed: ${new TextDecoder().decode(out.stderr).trim()}`];
      }
    }
    const s = median(skiff), b = median(baseline);
    return [
      `run-latency engine=qemu skiff=${s.toFixed(0)} baseline=${b.toFixed(0)} ratio=${
        (s / b).toFixed(2)
      }`,
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
