/**
 * Benchmark `qemu-restore`: the qemu engine's snapshot path against a cold
 * boot, both in this run, with the busybox test guest on q35 under TCG
 * (hv/qemu/testing.ts). Rounds alternate cold and restored guests.
 *
 * - cold: QEMU started → the guest's shell answers (READY);
 * - restore: QEMU `-incoming defer -S` with the sparse RAM copy beside it,
 *   `migrate-incoming` + `cont` → the shell answers;
 * - each then hot-plugs skiff's virtio-fs (vhost-user-fs-pci), mounts it and
 *   reads a file.
 *
 * Prints a table (medians) with the ratio restore/cold, the restore's steps
 * and the capture's cost, and one summary line
 * `qemu-restore engine=qemu restore=<ms> cold=<ms> ratio=<r>`.
 *
 * @module
 */

import { captureQemu, restoreQemu } from "./persist.ts";
import { QemuRamDir } from "./ram_dir.ts";
import { QemuProcess } from "./process.ts";
import { hotplugTestInitramfs, ShellConsole, TEST_READY_LINE, testKernel } from "./testing.ts";
import {
  plugMountRead,
  serveShare,
  TEST_MEMORY_MIB,
  testLaunch,
} from "./testdata/snapshot_guest.ts";
import type { KernelInfo } from "../kernel/mod.ts";
import { median } from "../../tests/bench_util.ts";

const ROUNDS = 4;

interface Sample {
  ready: number;
  mounted: number;
}

/** One guest from start (or restore) to a mounted share; returns ms since `t0`. */
async function toMounted(
  vm: QemuProcess,
  con: ShellConsole,
  sd: string,
  share: string,
  t0: number,
): Promise<Sample> {
  const answer = await con.run("true");
  if (answer.code !== 0) throw new Error("the guest shell did not answer");
  const ready = performance.now() - t0;
  await using server = serveShare(`${sd}/fs.sock`, share);
  const r = await plugMountRead(vm, con, {
    id: "fs0",
    socketPath: `${sd}/fs.sock`,
    tag: "bench",
    file: "hello",
  });
  if (r.out !== "hello") throw new Error(`the guest read ${JSON.stringify(r.out)}`);
  const mounted = performance.now() - t0;
  await vm.stop();
  void server;
  return { ready, mounted };
}

async function run(k: KernelInfo, dir: string, share: string): Promise<string[]> {
  const initrd = `${dir}/initrd.gz`;
  await Deno.writeFile(initrd, await hotplugTestInitramfs(k));
  const entry = `${dir}/entry`;
  const cold: Sample[] = [];
  const restored: Sample[] = [];
  const steps: Record<string, number[]> = { start: [], copy: [], load: [] };
  const capture = { paused: 0, written: 0, ramData: 0, state: 0 };
  for (let round = 0; round < ROUNDS; round++) {
    {
      using ram = QemuRamDir.create();
      const sd = await Deno.makeTempDir({ dir, prefix: "cold-" });
      const t0 = performance.now();
      const vm = await QemuProcess.start(testLaunch(k, initrd, sd, ram.ramFile));
      try {
        const con = new ShellConsole(vm.console!);
        await con.waitFor(new RegExp(TEST_READY_LINE));
        if (round === 0) {
          // The first cold guest is also captured (its timings exclude the capture).
          const tc = performance.now();
          const cap = await captureQemu(vm, entry);
          capture.paused = cap.pausedMs;
          capture.ramData = cap.ramDataBytes;
          capture.state = cap.stateBytes;
          await vm.qmp.cont();
          await cap.published;
          capture.written = performance.now() - tc;
          await vm.stop();
          continue;
        }
        cold.push(await toMounted(vm, con, sd, share, t0));
      } finally {
        await vm.stop();
      }
    }
    {
      using ram = QemuRamDir.create();
      const sd = await Deno.makeTempDir({ dir, prefix: "restore-" });
      const timings: Record<string, number> = {};
      const t0 = performance.now();
      const vm = await restoreQemu(entry, { ...testLaunch(k, initrd, sd, ram.ramFile), timings });
      try {
        await vm.qmp.cont();
        restored.push(await toMounted(vm, new ShellConsole(vm.console!), sd, share, t0));
        for (const s of Object.keys(steps)) steps[s].push(timings[s]);
      } finally {
        await vm.stop();
      }
    }
  }
  const ms = (x: number) => `${x.toFixed(0)} ms`;
  const c = {
    ready: median(cold.map((s) => s.ready)),
    mounted: median(cold.map((s) => s.mounted)),
  };
  const r = {
    ready: median(restored.map((s) => s.ready)),
    mounted: median(restored.map((s) => s.mounted)),
  };
  const rows = [
    ["", "cold boot", "restore", "ratio"],
    ["to READY (shell answers)", ms(c.ready), ms(r.ready), (r.ready / c.ready).toFixed(3)],
    [
      "+ hot-plug virtio-fs, mount, read",
      ms(c.mounted),
      ms(r.mounted),
      (r.mounted / c.mounted).toFixed(3),
    ],
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return [
    `qemu-restore: q35 TCG, ${TEST_MEMORY_MIB} MiB busybox guest, medians of ${cold.length} cold and ${restored.length} restored runs`,
    ...rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd()),
    `  restore steps: QEMU start ${ms(median(steps.start))}, RAM copy beyond it ${
      ms(median(steps.copy))
    }, migrate-incoming ${ms(median(steps.load))}`,
    `  capture: guest paused ${ms(capture.paused)}, entry written ${
      ms(capture.written)
    } (Worker); ` +
    `RAM data ${(capture.ramData / 2 ** 20).toFixed(0)} MiB, device state ${
      (capture.state / 1024).toFixed(0)
    } KiB`,
    `qemu-restore engine=qemu restore=${r.mounted.toFixed(0)} cold=${c.mounted.toFixed(0)} ratio=${
      (r.mounted / c.mounted).toFixed(3)
    }`,
  ];
}

/** Runs the benchmark; returns the output lines. */
export async function bench(): Promise<string[]> {
  const kernel = await testKernel();
  if (typeof kernel === "string") return [`qemu-restore skipped: ${kernel}`];
  const dir = await Deno.makeTempDir({ prefix: "skiff-qrbench-" });
  const share = await Deno.makeTempDir({ prefix: "skiff-qrbench-share-" });
  try {
    await Deno.writeTextFile(`${share}/hello`, "hello\n");
    return await run(kernel, dir, share);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(share, { recursive: true });
  }
}
