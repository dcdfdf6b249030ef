/**
 * Snapshot benchmark (`deno task bench snapshot`).
 *
 * - `restore-ms mem=<MiB>`: from the start of restore (open and validate the
 *   snapshot, map its memory, create the VM, set all state: `restoreVmAsync`)
 *   to the first KVM_RUN, median of several runs in one process, for 256,
 *   1024 and 4096 MiB guests; `restore-fresh-process-ms`: the same as the
 *   first restore of a new process (median of 3). Reference in the same run:
 *   `restore-read-copy-ms`, the time to read the same memory file into
 *   anonymous memory with read(2) (what a restore that copies would pay
 *   before its first KVM_RUN), and the ratio.
 * - `restore-hv-state-ms`, `restore-hv-first-run-ms mem=<MiB>`: the same
 *   through hv's Vm, to the state set and to its vCPU Worker entering
 *   KVM_RUN, in a process that keeps the last VM's Worker
 *   (`vcpuWorkers.keepIdle`); `restore-hv-first-run-new-worker-ms` without a
 *   kept Worker, and `restore-hv-fresh-process-ms` in a new process (Worker
 *   start-up included).
 * - `restore-prepare-ms mem=<MiB>`: the part of `restore-ms` that grows with
 *   guest size, timed inside the same runs: opening `/dev/kvm`,
 *   `KVM_CREATE_VM` and the memory slot (made in place once a process has
 *   verified a snapshot; on this host's shadow-paging KVM the slot
 *   allocates and zeroes per-page metadata); `restore-flatness-less-prepare`
 *   is the flatness of `restore-ms` minus it (skiff's own path plus the
 *   fixed KVM work).
 * - `restore-pooled-ms mem=<MiB>`: `restore-ms` in a process that keeps the
 *   next restore of a snapshot ready (`restorePool.keepReady`,
 *   snapshot/restore_pool.ts): its memory mapped and its VM and slot made
 *   while the previous VM runs. Restores are `VM_LIFE_MS` apart in both
 *   lines (the restored VM's run, in which the pool works). `restore-flatness`
 *   is the pooled line's 4096/256 ratio (goal ≤ 2: what skiff's restore
 *   costs does not grow with the guest); `restore-flatness-unpooled` is
 *   `restore-ms`'s, which swings with this host's KVM slot cost (1.3–2.4
 *   measured, the same code).
 * - `capture-ms mem=<MiB>`: pause point to published snapshot.
 * - `snapshot-bytes touched=32MiB mem=1024MiB`: bytes allocated on disk by a
 *   snapshot of a 1 GiB guest with 32 MiB of non-zero pages.
 *
 * Goals: restore ≤ 5 ms and flat in guest size (4096 within 2× of 256), the
 * first KVM_RUN of a restored hv VM ≤ 10 ms; snapshot size close to the
 * touched memory.
 *
 * @module
 */

import { join } from "node:path";
import { RegionMemory } from "../hv/memory.ts";
import { check, close, libc, MAP, mmap, munmap, O, open, PROT, viewAt } from "../kvm_ffi/libc.ts";
import { MEMORY_FILE, STATE_FILE } from "./format.ts";
import { prepareVm, releaseVm, TestMachine } from "./testdata/machine.ts";
import { captureVm, restoreVmAsync } from "./vm_snapshot.ts";
import { Vm } from "../hv/vm.ts";
import { vcpuWorkers } from "../hv/vcpu_worker.ts";
import { restorePool } from "./restore_pool.ts";
import { captureHvVm, restoreHvVm } from "./hv_snapshot.ts";
import { HvTestDevices } from "./testdata/hv_device.ts";
import { setupGuest } from "./testdata/machine.ts";
import { median } from "../tests/bench_util.ts";

const MiB = 1 << 20;
const RUNS = 11;

