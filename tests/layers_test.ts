import { deepStrictEqual, ok } from "node:assert/strict";
import {
  directoryCycles,
  type ImportEdge,
  importEdges,
  isTestModule,
  layerOf,
  upwardImports,
} from "./layers.ts";

Deno.test("layers: no module imports a higher layer (tests/layers.ts, ARCHITECTURE.md)", () => {
  deepStrictEqual(upwardImports(importEdges()), []);
});

Deno.test("layers: no cycle between directories", () => {
  deepStrictEqual(directoryCycles(importEdges()), []);
});

Deno.test("layers: the checks catch what they should", () => {
  // Guards against a check that passes because it sees nothing.
  const all = importEdges();
  ok(all.length > 500, "the scan found the imports");
  ok(
    all.some((e) => e.from === "hv/vcpu_worker.ts" && e.to === "hv/worker.ts"),
    "run-time module loads (runtimeModuleUrl) count as imports",
  );
  const edges: ImportEdge[] = [
    { from: "hv/vm.ts", to: "hv/kvm/engine.ts" },
    { from: "devices/a/x.ts", to: "devices/b/y.ts" },
    { from: "devices/b/y.ts", to: "devices/a/x.ts" },
    { from: "hv/vm_test.ts", to: "hv/library/virtual_machine.ts" },
  ];
  deepStrictEqual(upwardImports(edges), ["hv/vm.ts (layer 1) imports hv/kvm/engine.ts (layer 7)"]);
  deepStrictEqual(directoryCycles(edges), ["devices/a -> devices/b -> devices/a"]);
  deepStrictEqual([layerOf("hv"), layerOf("hv/kvm"), layerOf("devices/virtio/fs")], [1, 7, 2]);
  ok(isTestModule("hv/kvm/testdata/guest.ts") && isTestModule("hv/exit_cost_bench.ts"));
  ok(!isTestModule("hv/vm.ts"));
});
