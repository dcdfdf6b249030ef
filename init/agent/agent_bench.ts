/**
 * Benchmarks of the agent run natively (`testing.ts`: the native variant in
 * namespaces, AF_UNIX), each against a host reference measured in the same
 * run: the cost of a request round trip and fork/exec through the agent
 * (vs `Deno.Command`), and bytes through a spawned `cat` and through
 * writeFile/readFile (vs a host pipe through `cat` and Deno's file API).
 * Under a VM the transport is vsock instead; these isolate the agent and
 * client's own cost.
 *
 * @module
 */

import { missing } from "../../tests/requirements.ts";
import { startNativeAgent } from "./testing.ts";
import { median, pump, timeIt } from "../../tests/bench_util.ts";

const MIB = 1 << 20;

/** Runs the benchmarks; one line each. */
export async function bench(): Promise<string[]> {
  const why = missing("root") ?? missing("unshare");
  if (why) return [`agent benches skipped: ${why}`];
  await using agent = await startNativeAgent();
  const a = agent.client;
  const lines: string[] = [];
  const fmt = (x: number) => x.toFixed(2);

  // Alternating too: 3 rounds of 10 each, the median of all.
  const agentExecs: number[] = [];
  const hostExecs: number[] = [];
  await a.exec(["true"]);
  await new Deno.Command("true").output();
  for (let round = 0; round < 3; round++) {
    agentExecs.push(await timeIt(10, () => a.exec(["true"])));
    hostExecs.push(await timeIt(10, () => new Deno.Command("true").output()));
  }
  const agentExec = median(agentExecs);
  const hostExec = median(hostExecs);
  lines.push(
    `agent-exec-latency engine=native agent=${fmt(agentExec)}ms host=${fmt(hostExec)}ms ratio=${
      fmt(agentExec / hostExec)
    }`,
  );

  // 256 MiB each way, alternating agent and host three times (the median), so
  // load from elsewhere on the machine hits both alike.
  const size = 256 * MIB;
  const agentRuns: number[] = [];
  const hostRuns: number[] = [];
  for (let round = 0; round < 3; round++) {
    let t0 = performance.now();
    {
      await using cat = await a.spawn(["cat"], { stdin: "piped" });
      const got = await pump(cat.stdin, cat.stdout, size);
      if (got !== size) throw new Error(`cat through the agent returned ${got} of ${size} bytes`);
      await cat.status;
    }
    agentRuns.push(size / MIB / ((performance.now() - t0) / 1000));
    t0 = performance.now();
    {
      const cat = new Deno.Command("cat", { stdin: "piped", stdout: "piped" }).spawn();
      const got = await pump(cat.stdin, cat.stdout, size);
      if (got !== size) throw new Error(`host cat returned ${got} of ${size} bytes`);
      await cat.status;
    }
    hostRuns.push(size / MIB / ((performance.now() - t0) / 1000));
  }
  const agentTp = median(agentRuns);
  const hostTp = median(hostRuns);
  lines.push(
    `agent-spawn-throughput engine=native agent=${fmt(agentTp)}MiB/s host=${
      fmt(hostTp)
    }MiB/s ratio=${fmt(agentTp / hostTp)}`,
  );

  const data = new Uint8Array(64 * MIB).fill(0xa5);
  const path = `${agent.dir}/bench-file`;
  const agentFiles: number[] = [];
  const hostFiles: number[] = [];
  for (let round = 0; round < 5; round++) {
    agentFiles.push(
      await timeIt(1, async () => {
        await a.writeFile(path, data);
        await a.readFile(path);
      }),
    );
    hostFiles.push(
      await timeIt(1, async () => {
        await Deno.writeFile(path, data);
        await Deno.readFile(path);
      }),
    );
  }
  const agentFile = median(agentFiles);
  const hostFile = median(hostFiles);
  lines.push(
    `agent-file-roundtrip-64MiB engine=native agent=${fmt(agentFile)}ms host=${
      fmt(hostFile)
    }ms ratio=${fmt(agentFile / hostFile)}`,
  );
  return lines;
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
