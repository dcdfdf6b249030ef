/**
 * L3q: the library from a Deno test — `VirtualMachine` on the qemu engine
 * (the Debian kernel under QEMU TCG, skiff's guest agent as the init, its
 * vsock device and FUSE server behind the guest's hot-plugged devices).
 * Each test boots from a private snapshot cache, so the first boot of a
 * configuration is a miss and later ones are hits.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { hostTest } from "./requirements.ts";
import {
  ConfigError,
  VirtualMachine,
  type VirtualMachineOptions,
  VmError,
  VmTimeoutError,
} from "../mod.ts";
import { QemuEngine } from "../hv/qemu/engine.ts";
import { SnapshotCache } from "../snapshot/cache.ts";
import { RamSpares } from "../snapshot/ram_spares.ts";

const NEEDS = ["kernel", "qemu"] as const;

/** A qemu engine over a snapshot cache in `dir` (tests do not share the user's cache). */
function engine(dir: string): QemuEngine {
  return new QemuEngine({ accel: "tcg", cache: new SnapshotCache(dir), onWarning: () => {} });
}

/** A temporary directory removed on dispose (with the spare RAM copies of a cache in it). */
async function tempDir(prefix: string): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix });
  return {
    path,
    [Symbol.asyncDispose]: async () => {
      await Deno.remove(path, { recursive: true });
      RamSpares.sweep();
    },
  };
}

const enc = new TextEncoder();

async function boot(cache: string, o: VirtualMachineOptions = {}): Promise<VirtualMachine> {
  return await VirtualMachine.boot({ engineInstance: engine(cache), memoryMiB: 256, ...o });
}

hostTest(
  "VirtualMachine: several commands in one VM; stdin, env, cwd, a volume, status",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    await using vol = await tempDir("skiff-lib-vol-");
    await using vm = await boot(cache.path, {
      volumes: [{ hostPath: vol.path, guestPath: "/work" }],
    });
    strictEqual(vm.engine, "qemu");
    strictEqual(vm.origin.from, "boot");
    const r = await vm.exec(["sh", "-c", 'cat; echo "$WHO in $(pwd)" >&2; echo made > f; exit 4'], {
      stdin: "piped in\n",
      env: { WHO: "skiff" },
      cwd: "/work",
    });
    deepStrictEqual([r.code, r.signal, r.success], [4, null, false]);
    deepStrictEqual([r.stdoutText, r.stderrText], ["piped in\n", "skiff in /work\n"]);
    strictEqual(await Deno.readTextFile(`${vol.path}/f`), "made\n");
    // The same VM again: state kept between commands (the overlay is writable).
    strictEqual((await vm.exec(["sh", "-c", "echo kept > /tmp/x"])).code, 0);
    strictEqual((await vm.exec(["cat", "/tmp/x"])).stdoutText, "kept\n");
    strictEqual((await vm.exec(["hostname"])).stdoutText, "skiff\n");
    const stats = await vm.stats();
    ok(stats.memoryTotalBytes > 200 << 20 && stats.memoryUsedBytes > 0, JSON.stringify(stats));
    ok(stats.processes > 0 && stats.cpuTimeMs > 0, JSON.stringify(stats));
  },
);

hostTest(
  "VirtualMachine: three concurrent spawns keep their interleaved output apart",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    await using vm = await boot(cache.path);
    const children = await Promise.all(
      [0, 1, 2].map((i) =>
        vm.spawn(["sh", "-c", `for n in 1 2 3 4 5; do echo ${i}-$n; echo e${i}-$n >&2; done`])
      ),
    );
    const outs = await Promise.all(children.map(async (c) => {
      const [out, err, status] = await Promise.all([
        new Response(c.stdout).text(),
        new Response(c.stderr).text(),
        c.status,
      ]);
      return { out, err, code: status.code };
    }));
    outs.forEach((o, i) => {
      deepStrictEqual(o, {
        out: [1, 2, 3, 4, 5].map((n) => `${i}-${n}\n`).join(""),
        err: [1, 2, 3, 4, 5].map((n) => `e${i}-${n}\n`).join(""),
        code: 0,
      });
    });
  },
);

