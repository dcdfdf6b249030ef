/**
 * Test helper: the agent run natively (L3) — the native build variant as
 * PID 1 of private mount and PID namespaces (`unshare`, root), reached over
 * AF_UNIX sockets in a temporary directory with {@link UnixTransport}.
 * Disposal powers it off (which ends the PID namespace and everything in
 * it), waits for the process and removes the directory.
 *
 * @module
 */

import { compileElf } from "../codegen/mod.ts";
import { AgentClient } from "./client.ts";
import { agentProgram } from "./program.ts";
import { AGENT_BOOT_ERROR_PREFIX, AGENT_READY_MARKER } from "./protocol.ts";
import { UnixTransport } from "./unix_transport.ts";

/** Hang guard for starting and stopping (the agent is ready in milliseconds). */
const START_TIMEOUT_MS = 60_000;

/** Options of {@link startNativeAgent}. */
export interface NativeAgentOptions {
  /** Also private UTS and network namespaces (host name and interfaces of its own). */
  isolateNet?: boolean;
  /** Shell commands run (in the namespaces) before the agent is exec'd as PID 1. */
  prelude?: string;
}

/** A running native agent. */
export interface NativeAgent extends AsyncDisposable {
  /** The socket directory (also holds the agent ELF and its `root/` prefix). */
  readonly dir: string;
  readonly client: AgentClient;
  readonly transport: UnixTransport;
  /** The agent's pid on the host (it is PID 1 inside its namespace). */
  readonly hostPid: number;
  /** The `unshare` process's status. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** What the agent wrote to stderr so far. */
  stderr(): string;
}

/**
 * Directories and processes of agents not disposed yet: removed when the
 * process unloads (a test runner that stops on an uncaught error skips
 * `await using`), so nothing is left behind.
 */
const live = new Map<string, Deno.ChildProcess>();
globalThis.addEventListener("unload", () => {
  for (const [dir, child] of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // gone
    }
  }
});

/** The host pid of `parent`'s only child (from /proc/PID/task/PID/children). */
async function childOf(parent: number, signal: AbortSignal): Promise<number> {
  for (;;) {
    signal.throwIfAborted();
    const text = await Deno.readTextFile(`/proc/${parent}/task/${parent}/children`).catch(() => "");
    const pid = Number(text.trim().split(/\s+/)[0]);
    if (pid > 0) return pid;
    // The agent already said READY, so unshare forked it: this is a formality.
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Compiles the native agent for a fresh temporary directory, starts it in
 * its namespaces and waits for READY.
 */
export async function startNativeAgent(o: NativeAgentOptions = {}): Promise<NativeAgent> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-" });
  const exe = `${dir}/agent`;
  await Deno.writeFile(exe, compileElf(agentProgram({ native: { dir } })).bytes, { mode: 0o755 });
  const ns = ["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"];
  if (o.isolateNet) ns.push("--uts", "--net");
  const cmd = o.prelude ? ["sh", "-c", `${o.prelude}\nexec "$0"`, exe] : [exe];
  const child = new Deno.Command("unshare", {
    args: [...ns, ...cmd],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  live.set(dir, child);
  let stderr = "";
  const errDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (s) => void (stderr += s) }),
  );
  const exited = (async () => {
    const [st] = await Promise.all([child.status, errDone]);
    return st;
  })();
  const cleanup = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await exited.catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    live.delete(dir);
  };
  const signal = AbortSignal.timeout(START_TIMEOUT_MS);
  const timedOut = new Promise<never>((_, reject) => {
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
  timedOut.catch(() => {});
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (!out.includes(AGENT_READY_MARKER)) {
      const r = await Promise.race([reader.read(), timedOut]);
      if (r.done) {
        throw new Error(
          `native agent ended before READY (${AGENT_BOOT_ERROR_PREFIX}…?): stdout ${
            JSON.stringify(out)
          }, stderr ${JSON.stringify(stderr)}`,
        );
      }
      out += r.value;
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    await cleanup();
    throw e;
  }
  // Drain the rest of stdout (nothing more is expected) so the process can end.
  const outDone = (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  let hostPid: number;
  try {
    hostPid = await childOf(child.pid, signal);
  } catch (e) {
    await cleanup();
    await outDone;
    throw e;
  }
  const transport = new UnixTransport(dir);
  const client = new AgentClient(transport);
  return {
    dir,
    client,
    transport,
    hostPid,
    exited,
    stderr: () => stderr,
    async [Symbol.asyncDispose]() {
      const stop = AbortSignal.timeout(START_TIMEOUT_MS);
      try {
        await client.poweroff({ signal: stop });
      } catch {
        // already gone, or wedged: killed below
      }
      const gone = await Promise.race([
        exited.then(() => true),
        new Promise<boolean>((r) => stop.addEventListener("abort", () => r(false), { once: true })),
      ]);
      if (!gone) child.kill("SIGKILL");
      await exited;
      await outDone;
      await Deno.remove(dir, { recursive: true });
      live.delete(dir);
    },
  };
}
