/**
 * Time of skiff's one-shot init against a busybox shell init doing the same
 * job (same kernel, command line, modules; mount the pseudo-filesystems, load
 * the modules, find the status port, run `true`, write its status, power
 * off), both under QEMU TCG. Two numbers each, median of alternating runs:
 * the guest's own clock from "Run /init" to "reboot: Power down" (the init's
 * share; the kernel's boot before it is the same for both and noisy here),
 * and the wall time from starting QEMU to its exit.
 *
 * @module
 */

import { QemuProcess } from "../hv/qemu/process.ts";
import { busyboxInitramfs, readAll, testKernel } from "../hv/qemu/testing.ts";
import type { KernelInfo } from "../hv/kernel/mod.ts";
import { BASE_MODULES, buildInitramfs, DEFAULT_PORTS, defaultInitConfig } from "./mod.ts";

const RUNS = 5;
const DEADLINE_MS = 120_000;

// QemuProcess adds `tsc_early_khz`/`tsc=reliable` for TCG (hv/qemu/cmdline.ts withTcgClock);
// loglevel=7 puts "Run /init" and "reboot: Power down" on the console.
const APPEND = "console=ttyS0 loglevel=7 panic=-1";

interface Timing {
  wallMs: number;
  /** Guest clock from "Run /init" to "reboot: Power down". */
  initMs: number;
}

async function timeBoot(k: KernelInfo, dir: string, initrd: string): Promise<Timing> {
  const p = DEFAULT_PORTS;
  const t0 = performance.now();
  const vm = await QemuProcess.start({
    dir,
    accel: "tcg",
    cpus: 1,
    memoryMiB: 256,
    kernel: k.bzImage!,
    initrd,
    append: APPEND,
    portNames: [p.stdin, p.stdout, p.stderr, p.status],
    console: true,
    fs: [],
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const [status, con] = await Promise.race([
      Promise.all([readAll(vm.ports.get(p.status)!), readAll(vm.console!), vm.exited]),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("guest did not finish in time")), DEADLINE_MS);
      }),
    ]);
    const wallMs = performance.now() - t0;
    if (status !== "exit 0\n") {
      throw new Error(`status ${JSON.stringify(status)}; console:\n${con}`);
    }
    const at = (re: RegExp) => {
      const m = new RegExp(`\\[\\s*([\\d.]+)\\] ${re.source}`).exec(con);
      if (!m) throw new Error(`no '${re.source}' on the console:\n${con}`);
      return Number(m[1]) * 1000;
    };
    return { wallMs, initMs: at(/reboot: Power down/) - at(/Run \/init as init process/) };
  } finally {
    clearTimeout(timer);
    await vm.stop(0);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Runs the benchmark; returns the output lines. */
export async function bench(): Promise<string[]> {
  const k = await testKernel();
  if (typeof k === "string") return [`init boot: skipped (${k})`];
  const dir = await Deno.makeTempDir({ prefix: "skiff-initbench-" });
  try {
    const busybox = await Deno.readFile("/bin/busybox");
    const config = defaultInitConfig(["/bin/busybox", "true"]);
    const skiffInitrd = `${dir}/skiff.cpio.gz`;
    await Deno.writeFile(
      skiffInitrd,
      await buildInitramfs({
        kernel: k,
        config,
        extraFiles: [{ path: "/bin/busybox", data: busybox, mode: 0o755 }],
      }),
    );
    const refInitrd = await busyboxInitramfs(
      dir,
      k,
      [
        "mkdir -p /dev/pts /dev/shm /tmp /run",
        "mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm",
        "mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run",
        "hostname skiff; ip link set lo up 2>/dev/null",
        "st=",
        "for i in $(seq 500); do",
        '  for q in /sys/class/virtio-ports/*; do [ "$(cat $q/name 2>/dev/null)" = skiff.status ] && st=/dev/$(basename $q); done',
        '  [ -n "$st" ] && break; sleep 0.02',
        "done",
        'true; echo "exit $?" > $st',
      ].join("\n"),
      BASE_MODULES,
    );
    const ours: Timing[] = [];
    const ref: Timing[] = [];
    for (let i = 0; i < RUNS; i++) {
      ours.push(await timeBoot(k, dir, skiffInitrd));
      ref.push(await timeBoot(k, dir, refInitrd));
    }
    const line = (what: string, key: keyof Timing) => {
      const a = median(ours.map((t) => t[key]));
      const b = median(ref.map((t) => t[key]));
      return `init boot (QEMU TCG, initramfs only, median of ${RUNS}) ${what}: skiff init ` +
        `${a.toFixed(0)} ms, busybox sh init ${b.toFixed(0)} ms, ratio ${(a / b).toFixed(2)}`;
    };
    return [
      line("/init to power-off, guest clock", "initMs"),
      line("QEMU start to exit, wall", "wallMs"),
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