hostTest("VirtualMachine: 32 MiB through cat, byte-exact, with a slow reader", NEEDS, async () => {
  await using cache = await tempDir("skiff-lib-cache-");
  await using vm = await boot(cache.path);
  const data = new Uint8Array(32 << 20);
  for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  await using child = await vm.spawn(["cat"], { stdin: "piped" });
  const writing = (async () => {
    const w = child.stdin!.getWriter();
    for (let i = 0; i < data.length; i += 1 << 20) await w.write(data.slice(i, i + (1 << 20)));
    await w.close();
  })();
  // The reader takes its time: the guest (and the host writer) must wait, not drop bytes.
  const got = new Uint8Array(data.length);
  let at = 0;
  let reads = 0;
  for await (const chunk of child.stdout!) {
    got.set(chunk, at);
    at += chunk.length;
    if (++reads % 16 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  await writing;
  strictEqual(at, data.length);
  ok(got.every((b, i) => b === data[i]), "byte-exact");
  strictEqual((await child.status).code, 0);
});

hostTest(
  "VirtualMachine: SIGTERM to a spawned process gives 143; timeouts and a dead pipe",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    await using vm = await boot(cache.path);
    const child = await vm.spawn(["sleep", "600"]);
    await child.kill("SIGTERM");
    deepStrictEqual(await child.status, { code: 143, signal: 15, success: false });
    await rejects(vm.exec(["sleep", "600"], { timeoutMs: 2000 }), VmTimeoutError);
    // A reader that stops: the guest's writer gets EPIPE (vsock) and ends.
    const yes = await vm.spawn(["yes"]);
    const reader = yes.stdout!.getReader();
    await reader.read();
    await reader.cancel();
    const status = await yes.status;
    strictEqual(status.success, false, JSON.stringify(status));
  },
);

hostTest(
  "VirtualMachine: writeFile/readFile round trips (empty, 1 byte, 64 MiB, mode bits)",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    await using vm = await boot(cache.path);
    const big = new Uint8Array(64 << 20);
    for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
    for (
      const [name, data] of [["empty", new Uint8Array(0)], ["one", enc.encode("x")], [
        "big",
        big,
      ]] as const
    ) {
      await vm.writeFile(`/tmp/${name}`, data);
      const back = await vm.readFile(`/tmp/${name}`);
      strictEqual(back.length, data.length, name);
      ok(back.every((b, i) => b === data[i]), `${name} byte-exact`);
    }
    for (const mode of [0o600, 0o755, 0o4711, 0o1777]) {
      await vm.writeFile("/tmp/m", "m", { mode });
      strictEqual(
        (await vm.exec(["stat", "-c", "%a", "/tmp/m"])).stdoutText.trim(),
        mode.toString(8),
      );
    }
    await rejects(vm.readFile("/no/such/file"), /ENOENT/);
  },
);

