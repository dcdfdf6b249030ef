import { notStrictEqual, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import type { VmConfig } from "../hv/config.ts";
import { type VmKeyInput, vmSnapshotKey } from "./vm_key.ts";

Deno.test("vmSnapshotKey covers kernel/initramfs contents, cmdline, config and devices, not verbose", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-vmkey-" });
  try {
    const kernel = join(dir, "vmlinuz");
    Deno.writeTextFileSync(kernel, "kernel-1");
    const config: VmConfig = {
      cpus: 1,
      memoryMiB: 256,
      cmdlineExtra: "",
      root: null,
      volumes: [],
      net: null,
      hostname: "skiff",
      verbose: false,
    };
    const base: VmKeyInput = {
      kernelPath: kernel,
      initramfs: new Uint8Array([1, 2, 3]),
      cmdline: "console=hvc0",
      config,
      devices: [{ id: "console", irq: 5 }],
      vmmVersion: "1",
      memoDir: dir,
    };
    const k = await vmSnapshotKey(base);
    strictEqual(k.source.mem, "256MiB");
    strictEqual(
      (await vmSnapshotKey({ ...base, config: { ...config, verbose: true } })).key,
      k.key,
    );
    const variants: Partial<VmKeyInput>[] = [
      { initramfs: new Uint8Array([1, 2, 4]) },
      { cmdline: "console=hvc0 quiet" },
      { config: { ...config, memoryMiB: 512 } },
      { config: { ...config, cpus: 2 } },
      { devices: [{ id: "console", irq: 6 }] },
      { vmmVersion: "2" },
    ];
    for (const v of variants) {
      notStrictEqual((await vmSnapshotKey({ ...base, ...v })).key, k.key, JSON.stringify(v));
    }
    Deno.writeTextFileSync(kernel, "kernel-2-longer");
    notStrictEqual((await vmSnapshotKey(base)).key, k.key, "kernel content");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
