/**
 * Benchmarks of the library on the qemu engine: a `VirtualMachine` booted
 * from mod.ts (`engine: "qemu"`, TCG here; the snapshot cache left alone, so
 * the run neither reads nor fills the user's cache), each against the host
 * measured in the same run, rounds interleaved so load from elsewhere on the
 * machine hits both alike:
 *
 * - `exec-latency`: `vm.exec(["true"])` (a request over vsock, fork/exec in
 *   the guest, the status back) against `new Deno.Command("true").output()`;
 *   medians of 30 each after a warm-up.
 * - `spawn-throughput`: 256 MiB through `cat` spawned in the guest
 *   (`vm.spawn`, stdin and stdout over vsock) against a host `cat` pipe, the
 *   same 1 MiB writes both sides, the bytes read back counted; medians of 3.
 *
 * Prints `exec-latency engine=qemu vm=<ms> host=<ms> ratio=<vm/host>` and
 * `spawn-throughput engine=qemu vm=<MiB/s> host=<MiB/s> ratio=<vm/host>`.
 *
 * @module
 */

import { VirtualMachine } from "../../mod.ts";
import { testKernel } from "../qemu/testing.ts";
import { missing } from "../../tests/requirements.ts";
import { median, pump, timeOnce } from "../../tests/bench_util.ts";

const MIB = 1 << 20;
const EXEC_ROUNDS = 3;
const EXEC_PER_ROUND = 10;
const SIZE = 256 * MIB;
const TP_ROUNDS = 3;

const fmt = (x: number) => x.toFixed(2);

async function execLatency(vm: VirtualMachine): Promise<string> {
  const check = (r: { success: boolean; code: number }, who: string) => {
    if (!r.success) throw new Error(`${who} true exited ${r.code}`);
  };
  // Warm-up: the guest's page cache, the agent's first request, Deno's spawn path.
  for (let i = 0; i < 3; i++) {
    check(await vm.exec(["true"]), "guest");
    check(await new Deno.Command("true").output(), "host");
  }
  const inVm: number[] = [];
  const host: number[] = [];
  for (let round = 0; round < EXEC_ROUNDS; round++) {
    for (let i = 0; i < EXEC_PER_ROUND; i++) {
      inVm.push(await timeOnce(async () => check(await vm.exec(["true"]), "guest")));
    }
    for (let i = 0; i < EXEC_PER_ROUND; i++) {
      host.push(
        await timeOnce(async () => check(await new Deno.Command("true").output(), "host")),
      );
    }
  }
  const v = median(inVm), h = median(host);
  return `exec-latency engine=qemu vm=${fmt(v)}ms host=${fmt(h)}ms ratio=${fmt(v / h)}`;
}

/** A running `cat`, in the guest or on the host. */
interface Cat extends AsyncDisposable {
  stdin: WritableStream<Uint8Array>;
  stdout: ReadableStream<Uint8Array>;
  status: Promise<{ success: boolean; code: number }>;
}

/** MiB/s of {@link SIZE} bytes through a `cat` that `spawn` starts (its start included), checked. */
async function catThroughput(who: string, spawn: () => Cat | Promise<Cat>): Promise<number> {
  const t0 = performance.now();
  {
    await using cat = await spawn();
    const got = await pump(cat.stdin, cat.stdout, SIZE);
    if (got !== SIZE) throw new Error(`${who} cat returned ${got} of ${SIZE} bytes`);
    const st = await cat.status;
    if (!st.success) throw new Error(`${who} cat exited ${st.code}`);
  }
  return SIZE / MIB / ((performance.now() - t0) / 1000);
}

async function spawnThroughput(vm: VirtualMachine): Promise<string> {
  const inVm: number[] = [];
  const host: number[] = [];
  for (let round = 0; round < TP_ROUNDS; round++) {
    inVm.push(
      await catThroughput("guest", () => vm.spawn(["cat"], { stdin: "piped", stderr: "null" })),
    );
    host.push(
      await catThroughput(
        "host",
        () => new Deno.Command("cat", { stdin: "piped", stdout: "piped", stderr: "null" }).spawn(),
      ),
    );
  }
  const v = median(inVm), h = median(host);
  return `spawn-throughput engine=qemu vm=${fmt(v)}MiB/s host=${fmt(h)}MiB/s ratio=${fmt(v / h)}`;
}

/** Runs the benchmarks; one line each. */
export async function bench(): Promise<string[]> {
  const kernel = await testKernel();
  if (typeof kernel === "string") return [`vm benches skipped: ${kernel}`];
  const why = missing("qemu");
  if (why) return [`vm benches skipped: ${why}`];
  await using vm = await VirtualMachine.boot({ engine: "qemu", snapshot: false });
  if (vm.engine !== "qemu") throw new Error(`booted on ${vm.engine}, not qemu`);
  return [await execLatency(vm), await spawnThroughput(vm)];
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