/** Boots the test guest in a `mib` MiB VM with `touchMiB` of extra non-zero pages, runs it to the doorbell and captures. */
async function makeSnapshot(dir: string, mib: number, touchMiB: number): Promise<number> {
  using m = new TestMachine(RegionMemory.memfd([{ guestAddr: 0, size: mib * MiB }]), 1);
  m.boot(8, 4);
  // Guest-touched memory spread over the whole guest above 2 MiB (one 4 KiB page per stride).
  const pages = (touchMiB * MiB) / 4096;
  const stride = Math.floor((mib * MiB - 2 * MiB) / pages / 4096) * 4096;
  const page = new Uint8Array(4096).fill(0x5a);
  for (let i = 0; i < pages; i++) m.memory.write(2 * MiB + i * stride, page);
  if (m.run() !== "doorbell") throw new Error("guest did not ring the doorbell");
  const t0 = performance.now();
  await captureVm(m, dir, { bench: "snapshot", mib });
  return performance.now() - t0;
}

/**
 * Restore to first KVM_RUN, in ms (the VM and its memory slot made while the
 * snapshot is verified), and of it the VM and its slot when they were made in
 * place (NaN when overlapped with verifying: a process's first restore).
 */
async function restoreOnce(dir: string): Promise<[number, number]> {
  const t0 = performance.now();
  let t1 = 0;
  let prepareMs = NaN;
  const m = await restoreVmAsync(dir, {
    prepare: (memory, overlap, pooled) => {
      const t = performance.now();
      const p = prepareVm(memory, overlap, pooled);
      if (!overlap) void p.then(() => prepareMs = performance.now() - t, () => {});
      return p;
    },
    release: releaseVm,
    build: ({ memory, snapshot }, prepared) =>
      new TestMachine(
        memory,
        snapshot.manifest.vcpus.length,
        !snapshot.manifest.vcpus.every((v) => v.cpuid),
        prepared,
      ),
    dispose: (m) => m[Symbol.dispose](),
  });
  try {
    m.run(() => t1 = performance.now());
  } finally {
    m[Symbol.dispose]();
  }
  return [t1 - t0, prepareMs];
}

/** Time between restores in {@link restoreRuns}: the restored VM's run. */
const VM_LIFE_MS = 10;

/**
 * `RUNS` restores of `dir`, `VM_LIFE_MS` apart; with `pooled`, restorePool
 * keeps the next one ready (its memory mapped and its VM made while the
 * previous VM "runs"). [restore, prepare] ms each.
 */
async function restoreRuns(dir: string, pooled: boolean): Promise<[number, number][]> {
  const runs: [number, number][] = [];
  restorePool.keepReady(pooled);
  try {
    if (pooled) await restoreOnce(dir); // the first one finds nothing made ahead
    for (let i = 0; i < RUNS; i++) {
      await new Promise((r) => setTimeout(r, VM_LIFE_MS));
      runs.push(await restoreOnce(dir));
    }
    if (pooled && restorePool.taken < RUNS) {
      throw new Error(`restorePool served ${restorePool.taken} of ${RUNS} restores`);
    }
  } finally {
    await restorePool.drain();
  }
  return runs;
}

/**
 * The hv test VM (over `vm` when the restore made it); a restore whose
 * snapshot carries the CPUID passes `setCpuid: false` (restore sets it).
 */
function buildHv(memory: RegionMemory, setCpuid = true, made?: Vm) {
  const vm = made ?? Vm.create({ memory });
  const dev = new HvTestDevices(1);
  vm.addDevice(dev.spec);
  const v = vm.createVcpu();
  if (setCpuid) v.fd.setCpuid2(vm.kvm.supportedCpuid());
  return { vm, dev, devices: new Map([["test", dev]]) };
}

/** An hv VM (Worker vCPU) snapshot at the doorbell, the guest waiting for its go. */
async function makeHvSnapshot(dir: string, mib: number): Promise<void> {
  using memory = RegionMemory.memfd([{ guestAddr: 0, size: mib * MiB }]);
  const { vm, devices } = buildHv(memory);
  try {
    setupGuest(memory, [vm.vcpus[0].fd], 8, 4);
    const rang = new Promise<void>((r) => vm.onDeviceMessage("test", () => r()));
    await vm.start();
    await rang;
    await vm.pause();
    await captureHvVm(vm, dir, { devices });
  } finally {
    await vm.close();
  }
}

