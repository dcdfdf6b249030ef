/**
 * L3q: the library API from a Deno test — `VirtualMachine` on the qemu engine
 * (the Debian kernel under QEMU TCG with skiff's init and FUSE server).
 */

import { deepStrictEqual, match, rejects, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "./requirements.ts";
import { assertKernel, testKernel } from "../hv/qemu/testing.ts";
import { ConfigError, VirtualMachine } from "../mod.ts";

const kernel = await testKernel();

hostTest("VirtualMachine: runs commands with stdin, env, workdir and a volume; output apart", [
  "kernel",
  "qemu",
], async () => {
  assertKernel(kernel);
  const vol = await Deno.makeTempDir({ prefix: "skiff-libtest-" });
  try {
    await using vm = VirtualMachine.create({
      engine: "qemu",
      memoryMiB: 256,
      volumes: [{ hostPath: vol, guestPath: "/work" }],
    });
    strictEqual(vm.engine.name, "qemu");
    const r = await vm.run(["sh", "-c", 'cat; echo "$WHO in $(pwd)" >&2; echo made > f; exit 4'], {
      stdin: "piped in\n",
      env: { WHO: "skiff" },
      workdir: "/work",
      timeoutMs: 120_000,
    });
    deepStrictEqual([r.code, r.stdoutText, r.stderrText], [4, "piped in\n", "skiff in /work\n"]);
    deepStrictEqual(r.status, { kind: "exited", code: 4 });
    strictEqual(await Deno.readTextFile(`${vol}/f`), "made\n");
  } finally {
    await Deno.remove(vol, { recursive: true });
  }
});

hostTest("VirtualMachine: a timeout stops the VM and rejects", ["kernel", "qemu"], async () => {
  assertKernel(kernel);
  await using vm = VirtualMachine.create({ engine: "qemu", memoryMiB: 256 });
  await rejects(vm.run(["sleep", "600"], { timeoutMs: 8000 }), /timed out after 8000 ms/);
});

Deno.test("VirtualMachine: a missing volume fails at create, before any boot", () => {
  throws(
    () =>
      VirtualMachine.create({
        engine: "qemu",
        volumes: [{ hostPath: "/no/such", guestPath: "/x" }],
      }),
    (e: unknown) => e instanceof ConfigError && /\/no\/such does not exist/.test(e.message),
  );
});

Deno.test("VirtualMachine: a disposed VM refuses to run", async () => {
  const vm = VirtualMachine.create({
    engineInstance: { name: "fake", run: () => Promise.resolve({ kind: "exited", code: 0 }) },
  });
  strictEqual((await vm.run(["true"])).code, 0);
  await vm[Symbol.asyncDispose]();
  await rejects(vm.run(["true"]), (e: Error) => {
    match(e.message, /disposed/);
    return true;
  });
});
