/**
 * The order to load kernel modules in, with their dependencies
 * (`modules.dep`): apart from the initramfs builders, so that what only
 * needs the order (the agent initramfs's identity on a snapshot-cache hit,
 * hv/engine/init_identity.ts) does not load the code generator.
 *
 * @module
 */

import { type KernelInfo, kernelModules } from "../hv/kernel/mod.ts";

/**
 * The module files to load for module `names` (with their dependencies), in
 * order, as paths relative to the kernel's modules directory (`modules.dep`).
 * A kernel without a modules directory (`--kernel` with no `--modules`) is
 * taken to have its drivers built in: nothing to load.
 */
export async function moduleLoadOrder(
  kernel: KernelInfo,
  names: readonly string[],
): Promise<string[]> {
  if (!kernel.modulesDir) return [];
  const order = (await kernelModules(kernel)).loadOrder(names);
  for (const rel of order) {
    if (!rel.endsWith(".ko")) {
      // finit_module takes compressed modules only with MODULE_INIT_COMPRESSED_FILE;
      // Debian's cloud kernel ships plain .ko files.
      throw new Error(`module ${rel} is compressed; skiff needs plain .ko files`);
    }
  }
  return order;
}