/** hv restore: [ms until state is set, ms until the vCPU Worker enters its KVM_RUN loop]. */
async function restoreHvOnce(dir: string): Promise<[number, number]> {
  const t0 = performance.now();
  const r = await restoreHvVm(
    dir,
    ({ memory, snapshot, vm }) =>
      buildHv(memory, !snapshot.manifest.vcpus.every((v) => v.cpuid), vm),
    { vm: {} },
  );
  const t1 = performance.now();
  try {
    await r.vm.start();
    return [t1 - t0, performance.now() - t0];
  } finally {
    await r.vm.close();
    r.memory[Symbol.dispose]();
  }
}

/**
 * Restore to first KVM_RUN as the first restore of a new process (median of
 * `runs` processes): `restore_timing.ts` (the single-threaded test VMM), or
 * `hv_restore_timing.ts` (hv's Vm: the vCPU Worker started at the restore's
 * start, first KVM_RUN in it).
 */
async function freshRestore(
  dir: string,
  helperName = "restore_timing.ts",
  runs = 3,
): Promise<number> {
  const helper = new URL(`./testdata/${helperName}`, import.meta.url).pathname;
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const p = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", helper, dir],
      stdout: "piped",
    }).output();
    if (!p.success) throw new Error(`restore_timing failed with exit code ${p.code}`);
    times.push(Number(new TextDecoder().decode(p.stdout).trim()));
  }
  return median(times);
}

/** Reference: read(2) the whole memory file into anonymous memory, in ms. */
function readCopy(path: string, size: number): number {
  const t0 = performance.now();
  const fd = open(path, O.RDONLY);
  const ptr = mmap(size, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE);
  try {
    const base = Deno.UnsafePointer.value(ptr) as bigint;
    const chunk = 16 * MiB;
    for (let off = 0; off < size; off += chunk) {
      const p = Deno.UnsafePointer.create(base + BigInt(off))!;
      const n = Math.min(chunk, size - off);
      const got = check("read", libc.read(fd, viewAt(p, n), BigInt(n)));
      if (got !== n) throw new Error(`short read ${got} of ${n}`);
    }
    return performance.now() - t0;
  } finally {
    munmap(ptr, size);
    close(fd);
  }
}

function diskBytes(dir: string): number {
  return [STATE_FILE, MEMORY_FILE]
    .map((f) => Deno.statSync(join(dir, f)))
    .reduce((n, st) => n + (st.blocks ?? 0) * 512, 0);
}

