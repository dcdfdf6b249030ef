import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { bundledName, RUNTIME_MODULES, runtimeModuleUrl } from "./module_url.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

Deno.test("runtimeModuleUrl: the source file from the tree, the sibling bundle from a bundle", () => {
  strictEqual(
    runtimeModuleUrl("hv/worker.ts", "file:///src/skiff/hv/module_url.ts"),
    "file:///src/skiff/hv/worker.ts",
  );
  strictEqual(
    runtimeModuleUrl("devices/legacy/uart.ts", "file:///src/skiff/hv/module_url.ts"),
    "file:///src/skiff/devices/legacy/uart.ts",
  );
  // In a bundle this module is inlined into skiff.js or into a Worker's bundle, all side by side.
  strictEqual(
    runtimeModuleUrl("hv/worker.ts", "file:///opt/skiff/dist/skiff.js"),
    "file:///opt/skiff/dist/hv-worker.js",
  );
  strictEqual(
    runtimeModuleUrl("devices/legacy/uart.ts", "file:///opt/skiff/dist/hv-worker.js"),
    "file:///opt/skiff/dist/devices-legacy-uart.js",
  );
  strictEqual(bundledName("devices/net/loop_worker.ts"), "devices-net-loop_worker.js");
  // The real one, from the tree.
  strictEqual(runtimeModuleUrl("hv/worker.ts"), new URL("./worker.ts", import.meta.url).href);
  const names = RUNTIME_MODULES.map(bundledName);
  strictEqual(new Set(names).size, names.length, "bundle names are unique");
});

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".") || e.name === "dist" || e.name === "node_modules") continue;
    const path = join(dir, e.name);
    if (e.isDirectory) {
      // Test-only devices and helpers run from the tree only.
      if (e.name !== "testdata" && e.name !== "testing") out.push(...sources(path));
    } else if (e.name.endsWith(".ts") && !/_(test|bench)\.ts$/.test(e.name)) {
      out.push(path);
    }
  }
  return out;
}

Deno.test("runtime modules: every Worker and device module URL goes through the list", () => {
  const used = new Set<string>();
  const offenders: string[] = [];
  for (const file of sources(ROOT)) {
    // Code only: comments may mention `new Worker(url)`.
    const text = Deno.readTextFileSync(file).split("\n")
      .filter((l) => !/^\s*(\*|\/\/|\/\*)/.test(l)).join("\n");
    const rel = relative(ROOT, file);
    for (const m of text.matchAll(/new Worker\(([^,)]*)/g)) {
      if (!m[1].startsWith("runtimeModuleUrl(")) offenders.push(`${rel}: new Worker(${m[1]}`);
    }
    // A DeviceSpec's module next to its own file: what the list replaced.
    for (const m of text.matchAll(/module: ([^,\n]*import\.meta\.url[^,\n]*)/g)) {
      offenders.push(`${rel}: module: ${m[1]}`);
    }
    for (const m of text.matchAll(/runtimeModuleUrl\("([^"]+)"\)/g)) used.add(m[1]);
  }
  deepStrictEqual(offenders, [], "a module loaded by URL must be built into the bundle");
  deepStrictEqual([...used].sort(), [...RUNTIME_MODULES].sort(), "RUNTIME_MODULES = what is used");
  for (const m of RUNTIME_MODULES) ok(Deno.statSync(join(ROOT, m)).isFile, m);
});