hostTest("VirtualMachine: a cache hit in a new process, told by origin", NEEDS, async () => {
  await using cache = await tempDir("skiff-lib-cache-");
  {
    await using vm = await boot(cache.path);
    strictEqual(vm.origin.from, "boot");
    ok(vm.origin.captured);
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { VirtualMachine } from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)};
       import { QemuEngine } from ${
        JSON.stringify(new URL("../hv/qemu/engine.ts", import.meta.url).href)
      };
       import { SnapshotCache } from ${
        JSON.stringify(new URL("../snapshot/cache.ts", import.meta.url).href)
      };
       await using vm = await VirtualMachine.boot({ memoryMiB: 256, engineInstance:
         new QemuEngine({ accel: "tcg", cache: new SnapshotCache(${
        JSON.stringify(cache.path)
      }) }) });
       const r = await vm.exec(["echo", "hi"]);
       console.log(vm.origin.from, r.stdoutText.trim());`,
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const out = await child.output();
  strictEqual(
    new TextDecoder().decode(out.stdout),
    "snapshot hi\n",
    new TextDecoder().decode(out.stderr),
  );
});

hostTest("VirtualMachine: a corrupt qemu cache entry is deleted and rebuilt", NEEDS, async () => {
  await using cache = await tempDir("skiff-lib-cache-");
  let key: string;
  {
    await using vm = await boot(cache.path);
    key = vm.origin.key!;
  }
  const entry = new SnapshotCache(cache.path).pathOf(key);
  const ram = [...Deno.readDirSync(entry)].find((e) =>
    e.name.includes("ram") || e.name.includes("memory")
  );
  ok(ram, `the entry has a RAM file: ${[...Deno.readDirSync(entry)].map((e) => e.name)}`);
  await Deno.truncate(`${entry}/${ram!.name}`, 4096);
  const warnings: string[] = [];
  const e = new QemuEngine({
    accel: "tcg",
    cache: new SnapshotCache(cache.path, { warn: (l) => warnings.push(l) }),
  });
  await using vm = await VirtualMachine.boot({ engineInstance: e, memoryMiB: 256 });
  strictEqual(vm.origin.from, "boot");
  ok(vm.origin.captured, "rebuilt");
  strictEqual((await vm.exec(["true"])).code, 0);
  strictEqual(warnings.length, 1, warnings.join("\n"));
  match(warnings[0], /ram is 4096 bytes, .* says 268435456; deleted it/);
});

hostTest(
  "VirtualMachine: dispose leaves nothing behind (QEMU, RAM files, sockets)",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    const ramDirs = () =>
      [...Deno.readDirSync("/dev/shm")].filter((e) => e.name.startsWith(`skiff-ram-${Deno.pid}n`))
        .length;
    const before = ramDirs();
    {
      await using vm = await boot(cache.path);
      strictEqual(ramDirs(), before + 1);
      await vm.exec(["true"]);
    }
    strictEqual(ramDirs(), before);
    // A failed boot (a kernel that is not one) releases everything too.
    await rejects(
      VirtualMachine.boot({ engineInstance: engine(cache.path), kernel: "/etc/hostname" }),
    );
    strictEqual(ramDirs(), before);
  },
);

Deno.test("VirtualMachine: a missing volume fails before any boot", async () => {
  await rejects(
    VirtualMachine.boot({ engine: "qemu", volumes: [{ hostPath: "/no/such", guestPath: "/x" }] }),
    (e: unknown) =>
      e instanceof ConfigError && /\/no\/such does not exist/.test((e as Error).message),
  );
});

hostTest(
  "VirtualMachine: a QEMU that cannot start is a VmError naming the engine",
  ["kernel"],
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    const broken = new QemuEngine({
      accel: "tcg",
      binary: "/no/such/qemu-system-x86_64",
      cache: new SnapshotCache(cache.path),
    });
    await rejects(
      VirtualMachine.boot({ engineInstance: broken, memoryMiB: 256, snapshot: false }),
      (e: unknown) => e instanceof VmError && /^qemu engine: /.test((e as Error).message),
    );
  },
);

hostTest(
  "VirtualMachine: vm.snapshot() of a running VM (cache off) unplugs, captures, replugs (a failed one too); a restore has its files",
  NEEDS,
  async () => {
    await using cache = await tempDir("skiff-lib-cache-");
    await using snaps = await tempDir("skiff-lib-snap-");
    const eng = engine(cache.path);
    {
      await using vm = await VirtualMachine.boot({
        engineInstance: eng,
        memoryMiB: 256,
        snapshot: false,
      });
      strictEqual(vm.origin.captured, false);
      await vm.writeFile("/tmp/kept", "before");
      // A capture that fails (its directory is a file) leaves the VM usable.
      await Deno.writeTextFile(`${snaps.path}/file`, "");
      await rejects(vm.snapshot({ dir: `${snaps.path}/file` }), /Not a directory/);
      strictEqual((await vm.exec(["cat", "/tmp/kept"])).stdoutText, "before");
      const ref = await vm.snapshot({ dir: `${snaps.path}/running` });
      // The VM goes on, its devices hot-plugged back.
      strictEqual((await vm.exec(["cat", "/tmp/kept"])).stdoutText, "before");
      await using copy = await VirtualMachine.restore(ref, { engineInstance: eng });
      strictEqual((await copy.exec(["cat", "/tmp/kept"])).stdoutText, "before");
      match((await copy.exec(["cat", "/etc/hosts"])).stdoutText, /\tskiff\n/);
    }
    // Nothing was written to the cache.
    deepStrictEqual([...Deno.readDirSync(cache.path)].map((e) => e.name), []);
  },
);
