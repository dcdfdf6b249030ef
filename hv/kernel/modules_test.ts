import { deepStrictEqual, match, rejects, strictEqual, throws } from "node:assert/strict";
import { join } from "node:path";
import { buildModulesDep, moduleName, ModulesDep, readModinfo } from "./modules.ts";
import { makeModule } from "./testdata.ts";

Deno.test("moduleName normalises dashes and extensions as kmod does", () => {
  strictEqual(moduleName("kernel/drivers/net/virtio-net.ko"), "virtio_net");
  strictEqual(moduleName("fuse.ko.xz"), "fuse");
  strictEqual(moduleName("virtio_mmio"), "virtio_mmio");
});

Deno.test("readModinfo reads name and depends from .modinfo", () => {
  const info = readModinfo(makeModule("virtiofs", ["fuse", "virtio"]));
  deepStrictEqual(info.get("name"), ["virtiofs"]);
  deepStrictEqual(info.get("depends"), ["fuse,virtio"]);
});

Deno.test("ModulesDep parse, format and load order (dependencies first, once)", () => {
  const text = "kernel/net/core/failover.ko:\n" +
    "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
    "kernel/drivers/virtio/virtio_ring.ko:\n" +
    "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n" +
    "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n";
  const dep = ModulesDep.parse(text);
  strictEqual(dep.entries.size, 5);
  deepStrictEqual(dep.loadOrder(["virtio_net", "virtio-ring"]), [
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/net/virtio_net.ko",
  ]);
  throws(() => dep.loadOrder(["nope"]), /nope is not in modules.dep/);
  deepStrictEqual(ModulesDep.parse(dep.format()).entries, dep.entries);
});

Deno.test("buildModulesDep: transitive deps, each after every module needing it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const mods: Record<string, string[]> = {
      "a/virtio_ring": [],
      "a/virtio": ["virtio_ring"],
      "b/failover": [],
      "b/net_failover": ["failover"],
      "c/virtio_net": ["virtio", "virtio_ring", "net_failover"],
      "c/top": ["virtio_ring", "virtio_net", "virtio"],
    };
    for (const [p, deps] of Object.entries(mods)) {
      await Deno.mkdir(join(dir, p, ".."), { recursive: true });
      await Deno.writeFile(join(dir, p + ".ko"), makeModule(p.split("/")[1], deps));
    }
    const dep = await buildModulesDep(dir);
    strictEqual(dep.entries.size, 6);
    deepStrictEqual(dep.entries.get("virtio")!.deps, ["a/virtio_ring.ko"]);
    const top = dep.entries.get("top")!.deps;
    // Every module precedes all it depends on.
    for (const [name, e] of dep.entries) {
      for (const d of e.deps) {
        const sub = dep.entries.get(moduleName(d))!.deps;
        for (const s of sub) {
          if (top.includes(d) && name === "top") {
            strictEqual(top.indexOf(s) > top.indexOf(d), true, `${s} after ${d}`);
          }
        }
      }
    }
    strictEqual(new Set(top).size, top.length);
    strictEqual(top.length, 5);
    const order = dep.loadOrder(["top"]);
    strictEqual(order[order.length - 1], "c/top.ko");
    strictEqual(order.indexOf("a/virtio_ring.ko") < order.indexOf("a/virtio.ko"), true);
    strictEqual(order.indexOf("b/failover.ko") < order.indexOf("b/net_failover.ko"), true);

    await Deno.writeFile(join(dir, "c/broken.ko"), makeModule("broken", ["missing_mod"]));
    await rejects(buildModulesDep(dir), (e: Error) => {
      match(e.message, /broken depends on missing_mod/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
