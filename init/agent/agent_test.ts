// L3 native: the guest agent (init/agent/program.ts, native variant) as PID 1
// of private mount and PID namespaces, driven by AgentClient over AF_UNIX.
import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { startNativeAgent } from "./testing.ts";
import { AgentStepError } from "./errors.ts";

const NEEDS = ["unshare", "root"] as const;

hostTest(
  "agent (native): several commands in one agent, status, env, cwd, stdin",
  NEEDS,
  async () => {
    await using agent = await startNativeAgent();
    const a = agent.client;
    const r1 = await a.exec(
      ["sh", "-c", 'echo "out $0 $1 $FOO"; echo err >&2; exit 3', "x", "y z"],
      {
        env: { FOO: "bar baz", PATH: "/usr/bin:/bin" },
      },
    );
    strictEqual(r1.code, 3, r1.stderrText);
    strictEqual(r1.signal, null);
    strictEqual(r1.success, false);
    strictEqual(r1.stdoutText, "out x y z bar baz\n");
    strictEqual(r1.stderrText, "err\n");
    const r2 = await a.exec(["pwd"], { cwd: "/usr" });
    deepStrictEqual([r2.code, r2.stdoutText], [0, "/usr\n"]);
    const r3 = await a.exec(["cat"], { stdin: "from the host\n" });
    deepStrictEqual([r3.code, r3.stdoutText], [0, "from the host\n"]);
    const r4 = await a.exec(["skiff-no-such-command", "x"]);
    strictEqual(r4.code, 127);
    match(r4.stderrText, /skiff: skiff-no-such-command: command not found/);
    const r5 = await a.exec(["true"], { cwd: "/no/such/dir" });
    strictEqual(r5.code, 126);
    match(r5.stderrText, /error chdir \/no\/such\/dir: ENOENT/);
    // The agent is PID 1 of its namespace; commands run in their own sessions.
    // (The namespace's own /proc is the one the agent mounted under its prefix.)
    const r6 = await a.exec([
      "sh",
      "-c",
      `read -r pid comm state ppid pgrp sid rest < /proc/self/stat; echo $pid $pgrp $sid; cat ${agent.dir}/root/proc/1/comm`,
    ]);
    const [pid, pgrp, sid] = r6.stdoutText.split("\n")[0].split(" ").map(Number);
    ok(pid > 0 && pgrp === pid && sid === pid, r6.stdoutText);
    match(r6.stdoutText, /\nagent\n$/);
    await rejects(a.exec(["true"], { cwd: "relative" }), /absolute/);
  },
);
