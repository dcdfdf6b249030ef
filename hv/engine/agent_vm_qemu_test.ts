// L3q: AgentVm's errors on a real guest (qemu engine, TCG), through the library.
import { ok, rejects, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import {
  AgentError,
  AgentRequestError,
  AgentStepError,
  CommandTimeoutError,
  ConfigError,
  FileTooLargeError,
  SkiffError,
  VirtualMachine,
  VmError,
  VmTimeoutError,
} from "../../mod.ts";

hostTest(
  "AgentVm (qemu): command timeouts, file limits and errors are typed; the VM goes on",
  ["kernel", "qemu"],
  async () => {
    const ro = await Deno.makeTempDir({ prefix: "skiff-agent-vm-ro-" });
    try {
      const vm = await VirtualMachine.boot({
        engine: "qemu",
        memoryMiB: 256,
        volumes: [{ hostPath: ro, guestPath: "/ro", readOnly: true }],
      });
      try {
        await rejects(vm.exec(["sleep", "5"], { timeoutMs: 200 }), (e: unknown) => {
          ok(e instanceof CommandTimeoutError && e instanceof VmTimeoutError, String(e));
          strictEqual(e.message, "the command timed out after 0.2 s and was killed");
          return true;
        });
        strictEqual((await vm.exec(["echo", "alive"])).stdoutText, "alive\n");
        await rejects(
          vm.exec(["true"], { timeoutMs: -1 }),
          /^ConfigError: timeoutMs: expected a positive number of milliseconds up to 2147483647, got -1$/,
        );
        await rejects(vm.exec(["true"], { timeoutMs: NaN }), ConfigError);
        // maxBytes passes through VirtualMachine.readFile's options at run time.
        const opts = { maxBytes: 1 << 20 } as { signal?: AbortSignal };
        await rejects(vm.readFile("/dev/zero", opts), FileTooLargeError);
        const step = (errno: string) => (e: unknown) =>
          e instanceof AgentStepError && e instanceof SkiffError && e.errno === errno;
        await rejects(vm.readFile("/nonexistent"), step("ENOENT"));
        await rejects(vm.readFile("/etc"), step("EISDIR"));
        await rejects(vm.writeFile("/ro/x", "data"), step("EROFS"));
        await rejects(vm.readFile("relative"), AgentRequestError);
        await rejects(vm.exec(["echo", "a\0b"]), AgentRequestError);
        const child = await vm.spawn(["true"]);
        await child.status;
        await rejects(child.kill("SIGBOGUS" as Deno.Signal), AgentRequestError);
        await rejects(
          child.kill(),
          (e: unknown) => e instanceof AgentError && e instanceof SkiffError,
        );
        strictEqual((await vm.readFile("/proc/loadavg")).length > 0, true);
        const inFlight = vm.exec(["sleep", "60"]);
        inFlight.catch(() => {});
        await new Promise((r) => setTimeout(r, 300));
        await vm.stop();
        await rejects(inFlight, (e: unknown) => {
          ok(e instanceof VmError, String(e));
          strictEqual(e.message, "the VM was stopped");
          return true;
        });
      } finally {
        await vm.stop();
      }
    } finally {
      await Deno.remove(ro, { recursive: true });
    }
  },
);
