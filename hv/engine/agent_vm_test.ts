// AgentVm's error mapping with a stand-in agent client and machine (no VM).
import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import type { AgentClient } from "../../init/agent/client.ts";
import { AgentStepError } from "../../init/agent/errors.ts";
import { VsockError } from "../../devices/virtio/vsock/connection.ts";
import type { VmConfig } from "../config.ts";
import {
  CommandTimeoutError,
  ConfigError,
  SkiffError,
  VmError,
  VmTimeoutError,
} from "../errors.ts";
import { AgentVm, checkTimeoutMs, MAX_TIMEOUT_MS } from "./agent_vm.ts";

const RESULT = {
  code: 0,
  signal: null,
  success: true,
  stdout: new Uint8Array(0),
  stderr: new Uint8Array(0),
  stdoutText: "",
  stderrText: "",
};

/** Resolves `RESULT`, or (as the client does after killing the command) rejects with the signal's reason. */
function execLike(ms: number, signal?: AbortSignal): Promise<typeof RESULT> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => resolve(RESULT), ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * An AgentVm over `agent` (the methods a test needs). The machine's stop
 * fires `onStop` (the device reset) before it settles `stopped`.
 */
function vmWith(agent: Partial<Record<keyof AgentClient, unknown>>, onStop = () => {}) {
  let settle!: (e?: unknown) => void;
  const stopped = new Promise<void>((res, rej) => settle = (e) => e ? rej(e) : res());
  const calls: string[] = [];
  const vm = new AgentVm({
    engine: "qemu",
    origin: { from: "boot", captured: false, key: null, readyMs: 0 },
    config: {} as VmConfig,
    agent: agent as unknown as AgentClient,
    root: "",
    machine: {
      snapshot: () => Promise.reject(new Error("no snapshots here")),
      stop: async () => {
        calls.push("stop");
        onStop();
        await Promise.resolve();
        settle();
      },
      stopped,
    },
  });
  return { vm, calls, die: (e: unknown) => settle(e) };
}

Deno.test("AgentVm: timeoutMs kills the command, not the VM (CommandTimeoutError)", async () => {
  const { vm, calls } = vmWith({
    exec: (_argv: string[], o: { signal?: AbortSignal }) => execLike(5000, o.signal),
  });
  await rejects(vm.exec(["sleep", "5"], { timeoutMs: 20 }), (e: unknown) => {
    ok(e instanceof CommandTimeoutError && e instanceof VmTimeoutError && e instanceof VmError);
    strictEqual(e.message, "the command timed out after 0.02 s and was killed");
    strictEqual(e.seconds, 0.02);
    return true;
  });
  deepStrictEqual(calls, []);
  const { vm: fast } = vmWith({
    exec: (_argv: string[], o: { signal?: AbortSignal }) => execLike(0, o.signal),
  });
  strictEqual((await fast.exec(["true"], { timeoutMs: 5000 })).code, 0);
  // The caller's own abort stays its reason.
  const abort = new AbortController();
  const p = vm.exec(["sleep", "5"], { timeoutMs: 5000, signal: abort.signal });
  abort.abort(new Error("mine"));
  await rejects(p, /^Error: mine$/);
});

Deno.test("AgentVm: a bad timeoutMs is a ConfigError before anything is sent", async () => {
  let sent = 0;
  const { vm } = vmWith({ exec: () => (sent++, Promise.resolve(RESULT)) });
  for (const bad of [-1, 0, NaN, Infinity, MAX_TIMEOUT_MS + 1, "100" as unknown as number]) {
    await rejects(
      vm.exec(["true"], { timeoutMs: bad }),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.message ===
          `timeoutMs: expected a positive number of milliseconds up to 2147483647, got ${bad}`,
    );
  }
  strictEqual(sent, 0);
  strictEqual(checkTimeoutMs(MAX_TIMEOUT_MS), MAX_TIMEOUT_MS);
});

Deno.test("AgentVm: readFile passes maxBytes (default 1 GiB) and refuses a bad one", async () => {
  const seen: unknown[] = [];
  const { vm } = vmWith({
    readFile: (
      _p: string,
      o: { maxBytes?: number },
    ) => (seen.push(o.maxBytes), Promise.resolve(new Uint8Array(1))),
  });
  await vm.readFile("/a");
  await vm.readFile("/a", { maxBytes: 10 });
  deepStrictEqual(seen, [1 << 30, 10]);
  await rejects(vm.readFile("/a", { maxBytes: -1 }), ConfigError);
  strictEqual(seen.length, 2);
});

Deno.test("AgentVm: calls in flight when the VM is stopped reject with VmError", async () => {
  const pending: ((e: unknown) => void)[] = [];
  const inFlight = () => new Promise<never>((_, rej) => pending.push(rej));
  const { vm } = vmWith(
    { readFile: inFlight, writeFile: inFlight },
    () => {
      for (const r of pending) {
        r(new VsockError("device-reset", "vsock connection to port 1024: the device was reset"));
      }
    },
  );
  const calls = [vm.readFile("/a"), vm.writeFile("/b", "x")];
  await Promise.resolve();
  await vm.stop();
  for (const c of calls) {
    await rejects(c, (e: unknown) => {
      ok(e instanceof VmError, String(e));
      strictEqual(e.message, "the VM was stopped");
      ok(e.cause instanceof VsockError);
      return true;
    });
  }
  // And new calls after it.
  await rejects(vm.readFile("/a"), /^VmError: the VM was stopped$/);
});

Deno.test("AgentVm: a lost connection is the machine's error when it dies, else a VmError", async () => {
  const reset = () =>
    Promise.reject(new VsockError("reset", "vsock connection to port 1024: reset by the guest"));
  const { vm, die } = vmWith({ readFile: reset });
  const p = vm.readFile("/a");
  die(new VmError("the VM failed: qemu exited with status 1"));
  await rejects(p, /^VmError: the VM failed: qemu exited with status 1$/);

  const { vm: alive } = vmWith({ readFile: reset });
  await rejects(alive.readFile("/a"), (e: unknown) => {
    ok(e instanceof VmError && e.cause instanceof VsockError);
    strictEqual(
      e.message,
      "the connection to the guest agent failed: vsock connection to port 1024: reset by the guest",
    );
    return true;
  });
});

Deno.test("AgentVm: the agent's own errors pass unchanged, and are SkiffErrors", async () => {
  const step = new AgentStepError("read /nonexistent", "open /nonexistent", "ENOENT");
  const { vm } = vmWith({ readFile: () => Promise.reject(step) });
  await rejects(vm.readFile("/nonexistent"), (e: unknown) => e === step && e instanceof SkiffError);
});