/** Runs the benchmark; returns its output lines. */
export async function bench(): Promise<string[]> {
  const root = await Deno.makeTempDir({ prefix: "skiff-snapbench-" });
  const lines: string[] = [];
  try {
    const restore: Record<number, number> = {};
    const prepare: Record<number, number> = {};
    const pooled: Record<number, number> = {};
    for (const mib of [256, 1024, 4096]) {
      const dir = join(root, `m${mib}`);
      const captureMs = await makeSnapshot(dir, mib, 0);
      await restoreOnce(dir); // warm the page cache and the code paths
      const runs = await restoreRuns(dir, false);
      const pooledRuns = await restoreRuns(dir, true);
      restore[mib] = median(runs.map((r) => r[0]));
      prepare[mib] = median(runs.map((r) => r[1]));
      pooled[mib] = median(pooledRuns.map((r) => r[0]));
      lines.push(`restore-ms mem=${mib} ${restore[mib].toFixed(2)}`);
      lines.push(
        `restore-prepare-ms mem=${mib} ${
          prepare[mib].toFixed(2)
        } (of restore-ms: /dev/kvm, KVM_CREATE_VM, the memory slot)`,
      );
      lines.push(
        `restore-pooled-ms mem=${mib} ${
          pooled[mib].toFixed(2)
        } (memory and VM made ahead by restorePool while the previous VM ran)`,
      );
      lines.push(`restore-fresh-process-ms mem=${mib} ${(await freshRestore(dir)).toFixed(2)}`);
      if (mib === 256) {
        // Reference only at 256 MiB: it grows linearly (≈18 s for 4 GiB on this machine).
        const copy = readCopy(join(dir, MEMORY_FILE), mib * MiB);
        lines.push(
          `restore-read-copy-ms mem=${mib} ${
            copy.toFixed(2)
          } (reference: read(2) of the memory file)`,
        );
        lines.push(`restore-vs-read-copy mem=${mib} ${(restore[mib] / copy).toFixed(4)}`);
      }
      lines.push(`capture-ms mem=${mib} ${captureMs.toFixed(2)}`);
      await Deno.remove(dir, { recursive: true });
    }
    lines.push(
      `restore-flatness 4096/256 ${
        (pooled[4096] / pooled[256]).toFixed(2)
      } (goal ≤ 2; restore-pooled-ms: a process's later restores of a snapshot)`,
    );
    lines.push(
      `restore-flatness-unpooled 4096/256 ${
        (restore[4096] / restore[256]).toFixed(2)
      } (restore-ms: memory mapped and VM made during each restore)`,
    );
    lines.push(
      `restore-flatness-less-prepare 4096/256 ${
        ((restore[4096] - prepare[4096]) / (restore[256] - prepare[256])).toFixed(2)
      } (restore-ms minus restore-prepare-ms)`,
    );

    // The same through hv's Vm (vCPU in a Worker): state set, then to the Worker's first KVM_RUN.
    // A process that restores VMs one after another keeps a Worker for the next vCPU
    // (vcpuWorkers.keepIdle): the first KVM_RUN does not wait for a Worker to start.
    for (const mib of [256, 4096]) {
      const dir = join(root, `hv${mib}`);
      await makeHvSnapshot(dir, mib);
      vcpuWorkers.keepIdle(1);
      try {
        await restoreHvOnce(dir);
        const runs: [number, number][] = [];
        for (let i = 0; i < 5; i++) runs.push(await restoreHvOnce(dir));
        lines.push(`restore-hv-state-ms mem=${mib} ${median(runs.map((r) => r[0])).toFixed(2)}`);
        lines.push(
          `restore-hv-first-run-ms mem=${mib} ${
            median(runs.map((r) => r[1])).toFixed(2)
          } (goal ≤ 10; a kept vCPU Worker)`,
        );
      } finally {
        vcpuWorkers.drain();
      }
      if (mib === 256) {
        // Without a kept Worker: restoreHvVm starts one before reading the snapshot
        // (~10 ms blocked in new Worker(), then its modules load meanwhile).
        const runs: number[] = [];
        for (let i = 0; i < 5; i++) runs.push((await restoreHvOnce(dir))[1]);
        lines.push(`restore-hv-first-run-new-worker-ms mem=${mib} ${median(runs).toFixed(2)}`);
        lines.push(
          `restore-hv-fresh-process-ms mem=${mib} ${
            (await freshRestore(dir, "hv_restore_timing.ts", 5)).toFixed(2)
          } (a new process: restore, Worker start, first KVM_RUN)`,
        );
      }
      await Deno.remove(dir, { recursive: true });
    }

    const dir = join(root, "touched");
    const captureMs = await makeSnapshot(dir, 1024, 32);
    const bytes = diskBytes(dir);
    lines.push(`capture-ms mem=1024 touched=32MiB ${captureMs.toFixed(2)}`);
    lines.push(`snapshot-bytes touched=32MiB mem=1024MiB ${bytes}`);
    lines.push(`snapshot-bytes-vs-touched ${(bytes / (32 * MiB)).toFixed(3)}`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
  return lines;
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
