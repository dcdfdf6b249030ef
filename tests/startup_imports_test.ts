/**
 * What `skiff run` loads before it can restore a VM: node:crypto costs
 * 15–30 ms of a process here just to load, so it must not be in the static
 * import graph of the run path (hv/sha256.ts hashes what a cache hit needs;
 * big hashes load node:crypto on first use); nor must the engine that was
 * not chosen. Type-only imports are erased and do not count.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

interface InfoModule {
  specifier: string;
  dependencies?: { specifier: string; code?: { specifier: string }; isDynamic?: boolean }[];
}

/** The modules `entry` loads statically at run time (code imports, not type-only or dynamic ones). */
async function staticCodeGraph(entry: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    modules: InfoModule[];
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const todo = [...info.roots];
  while (todo.length > 0) {
    const s = todo.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of bySpecifier.get(s)?.dependencies ?? []) {
      if (d.code && !d.isDynamic) todo.push(d.code.specifier);
    }
  }
  return seen;
}

Deno.test("startup: the run path's static imports do not load node:crypto", async () => {
  // The qemu engine too: `skiff run` imports it once the engine is chosen,
  // before a restore (the spare RAM copies' directory name is such a hash).
  for (
    const rel of [
      "../main.ts",
      "../hv/cli/run_command.ts",
      "../hv/cli/run_options.ts",
      "../hv/qemu/engine.ts",
    ]
  ) {
    const graph = await staticCodeGraph(fileURLToPath(new URL(rel, import.meta.url)));
    assert.ok(graph.size > 1, `${rel}: no imports found (deno info changed?)`);
    assert.ok(!graph.has("node:crypto"), `${rel} loads node:crypto at start`);
  }
});

Deno.test("startup: a qemu run loads no kvm engine, no network stack (until --net), no code generator", async () => {
  for (const rel of ["../hv/cli/run_command.ts", "../hv/qemu/engine.ts"]) {
    const graph = await staticCodeGraph(fileURLToPath(new URL(rel, import.meta.url)));
    const kvm = [...graph].filter((s) => s.includes("/hv/kvm/"));
    assert.deepEqual(kvm, [], `${rel} loads the kvm engine`);
    // Nor the user-mode network stack, which only --net needs (hv/qemu/guest.ts loads it then).
    const net = [...graph].filter((s) => s.includes("/devices/net/"));
    assert.deepEqual(net, [], `${rel} loads the network stack`);
    // Nor the init's code generator and assembler: only building an initramfs needs them.
    const codegen = [...graph].filter((s) => /\/init\/(codegen|asm)\//.test(s));
    assert.deepEqual(codegen, [], `${rel} loads the code generator`);
  }
});

Deno.test("startup: the graph walk sees node:crypto where a module imports it", async () => {
  const graph = await staticCodeGraph(
    fileURLToPath(new URL("../hv/sha256_test.ts", import.meta.url)),
  );
  assert.ok(graph.has("node:crypto"));
});

Deno.test("startup: parsing `skiff run`'s options loads no image puller, store or FUSE layer", async () => {
  // image/command.ts is the config-to-command half of image/run.ts; the rest
  // (pull, unpack, the store, the layered FUSE view) only `--image` needs.
  const graph = await staticCodeGraph(
    fileURLToPath(new URL("../hv/cli/run_options.ts", import.meta.url)),
  );
  const heavy = [...graph].filter((s) =>
    /\/image\/(run|pull|registry|store|unpack|tar)\.ts$/.test(s) || s.includes("/devices/fuse/")
  );
  assert.deepEqual(heavy, [], "hv/cli/run_options.ts loads what only --image needs");
});
